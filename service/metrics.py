"""Prometheus metrics of mmsearch, exported through BentoML's ``/metrics``.

Created on first use inside the worker (after BentoML has set ``PROMETHEUS_MULTIPROC_DIR``), never at import.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class Metrics:
    inputs: Any
    model_batch_size: Any
    model_batch_seconds: Any
    refusals: Any
    queue_depth: Any
    search_stage_seconds: Any
    priority_holds: Any
    model_threads: Any
    embedding_cache_hits: Any


@lru_cache(maxsize=1)
def get_metrics() -> Metrics:
    import prometheus_client as prom

    return Metrics(
        inputs=prom.Counter(
            "mmsearch_inputs_total",
            "Inputs received, by service, modality and input type",
            ["service", "modality", "input_type"],
        ),
        model_batch_size=prom.Histogram(
            "mmsearch_model_batch_size",
            "Inputs per model call, as the model received them",
            ["service", "lane"],
            buckets=BATCH_BUCKETS,
        ),
        model_batch_seconds=prom.Histogram(
            "mmsearch_model_batch_seconds",
            "Duration of one model call",
            ["service", "lane"],
        ),
        refusals=prom.Counter(
            "mmsearch_refusals_total",
            "Requests refused, by service and reason (fetch failures included)",
            ["service", "reason"],
        ),
        queue_depth=prom.Gauge(
            "mmsearch_queue_depth",
            "Inputs waiting for a model batch",
            ["service"],
            multiprocess_mode="livesum",
        ),
        search_stage_seconds=prom.Histogram(
            "mmsearch_search_stage_seconds",
            "Search latency per stage",
            ["stage"],
        ),
        priority_holds=prom.Counter(
            "mmsearch_priority_holds_total",
            "Times document work (an image decode, a model batch) waited for an in-flight query request",
            ["service", "stage"],
        ),
        model_threads=prom.Gauge(
            "mmsearch_model_threads",
            "Torch intra-op threads of a model service (MMSEARCH_TORCH_THREADS, auto: its share of the CPUs)",
            ["service"],
            multiprocess_mode="max",
        ),
        embedding_cache_hits=prom.Counter(
            "mmsearch_embedding_cache_hits_total",
            "Document inputs whose embedding came from the content cache instead of the model",
        ),
    )
