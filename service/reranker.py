"""Reranker service: scores (query, document) pairs of any modality with a CrossEncoder.

Scores are the model's activation of its relevance logit: for the VLM rerankers (Qwen3-VL-Reranker class,
``LogitScore`` head) ``sigmoid(logit[yes] - logit[no])`` in (0, 1); for classic cross-encoders the sigmoid of the
single logit. They rank documents for one query. Absolute values are NOT comparable across modality pairs (the
modality gap: text-text pairs score differently from text-image pairs), so mmsearch applies no thresholds.

It hosts every reranker of the model repository (``service.model_host``); a request chooses one with ``model``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import bentoml
from mmsearch_schema.wire import Item, RerankRequest, RerankResponse, RerankResult, as_item

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
from service.inputs import ModelInput, check_av_count, check_count, item_paths, resolve_items
from service.middleware import install as install_middleware
from service.model_host import HostedModel, openai_models_app
from service.model_service import ModelService
from service.models import load_reranker
from service.runtime import QUERY_PRIORITY

Scoring = HostedModel[Any, float]


models_app = openai_models_app()


@bentoml.asgi_app(models_app, path="/v1")
@bentoml.service(name="Reranker", **model_service_options())
class Reranker(ModelService[float], role="reranker", load=load_reranker):
    """Scores query-document pairs; pairs from concurrent requests share model batches. The lite profile has no
    reranker unless one is configured: ``/info`` says so and ``/rerank`` answers 501."""

    async def score(
        self, query: ModelInput, documents: Sequence[ModelInput], timeout: float | None, m: Scoring
    ) -> list[float]:
        """Score resolved documents against a resolved query with model ``m``; one lane per (query, document)
        modality pair."""
        for d in documents:
            m.runtime.count_input(f"{query.modality}->{d.modality}", "pair")
        q = query.to_pair_st(m.text_only)
        pairs = [((query.modality, d.modality), (q, d.to_pair_st(m.text_only))) for d in documents]
        return await m.runtime.run_lanes(pairs, priority=QUERY_PRIORITY, timeout=timeout)

    def _model(self, name: str | None) -> Scoring:
        """The model ``name`` chooses (404 ``model_not_found`` when none is served under it); 501 ``no_reranker``
        when none is served (the lite profile unless one is configured; a repository file without rerankers)."""
        if self.host.default is None:
            message = (
                f"no reranker is configured: MMSEARCH_MODELS={self.settings.models} lists no rerankers"
                if self.settings.models is not None
                else f"no reranker is configured (MMSEARCH_PROFILE={self.settings.profile}): set "
                "MMSEARCH_RERANKER_MODEL to a cross-encoder (hub id or local path)"
            )
            raise ApiError(501, "no_reranker", message)
        return self.host.get(name)

    async def _rank(
        self,
        query: str | Item,
        documents: Sequence[str | Item],
        top_n: int | None,
        return_documents: bool,
        timeout: float | None = None,
        model: str | None = None,
    ) -> tuple[list[RerankResult], str]:
        """The documents ranked by the model ``model`` names, and its name."""
        m = self._model(model)
        check_count("documents", len(documents), self.settings.max_documents_per_request, "documents")
        if not documents:
            return [], m.name
        check_av_count("documents", [query, *documents], self.settings)
        loader = self.host.loader
        # one reservation for the query's and the documents' images, audio samples and video pixels
        async with loader.pixels.lease() as lease:
            resolved = await resolve_items(
                [query, *documents],
                paths=["query", *item_paths("documents", len(documents))],
                loader=loader,
                settings=self.settings,
                supported=m.modalities,
                model=m.name,
                lease=lease,
                av=getattr(m.adapter, "av", None),
            )
            scores = await self.score(resolved[0], resolved[1:], timeout, m)
            del resolved
        order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)[: top_n or None]
        results = [
            RerankResult(
                index=i,
                relevance_score=scores[i],
                document=as_item(documents[i]) if return_documents else None,
            )
            for i in order
        ]
        return results, m.name

    @bentoml.api(route="/rerank", input_spec=RerankRequest)
    @handle_api_errors
    async def rerank(self, **kw: Any) -> RerankResponse:
        """Score every document against the query; results sorted by ``relevance_score`` (highest first)."""
        req = validated(RerankRequest, kw)
        results, name = await self._rank(
            req.query, req.documents, req.top_n, req.return_documents, req.timeout, model=req.model
        )
        return RerankResponse(results=results, model=name)

    @bentoml.api(route="/v1/rerank", input_spec=CohereRerankRequest)
    @handle_api_errors
    async def cohere_rerank(self, **kw: Any) -> CohereRerankResponse:
        """Cohere v1 (and Jina) compatible rerank: ``cohere.Client.rerank`` works unchanged."""
        req = validated(CohereRerankRequest, kw)
        results, name = await self._rank(req.query, req.documents, req.top_n, req.return_documents, model=req.model)
        return self._cohere_response(results, "1", name)

    @bentoml.api(route="/v2/rerank", input_spec=CohereV2RerankRequest)
    @handle_api_errors
    async def cohere_rerank_v2(self, **kw: Any) -> CohereRerankResponse:
        """Cohere v2 compatible rerank: ``cohere.ClientV2.rerank`` works unchanged (no documents echoed)."""
        req = validated(CohereV2RerankRequest, kw)
        results, name = await self._rank(req.query, req.documents, req.top_n, False, model=req.model)
        return self._cohere_response(results, "2", name)

    @staticmethod
    def _cohere_response(results: list[RerankResult], version: str, model: str) -> CohereRerankResponse:
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
            model=model,
            meta={"api_version": {"version": version}, "billed_units": {"search_units": 1}},
        )

    @bentoml.api(route="/info")
    async def info(self) -> dict[str, Any]:
        """The default model's name (``null``: no reranker configured), modalities and limits at the top level (as
        with one model), and every model the Reranker hosts under ``models``."""
        default = self.host.default
        model: dict[str, Any] = (
            {
                "model": default.name,
                "loading": default.served.spec.describe(),
                "modalities": default.adapter.modalities,
                **default.runtime.info(),
                "max_tokens": default.max_tokens,
            }
            if default is not None
            else {"model": None, "loading": None, "modalities": [], "max_tokens": 0}
        )
        return {
            "service": "Reranker",
            **model,
            "max_documents_per_request": self.settings.max_documents_per_request,
            "max_text_chars": self.settings.max_text_chars,
            "tiny_random_weights": self.settings.profile == "tiny",
            "models": self.host.describe(),
        }


install_middleware(Reranker, get_settings())
