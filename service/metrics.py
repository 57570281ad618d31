"""Prometheus metrics of mmsearch, exported through BentoML's ``/metrics``.

Created on first use inside the worker (after BentoML has set ``PROMETHEUS_MULTIPROC_DIR``), never at import.
Each metric is declared once, as a field of ``Metrics``: its type, name (``mmsearch_<field>``), help text, labels and
options. Model-level metrics carry the served model's name (``model``: a service may host several,
``service.model_host``); the service-level ones (refusals at the edge or while fetching media, priority holds, torch
threads) do not.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def _metric(documentation: str, labels: tuple[str, ...] = (), **options: Any) -> Any:
    """A field ``<field>: <kind>`` of ``Metrics`` holding ``prometheus_client.<kind>("mmsearch_<field>",
    documentation, labels, **options)``, created by ``Metrics()`` (prometheus_client is imported only then: it reads
    ``PROMETHEUS_MULTIPROC_DIR``)."""
    return field(init=False, metadata={"metric": (documentation, labels, options)})


@dataclass(frozen=True)
class Metrics:
    """Every metric, each declared once: ``<field>: <Counter|Gauge|Histogram> = _metric(help, labels, options)``,
    exported as ``mmsearch_<field>`` (a counter's samples as ``mmsearch_<field>_total``)."""

    inputs: Counter = _metric(
        "Inputs received, by service, modality, input type and model", ("service", "modality", "input_type", "model")
    )
    model_batch_size: Histogram = _metric(
        "Inputs per model call, as the model received them", ("service", "lane", "model"), buckets=BATCH_BUCKETS
    )
    model_batch_seconds: Histogram = _metric("Duration of one model call", ("service", "lane", "model"))
    refusals: Counter = _metric(
        "Requests refused, by service and reason (fetch failures included)", ("service", "reason")
    )
    queue_depth: Gauge = _metric("Inputs waiting for a model batch", ("service", "model"), multiprocess_mode="livesum")
    search_stage_seconds: Histogram = _metric("Search latency per stage", ("stage",))
    priority_holds: Counter = _metric(
        "Times document work (an image decode, a model batch) waited for an in-flight query request",
        ("service", "stage"),
    )
    model_threads: Gauge = _metric(
        "Torch intra-op threads of a model service (MMSEARCH_TORCH_THREADS, auto: its share of the CPUs)",
        ("service",),
        multiprocess_mode="max",
    )
    embedding_cache_hits: Counter = _metric(
        "Document inputs whose embedding came from the content cache instead of the model"
    )

    def __post_init__(self) -> None:
        import prometheus_client

        for f in fields(self):
            documentation, labels, options = f.metadata["metric"]
            kind = getattr(prometheus_client, str(f.type))  # the annotation: "Counter", "Gauge" or "Histogram"
            object.__setattr__(self, f.name, kind(f"mmsearch_{f.name}", documentation, labels, **options))


@lru_cache(maxsize=1)
def get_metrics() -> Metrics:
    return Metrics()
