"""A LlamaIndex retriever over mmsearch ``/search`` (``pip install 'mmsearch-client[llamaindex]'``).

    from llama_index.core.schema import QueryBundle
    from mmsearch_client.integrations.llamaindex import MMSearchRetriever

    retriever = MMSearchRetriever(url="http://127.0.0.1:3000", collection="docs", top_k=5, rerank="auto")
    nodes = retriever.retrieve("Q3 revenue dashboard")
    nodes = retriever.retrieve(QueryBundle(query_str="", image_path="query.png"))   # an image query
    nodes = await retriever.aretrieve("revenue")

Each ``NodeWithScore`` holds a ``TextNode`` (id = the document id, text = its text) with the document's metadata
plus ``collection``, ``retrieval_score``, ``rerank_score`` and ``image_url``; ``score`` is the hit's score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from mmsearch_client._client import AsyncClient, Client
from mmsearch_client.integrations._common import hit_metadata, search_params
from mmsearch_client.schemas import SearchResponse

__all__ = ["MMSearchRetriever"]


class MMSearchRetriever(BaseRetriever):
    """Retrieve (and rerank) nodes from an mmsearch collection."""

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        collection: str = "default",
        top_k: int = 10,
        candidates: int = 50,
        rerank: bool | Literal["auto"] = True,
        filter: dict[str, Any] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.url, self.api_key = url, api_key
        self.collection, self.top_k, self.candidates = collection, top_k, candidates
        self.rerank, self.filter, self.timeout = rerank, filter, timeout
        self._client: Client | None = None

    def _params(self, bundle: QueryBundle) -> dict[str, Any]:
        image = Path(bundle.image_path) if bundle.image_path else None
        return search_params(self, bundle.query_str, image)

    def _nodes(self, res: SearchResponse, base_url: str) -> list[NodeWithScore]:
        return [
            NodeWithScore(
                node=TextNode(id_=h.id, text=h.text or "", metadata=hit_metadata(h, base_url, self.collection)),
                score=h.score,
            )
            for h in res.hits
        ]

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        if self._client is None:
            self._client = Client(self.url, api_key=self.api_key)
        return self._nodes(self._client.search(**self._params(query_bundle)), self._client.base_url)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        async with AsyncClient(self.url, api_key=self.api_key) as client:
            return self._nodes(await client.search(**self._params(query_bundle)), client.base_url)
