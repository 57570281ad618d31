"""Independent measures for a search's stage timings: the model time a model service's own clock recorded."""

from __future__ import annotations

from bench.support.metrics import metric_sum


def model_ms(url: str, service: str) -> float:
    """Milliseconds ``service``'s model has spent in model calls so far (``mmsearch_model_batch_seconds``, timed
    in its model thread), as the bento at ``url`` reports it. The difference across one search is the model work
    done for it, provided nothing else runs on that bento meanwhile (true of the tests' session servers)."""
    return 1000 * metric_sum(url, "mmsearch_model_batch_seconds_sum", service=service)
