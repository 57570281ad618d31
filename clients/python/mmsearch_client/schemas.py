"""The mmsearch wire schema: request and response models shared by the services and the client.

This module is the single definition of the HTTP contract. The services import it; nothing else keeps a copy.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

InputType = Literal["query", "document"]
EncodingFormat = Literal["float", "base64"]
Modality = Literal["text", "image", "text+image"]

_COLLECTION_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_ID_MAX = 512


class Item(BaseModel):
    """One input: text, an image, or both.

    ``image`` is an ``http(s)://`` URL (fetched by the server under its media policy) or a
    ``data:image/...;base64,`` URI. A plain string given where an ``Item`` is accepted always means text.
    """

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    image: str | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> Item:
        if self.text is None and self.image is None:
            raise ValueError("an item needs 'text', 'image' or both")
        return self

    @property
    def modality(self) -> Modality:
        if self.text is not None and self.image is not None:
            return "text+image"
        return "image" if self.image is not None else "text"


ItemLike = Annotated[str | Item, Field(union_mode="left_to_right")]


def as_item(value: str | Item) -> Item:
    """Normalise a plain string (always text) or an ``Item`` to an ``Item``."""
    return Item(text=value) if isinstance(value, str) else value


# --------------------------------------------------------------------------------------------------- errors
class ErrorBody(BaseModel):
    """Every error the services answer: ``error`` is human-readable, ``code`` machine-readable.

    ``field`` is the request path at fault, e.g. ``inputs[3].image``.
    """

    error: str
    code: str = "error"
    field: str | None = None


# --------------------------------------------------------------------------------------------------- embedder
class EncodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[ItemLike] = Field(min_length=1, description="Texts (plain strings) and/or items.")
    input_type: InputType = "document"
    normalize: bool = True
    dimensions: int | None = Field(default=None, ge=1, description="Truncate (Matryoshka) to this many dims.")
    encoding_format: EncodingFormat = "float"
    timeout: float | None = Field(default=None, ge=0.0001, le=600, description="Deadline in seconds (504 after).")


class EncodeResponse(BaseModel):
    embeddings: list[list[float]] | list[str]
    """Float vectors, or base64 of little-endian float32 when ``encoding_format="base64"``."""
    model: str
    dimensions: int


class OpenAIEmbeddingsRequest(BaseModel):
    """OpenAI ``/v1/embeddings`` request, plus the ``input_type`` extension (default ``document``)."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[ItemLike] = Field(description="A string, a list of strings, or a list of items.")
    model: str | None = None
    dimensions: int | None = Field(default=None, ge=1)
    encoding_format: EncodingFormat = "float"
    input_type: InputType = "document"
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _non_empty(cls, v: str | list[Any]) -> str | list[Any]:
        if isinstance(v, list) and not v:
            raise ValueError("input must not be empty")
        return v


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


# --------------------------------------------------------------------------------------------------- reranker
class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: ItemLike
    documents: list[ItemLike] = Field(description="Candidates to score against the query (may be empty).")
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False
    timeout: float | None = Field(default=None, ge=0.0001, le=600, description="Deadline in seconds (504 after).")


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: Item | None = None


class RerankResponse(BaseModel):
    results: list[RerankResult]
    model: str


class CohereRerankRequest(BaseModel):
    """Cohere/Jina ``/v1/rerank`` request: documents are strings or objects (``{"text": ...}``, or items)."""

    model_config = ConfigDict(extra="ignore")

    query: ItemLike
    documents: list[ItemLike]
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False
    model: str | None = None


class CohereRerankResponse(BaseModel):
    id: str
    results: list[RerankResult]
    model: str
    meta: dict[str, Any] = Field(default_factory=dict)


# --------------------------------------------------------------------------------------------------- search
MetadataValue = str | int | float | bool | list[str | int | float | bool] | None


def _check_collection(name: str) -> str:
    if not _COLLECTION_RE.match(name):
        raise ValueError("collection names are 1-64 characters: a letter, then letters, digits or '_'")
    return name


class Document(BaseModel):
    """A document to index: text, an image, or both, with optional metadata and a precomputed embedding."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=_ID_MAX)
    text: str | None = None
    image: str | None = None
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)
    embedding: list[float] | None = None

    @field_validator("metadata")
    @classmethod
    def _keys(cls, v: dict[str, MetadataValue]) -> dict[str, MetadataValue]:
        for k in v:
            if not _FIELD_RE.match(k):
                raise ValueError(f"metadata key {k!r}: use 1-64 letters, digits or '_' (not starting with a digit)")
        return v

    @model_validator(mode="after")
    def _has_content(self) -> Document:
        if self.text is None and self.image is None and self.embedding is None:
            raise ValueError("a document needs 'text', 'image' or 'embedding'")
        return self


class UpsertRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: str = "default"
    documents: list[Document] = Field(min_length=1)

    _v_collection = field_validator("collection")(_check_collection)


class UpsertResponse(BaseModel):
    collection: str
    upserted: int
    ids: list[str]


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: str = "default"
    ids: list[Annotated[str, Field(min_length=1, max_length=_ID_MAX)]] = Field(min_length=1)

    _v_collection = field_validator("collection")(_check_collection)


class DeleteResponse(BaseModel):
    collection: str
    deleted: int


class GetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: str = "default"
    ids: list[Annotated[str, Field(min_length=1, max_length=_ID_MAX)]] = Field(min_length=1)
    include_embedding: bool = False

    _v_collection = field_validator("collection")(_check_collection)


class StoredDocument(BaseModel):
    id: str
    text: str | None = None
    image: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    embedding: list[float] | None = None


class GetResponse(BaseModel):
    collection: str
    documents: list[StoredDocument]


class CollectionInfo(BaseModel):
    name: str
    count: int
    dimension: int
    model: str


class CollectionsResponse(BaseModel):
    collections: list[CollectionInfo]


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: str = "default"
    query: ItemLike
    top_k: int = Field(default=10, ge=1, le=1000)
    candidates: int = Field(default=50, ge=1, description="Shortlist size retrieved before reranking.")
    rerank: bool | Literal["auto"] = True
    """``true``: rerank or fail (503); ``false``: retrieval only; ``"auto"``: rerank if the reranker answers."""
    filter: dict[str, Any] | None = None
    timeout: float | None = Field(default=None, ge=0.0001, le=600, description="Deadline in seconds.")

    _v_collection = field_validator("collection")(_check_collection)
    # top_k <= candidates is checked by the server (422), so a client can't skip it.


class SearchHit(BaseModel):
    id: str
    score: float
    """Rerank score when reranked, else the retrieval (cosine) score."""
    retrieval_score: float
    rerank_score: float | None = None
    text: str | None = None
    image: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class SearchTimings(BaseModel):
    embed: float
    retrieve: float
    rerank: float
    total: float


class SearchResponse(BaseModel):
    hits: list[SearchHit]
    reranked: bool
    timings_ms: SearchTimings


class HealthResponse(BaseModel):
    status: str
    service: str
    model: str | None = None
