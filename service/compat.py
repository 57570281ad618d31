"""Wire models of the compatibility APIs: OpenAI ``/v1/embeddings`` and Cohere ``/v1/rerank``, ``/v2/rerank``.

They live with the services, not in the client package: the mmsearch client never speaks these dialects, the
official SDKs (``openai``, ``cohere``, LangChain, LlamaIndex) do.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from mmsearch_schema.wire import EncodingFormat, InputType, Item, ItemLike
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from service.errors import ApiError

TOKEN_IDS_MESSAGE = (
    "input: token ids are not accepted: this server tokenizes with its own model, not OpenAI's tokenizer. "
    "Send the texts themselves; with LangChain's OpenAIEmbeddings set check_embedding_ctx_length=False"
)


# --------------------------------------------------------------------------------------------------- OpenAI
class OpenAIEmbeddingsRequest(BaseModel):
    """OpenAI ``/v1/embeddings`` request, plus the ``input_type`` extension (default ``document``).

    ``input`` may also hold token ids (``[1, 2]`` or ``[[1, 2]]``), as OpenAI accepts: they are recognised so the
    answer can say what to do instead (the server cannot know which tokenizer produced them).
    """

    model_config = ConfigDict(extra="ignore")

    input: (
        str
        | Annotated[list[StrictInt], Field(min_length=1)]
        | Annotated[list[list[StrictInt]], Field(min_length=1)]
        | list[ItemLike]
    ) = Field(
        union_mode="left_to_right", description="A string, a list of strings, or a list of items (not token ids)."
    )
    model: str | None = None
    dimensions: int | None = Field(default=None, ge=1)
    encoding_format: EncodingFormat = "float"
    input_type: InputType = "document"
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _non_empty(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("input must not be empty")
        return v

    def items(self) -> list[str | Item]:
        """The inputs as items; token ids are refused with a 400 that says what to send instead."""
        if isinstance(self.input, str):
            return [self.input]
        if self.input and isinstance(self.input[0], int | list):
            raise ApiError(400, "token_ids_not_supported", TOKEN_IDS_MESSAGE, field="input")
        return [x for x in self.input if isinstance(x, str | Item)]


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


def estimate_tokens(items: list[str | Item]) -> int:
    """``usage`` is an estimate (whitespace words + 1 per image, audio clip or video): OpenAI clients only display
    it."""
    normalized = (Item(text=i) if isinstance(i, str) else i for i in items)
    return sum(len((x.text or "").split()) + (1 if x.media else 0) for x in normalized)


# --------------------------------------------------------------------------------------------------- Cohere
class CohereRerankRequest(BaseModel):
    """Cohere ``/v1/rerank`` (and Jina) request: documents are strings or objects (``{"text": ...}``, or items)."""

    model_config = ConfigDict(extra="ignore")

    query: ItemLike
    documents: list[ItemLike]
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False
    model: str | None = None


class CohereV2RerankRequest(BaseModel):
    """Cohere ``/v2/rerank`` request (``cohere.ClientV2.rerank``): ``documents`` are strings (or items here)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    query: ItemLike
    documents: list[ItemLike]
    top_n: int | None = Field(default=None, ge=1)
    max_tokens_per_doc: int | None = Field(default=None, ge=1)


class CohereDocument(BaseModel):
    text: str | None = None
    image: str | None = None


class CohereRerankResult(BaseModel):
    index: int
    relevance_score: float
    document: CohereDocument | None = None


class CohereRerankResponse(BaseModel):
    id: str
    results: list[CohereRerankResult]
    meta: dict[str, Any] = Field(default_factory=dict)
    model: str | None = None
