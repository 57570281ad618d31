"""Reranker service: scores (query, document) pairs of any modality with a CrossEncoder.

Scores are the model's activation of its relevance logit: for the VLM rerankers (Qwen3-VL-Reranker class,
``LogitScore`` head) ``sigmoid(logit[yes] - logit[no])`` in (0, 1); for classic cross-encoders the sigmoid of the
single logit. They rank documents for one query. Absolute values are NOT comparable across modality pairs (the
modality gap: text-text pairs score differently from text-image pairs), so mmsearch applies no thresholds.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import bentoml
from mmsearch_client.schemas import Item, RerankRequest, RerankResponse, RerankResult, as_item

from service import lifecycle
from service.adapters import ModelAdapter, NoModel
from service.bento_options import model_service_options, validated
from service.compat import (
    CohereDocument,
    CohereRerankRequest,
    CohereRerankResponse,
    CohereRerankResult,
    CohereV2RerankRequest,
)
from service.config import get_settings
from service.errors import ApiError, handle_api_errors
from service.inputs import ModelInput, check_count, item_paths, resolve_items
from service.middleware import install as install_middleware
from service.models import load_or_exit, load_reranker
from service.runtime import QUERY_PRIORITY, ModelRuntime


@bentoml.service(name="Reranker", **model_service_options())
class Reranker:
    """Scores query-document pairs; pairs from concurrent requests share model batches."""

    _arm_fatal_exit = bentoml.on_deployment(lifecycle.arm)

    def __init__(self) -> None:
        self.settings = get_settings()
        adapter = load_or_exit(load_reranker, self.settings)
        # the lite profile has no reranker unless one is configured: /info says so and /rerank answers 501
        self.adapter: ModelAdapter = adapter if adapter is not None else NoModel()
        self.model_name: str | None = adapter.name if adapter is not None else None
        self.spec = self.settings.model_spec("reranker")
        self.modalities = self.adapter.modalities
        self.text_only = self.modalities == ["text"]
        self.runtime: ModelRuntime[Any, float] = ModelRuntime("reranker", self.settings, self.adapter)

    async def score(
        self, query: ModelInput, documents: Sequence[ModelInput], timeout: float | None = None
    ) -> list[float]:
        """Score resolved documents against a resolved query; one lane per (query, document) modality pair."""
        count = self.runtime.metrics.inputs
        for d in documents:
            count.labels("reranker", f"{query.modality}->{d.modality}", "pair").inc()
        q = query.to_st(self.text_only)
        pairs = [((query.modality, d.modality), (q, d.to_st(self.text_only))) for d in documents]
        return await self.runtime.run_lanes(pairs, priority=QUERY_PRIORITY, timeout=timeout)

    def _require_model(self) -> str:
        """The model's name; 501 ``no_reranker`` when the profile has none (lite, unless configured)."""
        if self.model_name is None:
            raise ApiError(
                501,
                "no_reranker",
                f"no reranker is configured (MMSEARCH_PROFILE={self.settings.profile}): set MMSEARCH_RERANKER_MODEL "
                "to a cross-encoder (hub id or local path)",
            )
        return self.model_name

    async def _rank(
        self,
        query: str | Item,
        documents: Sequence[str | Item],
        top_n: int | None,
        return_documents: bool,
        timeout: float | None = None,
    ) -> list[RerankResult]:
        model_name = self._require_model()
        check_count("documents", len(documents), self.settings.max_documents_per_request, "documents")
        if not documents:
            return []
        loader = self.runtime.loader
        async with loader.pixels.lease() as lease:  # one reservation for the query's and the documents' images
            resolved = await resolve_items(
                [query, *documents],
                paths=["query", *item_paths("documents", len(documents))],
                loader=loader,
                settings=self.settings,
                supported=self.modalities,
                model=model_name,
                lease=lease,
            )
            scores = await self.score(resolved[0], resolved[1:], timeout)
            del resolved
        order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)[: top_n or None]
        return [
            RerankResult(
                index=i,
                relevance_score=scores[i],
                document=as_item(documents[i]) if return_documents else None,
            )
            for i in order
        ]

    @bentoml.api(route="/rerank", input_spec=RerankRequest)
    @handle_api_errors
    async def rerank(self, **kw: Any) -> RerankResponse:
        """Score every document against the query; results sorted by ``relevance_score`` (highest first)."""
        req = validated(RerankRequest, kw)
        results = await self._rank(req.query, req.documents, req.top_n, req.return_documents, req.timeout)
        return RerankResponse(results=results, model=self._require_model())

    @bentoml.api(route="/v1/rerank", input_spec=CohereRerankRequest)
    @handle_api_errors
    async def cohere_rerank(self, **kw: Any) -> CohereRerankResponse:
        """Cohere v1 (and Jina) compatible rerank: ``cohere.Client.rerank`` works unchanged."""
        req = validated(CohereRerankRequest, kw)
        results = await self._rank(req.query, req.documents, req.top_n, req.return_documents)
        return self._cohere_response(results, "1")

    @bentoml.api(route="/v2/rerank", input_spec=CohereV2RerankRequest)
    @handle_api_errors
    async def cohere_rerank_v2(self, **kw: Any) -> CohereRerankResponse:
        """Cohere v2 compatible rerank: ``cohere.ClientV2.rerank`` works unchanged (no documents echoed)."""
        req = validated(CohereV2RerankRequest, kw)
        results = await self._rank(req.query, req.documents, req.top_n, False)
        return self._cohere_response(results, "2")

    def _cohere_response(self, results: list[RerankResult], version: str) -> CohereRerankResponse:
        return CohereRerankResponse(
            id=str(uuid.uuid4()),
            results=[
                CohereRerankResult(
                    index=r.index,
                    relevance_score=r.relevance_score,
                    document=CohereDocument(text=r.document.text, image=r.document.image) if r.document else None,
                )
                for r in results
            ],
            model=self._require_model(),
            meta={"api_version": {"version": version}, "billed_units": {"search_units": 1}},
        )

    @bentoml.api(route="/info")
    async def info(self) -> dict[str, Any]:
        """Model name (``null``: no reranker configured), modalities and limits."""
        return {
            "service": "Reranker",
            "model": self.model_name,
            "loading": self.spec.describe() if self.model_name is not None else None,
            "modalities": self.modalities,
            **self.runtime.info(),
            "max_documents_per_request": self.settings.max_documents_per_request,
            "max_tokens": int(getattr(getattr(self.adapter, "model", None), "max_seq_length", 0) or 0),
            "max_text_chars": self.settings.max_text_chars,
            "tiny_random_weights": self.settings.profile == "tiny",
        }


install_middleware(Reranker, get_settings())
