"""Read a running bento's Prometheus ``/metrics`` in tests (parsed by prometheus_client, not by regexes)."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def scrape(url: str, timeout: float = 10) -> list[Sample]:
    """Every sample ``url``'s ``/metrics`` reports."""
    text = httpx.get(f"{url}/metrics", timeout=timeout).text
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def samples(url: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """``(labels, value)`` of every sample called ``name`` (e.g. ``mmsearch_inputs_total``, or a histogram's
    ``..._count``) whose labels include ``labels``."""
    return [(s.labels, s.value) for s in scrape(url) if s.name == name and labels.items() <= s.labels.items()]


def metric_sum(url: str, name: str, **labels: str) -> float:
    """The sum of those samples (0 when there are none)."""
    return sum(value for _, value in samples(url, name, **labels))
