"""Prometheus metrics of mmsearch, exported through BentoML's ``/metrics``.

Created on first use inside the worker (after BentoML has set ``PROMETHEUS_MULTIPROC_DIR``), never at import.
Each metric is declared once, as a field of ``Metrics``: its type, name, help text, labels and options. Model-level
metrics carry the served model's name (``model``: a service may host several, ``service.model_host``); the
service-level ones (refusals at the edge or while fetching media, priority holds, torch threads) do not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def _metric(kind: str, name: str, documentation: str, labels: tuple[str, ...] = (), **options: Any) -> Any:
    """A field of ``Metrics`` holding ``prometheus_client.<kind>(name, documentation, labels, **options)``, created
    by ``Metrics()`` (prometheus_client is imported only then: it reads ``PROMETHEUS_MULTIPROC_DIR``)."""

    def create() -> Any:
        import prometheus_client

        return getattr(prometheus_client, kind)(name, documentation, labels, **options)

    return field(default_factory=create)


@dataclass(frozen=True)
class Metrics:
    inputs: Counter = _metric(
        "Counter",
        "mmsearch_inputs_total",
        "Inputs received, by service, modality, input type and model",
        ("service", "modality", "input_type", "model"),
    )
    model_batch_size: Histogram = _metric(
        "Histogram",
        "mmsearch_model_batch_size",
        "Inputs per model call, as the model received them",
        ("service", "lane", "model"),
        buckets=BATCH_BUCKETS,
    )
    model_batch_seconds: Histogram = _metric(
        "Histogram", "mmsearch_model_batch_seconds", "Duration of one model call", ("service", "lane", "model")
    )
    refusals: Counter = _metric(
        "Counter",
        "mmsearch_refusals_total",
        "Requests refused, by service and reason (fetch failures included)",
        ("service", "reason"),
    )
    queue_depth: Gauge = _metric(
        "Gauge",
        "mmsearch_queue_depth",
        "Inputs waiting for a model batch",
        ("service", "model"),
        multiprocess_mode="livesum",
    )
    search_stage_seconds: Histogram = _metric(
        "Histogram", "mmsearch_search_stage_seconds", "Search latency per stage", ("stage",)
    )
    priority_holds: Counter = _metric(
        "Counter",
        "mmsearch_priority_holds_total",
        "Times document work (an image decode, a model batch) waited for an in-flight query request",
        ("service", "stage"),
    )
    model_threads: Gauge = _metric(
        "Gauge",
        "mmsearch_model_threads",
        "Torch intra-op threads of a model service (MMSEARCH_TORCH_THREADS, auto: its share of the CPUs)",
        ("service",),
        multiprocess_mode="max",
    )
    embedding_cache_hits: Counter = _metric(
        "Counter",
        "mmsearch_embedding_cache_hits_total",
        "Document inputs whose embedding came from the content cache instead of the model",
    )


@lru_cache(maxsize=1)
def get_metrics() -> Metrics:
    return Metrics()
