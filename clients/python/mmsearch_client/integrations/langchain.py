"""A LangChain retriever over mmsearch ``/search`` (``pip install 'mmsearch-client[langchain]'``).

    from mmsearch_client.integrations.langchain import MMSearchRetriever

    retriever = MMSearchRetriever(url="http://127.0.0.1:3000", collection="docs", top_k=5, filter={"team": "finance"})
    docs = retriever.invoke("Q3 revenue dashboard")
    docs = retriever.invoke("", image=Path("query.png"))            # an image query (or text + image)
    docs = await retriever.ainvoke("revenue", rerank=False, filter={"year": 2026})  # per-call overrides

Each ``Document`` holds the hit's text as ``page_content`` and, in ``metadata``, the document's metadata plus
``id``, ``collection``, ``score``, ``retrieval_score``, ``rerank_score`` and ``image_url``.
"""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, PrivateAttr

from mmsearch_client._client import AsyncClient, Client
from mmsearch_client.integrations._common import ImageQuery, hit_metadata, search_params
from mmsearch_client.schemas import SearchResponse

__all__ = ["MMSearchRetriever"]


class MMSearchRetriever(BaseRetriever):
    """Retrieve (and rerank) documents from an mmsearch collection."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    url: str | None = None
    """Server URL (default ``$MMSEARCH_URL``, else ``http://127.0.0.1:3000``)."""
    api_key: str | None = Field(default=None, repr=False)
    collection: str = "default"
    top_k: int = 10
    candidates: int = 50
    rerank: bool | Literal["auto"] = True
    filter: dict[str, Any] | None = None
    timeout: float | None = None
    """Server-side deadline per search, in seconds."""

    _client: Client | None = PrivateAttr(default=None)

    def _sync(self) -> Client:
        if self._client is None:
            self._client = Client(self.url, api_key=self.api_key)
        return self._client

    def _params(self, query: str, overrides: dict[str, Any]) -> dict[str, Any]:
        image: ImageQuery = overrides.pop("image", None)
        return search_params(self, query, image, **overrides)

    def _documents(self, res: SearchResponse, base_url: str, collection: str) -> list[Document]:
        return [
            Document(id=h.id, page_content=h.text or "", metadata=hit_metadata(h, base_url, collection))
            for h in res.hits
        ]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        params = self._params(query, kwargs)
        client = self._sync()
        return self._documents(client.search(**params), client.base_url, params["collection"])

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        params = self._params(query, kwargs)
        async with AsyncClient(self.url, api_key=self.api_key) as client:
            res = await client.search(**params)
            return self._documents(res, client.base_url, params["collection"])
