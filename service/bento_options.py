"""BentoML ``@bentoml.service`` options (workers, traffic, resources, runner connection) of the mmsearch services;
the MMSEARCH_* settings are ``service.config``."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)

# Pitfall (BentoML 1.4.40, upstream #5544): the dependency client recreates its HTTP session every 100 requests
# and closes calls still in flight. A very high max_requests keeps one session per dependency. BentoML reads this
# from the config of the service being CALLED (Embedder, Reranker), not of the caller.
RUNNER_CONNECTION = {"max_requests": 10**9, "max_age": 86_400.0}


def model_service_options() -> dict[str, Any]:
    """Embedder/Reranker: one worker holding the model; concurrency is bounded by the micro-batcher's queue."""
    return {
        "workers": 1,
        "traffic": {"timeout": 300, "max_concurrency": 4096},
        "resources": {"cpu": "1"},
        "runner_connection": RUNNER_CONNECTION,
    }


def search_service_options() -> dict[str, Any]:
    """Search: no model; talks to its dependencies over long-lived connections."""
    return {
        "workers": 1,
        "traffic": {"timeout": 300, "max_concurrency": 4096},
        # BentoML 1.4.40's dependency probe raises on a refused connection and its TimeoutMiddleware then holds
        # /readyz for traffic.timeout (300 s), which also stalls SIGTERM: Search.__is_ready__ probes instead.
        "runner_probe": {"enabled": False},
    }


def validated(model: type[M], kw: dict[str, Any]) -> M:
    """The request of an API declared with ``input_spec=model``, parsed once.

    BentoML validates the body against ``input_spec`` (a subclass of ``model``: the same validators) and calls the
    API with each field's validated value (``_bentoml_impl.server.app``: ``getattr(input_data, k)`` for every field),
    so the model is assembled from them without validating again."""
    return model.model_construct(**kw)
