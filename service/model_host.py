"""The models one model service hosts (issue #23): every model of its role in the model repository, each with its
own adapter and ``ModelRuntime`` (batcher, lanes, limits, metrics labelled with its name), all sharing the service's
``PriorityGate`` and media loader, so that a query for one model holds back document work for every model, and the
decoded-pixel budget is the worker's, not a model's.

A request chooses a model by name (``model``; omitted: the default). With a repository file (``MMSEARCH_MODELS``)
an unknown name is a 404 ``model_not_found``; in the one-model case (the single-model variables) any name gets the
one model, as before: the OpenAI and Cohere SDKs require a ``model`` and clients written against a one-model
deployment send whatever name they were given (``text-embedding-3-small``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.adapters import ModelAdapter
from service.config import Settings
from service.errors import ApiError, Family
from service.model_repository import ModelNotFound, ModelRepository, ModelRepositoryError, Role, ServedModel
from service.models import ModelLoadError
from service.priority import PriorityGate
from service.runtime import ModelRuntime, media_loader

T = TypeVar("T")
R = TypeVar("R")


@dataclass(eq=False)
class HostedModel(Generic[T, R]):
    """One loaded model: what the repository says of it, its adapter and its runtime."""

    served: ServedModel
    adapter: ModelAdapter
    runtime: ModelRuntime[T, R]

    @property
    def name(self) -> str:
        return self.adapter.name

    @property
    def modalities(self) -> list[str]:
        return self.adapter.modalities

    @property
    def text_only(self) -> bool:
        return self.adapter.modalities == ["text"]

    @property
    def dimension(self) -> int:
        """The embedding dimension (0 for a reranker)."""
        return int(getattr(self.adapter, "dimension", 0) or 0)

    @property
    def max_tokens(self) -> int:
        """The input length (tokens) the model runs on (0: not known)."""
        return int(getattr(getattr(self.adapter, "model", self.adapter), "max_seq_length", 0) or 0)

    def describe(self) -> dict[str, Any]:
        """The model's entry in ``/info``: name, default, dimension, modalities (``model_modalities``: what
        sentence-transformers declares, for embedders), loading options and limits."""
        return {
            "name": self.name,
            "default": self.served.default,
            **({"dimension": self.dimension} if self.served.role == "embedder" else {}),
            "modalities": self.modalities,
            "model_modalities": getattr(self.adapter, "declared_modalities", None),
            "max_tokens": self.max_tokens,
            "loading": self.served.spec.describe(),
            "device": self.served.device,
            "max_queue_size": self.served.limits.max_queue_size,
            "max_queue_wait_ms": self.served.limits.max_queue_wait_ms,
            "max_inputs_per_request": self.served.limits.max_inputs_per_request,
            **self.runtime.info(),
        }


class ModelHost(Generic[T, R]):
    """The models of one role a service hosts, by name, with the default; one gate and one media loader."""

    def __init__(
        self,
        service: str,
        role: Role,
        settings: Settings,
        served: Sequence[ServedModel],
        load: Callable[[ServedModel], ModelAdapter],
        *,
        strict: bool,
    ) -> None:
        """``load`` builds each model's adapter; ``strict``: unknown names are refused (a repository file)."""
        self.service, self.role, self.strict = service, role, strict
        self.gate = PriorityGate.for_service(settings, service)
        self.loader = media_loader(service, settings, self.gate)
        self.created = int(time.time())
        self.models: dict[str, HostedModel[T, R]] = {}
        self.default: HostedModel[T, R] | None = None
        for m in served:
            adapter = load(m)
            runtime: ModelRuntime[T, R] = ModelRuntime(
                service,
                settings,
                adapter,
                max_batch_size=m.limits.max_batch_size,
                max_queue_wait_ms=m.limits.max_queue_wait_ms,
                max_queue_size=m.limits.max_queue_size,
                gate=self.gate,
                loader=self.loader,
            )
            hosted = HostedModel(m, adapter, runtime)
            self.models[hosted.name] = hosted
            if m.default:
                self.default = hosted

    def get(self, name: str | None) -> HostedModel[T, R]:
        """The model a request's ``model`` names (omitted, or any name when not ``strict``: the default);
        ``ModelNotFound`` (404 ``model_not_found``, listing the served names) otherwise."""
        if name is not None and name in self.models:
            return self.models[name]
        if self.default is not None and (name is None or not self.strict):
            return self.default
        raise ModelNotFound(self.role, name, list(self.models))

    def openai_list(self) -> dict[str, Any]:
        """``GET /v1/models`` in OpenAI's list shape."""
        return {"object": "list", "data": [self.openai_model(m) for m in self.models]}

    def openai_model(self, name: str) -> dict[str, Any]:
        """``GET /v1/models/{name}`` in OpenAI's shape (an unknown name: ``ModelNotFound``, whatever ``strict``)."""
        if name not in self.models:
            raise ModelNotFound(self.role, name, list(self.models))
        return {"id": name, "object": "model", "created": self.created, "owned_by": "mmsearch"}

    def describe(self) -> list[dict[str, Any]]:
        """Every model's ``/info`` entry, in the repository's order."""
        return [m.describe() for m in self.models.values()]


def host_models(
    service: str, role: Role, settings: Settings, load: Callable[[Settings, ServedModel], ModelAdapter | None]
) -> ModelHost[Any, Any]:
    """The service's models from the repository (``MMSEARCH_MODELS``, else the single-model variables), checked
    together against ``MMSEARCH_MODEL_MEMORY_BUDGET_MB`` before any loads, then loaded with ``load`` in file
    order. Any fault is one ``ModelLoadError`` line."""
    from service.models import check_memory_budget, model_factory

    try:
        repo = ModelRepository.from_settings(settings)
    except ModelRepositoryError as e:
        raise ModelLoadError(str(e)) from None
    served = repo.models(role)
    if model_factory(settings) is None:
        check_memory_budget(settings, service, [m.spec for m in served])

    def load_one(m: ServedModel) -> ModelAdapter:
        adapter = load(settings, m)
        assert adapter is not None  # a served model always loads one
        return adapter

    return ModelHost(service.lower(), role, settings, served, load_one, strict=settings.models is not None)


async def _openai_models(request: Request) -> Response:
    """``GET /v1/models`` (the list) and ``GET /v1/models/{model}`` (one model, or 404 ``model_not_found``), in
    OpenAI's shapes, of the current service's ``host``."""
    import bentoml

    host: ModelHost[Any, Any] = bentoml.get_current_service().host
    name = request.path_params.get("model")
    try:
        return JSONResponse(host.openai_model(name) if name else host.openai_list())
    except ApiError as e:
        return e.to_response(Family.OPENAI)


def openai_models_app() -> Starlette:
    """The ``/models`` routes a model service mounts at ``/v1`` (``@bentoml.asgi_app(..., path="/v1")``: BentoML's
    mounts match only their own routes, so ``/v1/embeddings`` and ``/v1/rerank`` stay the APIs')."""
    routes = [Route(p, _openai_models, methods=["GET"]) for p in ("/models", "/models/{model:path}")]
    return Starlette(routes=routes)
