"""Reranker service: scores (query, document) pairs of any modality with a CrossEncoder.

Scores are the model's activation of its relevance logit: for the VLM rerankers (Qwen3-VL-Reranker class,
``LogitScore`` head) ``sigmoid(logit[yes] - logit[no])`` in (0, 1); for classic cross-encoders the sigmoid of the
single logit. They rank documents for one query. Absolute values are NOT comparable across modality pairs (the
modality gap: text-text pairs score differently from text-image pairs), so mmsearch applies no thresholds.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Hashable, Sequence
from typing import Any

import bentoml
from mmsearch_client.schemas import (
    CohereRerankRequest,
    CohereRerankResponse,
    Item,
    RerankRequest,
    RerankResponse,
    RerankResult,
    as_item,
)

from service.config import get_settings
from service.errors import handle_api_errors
from service.inputs import ModelInput, check_count, model_modalities, resolve_items
from service.middleware import install as install_middleware
from service.models import check_simulated_oom, load_reranker
from service.runtime import QUERY_PRIORITY, ModelRuntime
from service.service_config import model_service_config


@bentoml.service(name="Reranker", **model_service_config())
class Reranker:
    """Scores query-document pairs; pairs from concurrent requests share model batches."""

    def __init__(self) -> None:
        self.settings = get_settings()
        self.model, self.model_name = load_reranker(self.settings)
        self.modalities = model_modalities(self.model)
        self.text_only = self.modalities == ["text"]
        self.runtime: ModelRuntime[Any, float] = ModelRuntime("reranker", self.settings, self._run_batch)

    def _run_batch(self, lane: Hashable, pairs: list[Any]) -> Sequence[float]:
        import torch

        check_simulated_oom(self.settings, pairs)
        with torch.inference_mode():
            scores = self.model.predict(pairs, batch_size=len(pairs), convert_to_numpy=True, show_progress_bar=False)
        return [float(s) for s in scores]

    async def score(
        self, query: ModelInput, documents: Sequence[ModelInput], timeout: float | None = None
    ) -> list[float]:
        """Score resolved documents against a resolved query; one lane per (query, document) modality pair."""
        metrics = self.runtime.metrics
        by_lane: dict[tuple[str, str], list[int]] = {}
        for i, d in enumerate(documents):
            by_lane.setdefault((query.modality, d.modality), []).append(i)
            metrics.inputs.labels("reranker", f"{query.modality}->{d.modality}", "pair").inc()
        q = query.to_st(self.text_only)
        lanes = list(by_lane.items())
        results = await asyncio.gather(
            *(
                self.runtime.run(
                    lane,
                    [(q, documents[i].to_st(self.text_only)) for i in idx],
                    priority=QUERY_PRIORITY,
                    timeout=timeout,
                )
                for lane, idx in lanes
            )
        )
        scores = [0.0] * len(documents)
        for (_, idx), got in zip(lanes, results, strict=True):
            for i, s in zip(idx, got, strict=True):
                scores[i] = s
        return scores

    async def _rank(
        self,
        query: str | Item,
        documents: Sequence[str | Item],
        top_n: int | None,
        return_documents: bool,
        timeout: float | None = None,
    ) -> list[RerankResult]:
        check_count("documents", len(documents), self.settings.max_documents_per_request, "documents")
        if not documents:
            return []
        common = functools.partial(
            resolve_items,
            loader=self.runtime.loader,
            settings=self.settings,
            supported=self.modalities,
            model=self.model_name,
        )
        resolved_q, resolved_docs = await asyncio.gather(
            common([query], field="query", single=True), common(documents, field="documents")
        )
        scores = await self.score(resolved_q[0], resolved_docs, timeout)
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
        req = RerankRequest.model_validate(kw)
        results = await self._rank(req.query, req.documents, req.top_n, req.return_documents, req.timeout)
        return RerankResponse(results=results, model=self.model_name)

    @bentoml.api(route="/v1/rerank", input_spec=CohereRerankRequest)
    @handle_api_errors
    async def cohere_rerank(self, **kw: Any) -> CohereRerankResponse:
        """Cohere/Jina-compatible rerank: existing rerank clients work unchanged."""
        req = CohereRerankRequest.model_validate(kw)
        results = await self._rank(req.query, req.documents, req.top_n, req.return_documents)
        return CohereRerankResponse(
            id=str(uuid.uuid4()),
            results=results,
            model=self.model_name,
            meta={"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
        )

    @bentoml.api(route="/info")
    async def info(self) -> dict[str, Any]:
        """Model name, modalities and limits."""
        return {
            "service": "Reranker",
            "model": self.model_name,
            "modalities": self.modalities,
            "max_batch_size": self.runtime.batcher.max_batch_size,
            "effective_max_batch_size": self.runtime.batcher.effective_max_batch_size,
            "max_documents_per_request": self.settings.max_documents_per_request,
            "tiny_random_weights": self.settings.profile == "tiny",
        }


install_middleware(Reranker, get_settings())
