"""Schema fuzzing (schemathesis) of every service's OpenAPI against the real bentos: no 5xx, ever.

One exception is a *requested* outcome, not a server error: a 504 ``deadline_exceeded`` for a request whose own
``timeout`` (chosen by the fuzzer, down to 0.1 ms; /search, /encode, /rerank) ran out.
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from bench.support.servers import BentoServer

pytestmark = pytest.mark.e2e
EXAMPLES = 40
CALLS: Counter[str] = Counter()


def _schema(server: BentoServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{server.url}/docs.json")


@pytest.fixture
def embedder_schema(embedder_server: BentoServer) -> schemathesis.BaseSchema:
    return _schema(embedder_server)


@pytest.fixture
def reranker_schema(reranker_server: BentoServer) -> schemathesis.BaseSchema:
    return _schema(reranker_server)


@pytest.fixture
def search_schema(search_server: BentoServer) -> schemathesis.BaseSchema:
    return _schema(search_server)


def _check(case: schemathesis.Case, service: str) -> None:
    response = case.call(timeout=60)
    CALLS[service] += 1
    if response.status_code == 504 and isinstance(case.body, dict) and case.body.get("timeout") is not None:
        assert response.json()["code"] == "deadline_exceeded"  # the fuzzer asked for that deadline
        return
    assert response.status_code < 500, (
        f"{case.method} {case.path} {case.body!r} -> {response.status_code} {response.text}"
    )


fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)

embedder = schemathesis.pytest.from_fixture("embedder_schema")
reranker = schemathesis.pytest.from_fixture("reranker_schema")
search = schemathesis.pytest.from_fixture("search_schema")


@embedder.parametrize()
@fuzz
def test_fuzz_embedder(case: schemathesis.Case) -> None:
    _check(case, "embedder")


@reranker.parametrize()
@fuzz
def test_fuzz_reranker(case: schemathesis.Case) -> None:
    _check(case, "reranker")


@search.parametrize()
@fuzz
def test_fuzz_search(case: schemathesis.Case) -> None:
    _check(case, "search")


def test_zz_fuzz_report(embedder_server: BentoServer, reranker_server: BentoServer, search_server: BentoServer) -> None:
    """Runs last in this module: the services are still healthy and the fuzzers really sent requests."""
    import httpx

    print(f"\nfuzz requests per service: {dict(CALLS)}")
    for server in (embedder_server, reranker_server, search_server):
        assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
    assert sum(CALLS.values()) >= 3 * EXAMPLES
