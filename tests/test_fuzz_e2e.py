"""Schema fuzzing (schemathesis) of every service's OpenAPI against the real bentos: no 5xx, ever.

One exception is a *requested* outcome, not a server error: a 504 ``deadline_exceeded`` for a request whose own
``timeout`` (chosen by the fuzzer, down to 0.1 ms; /search, /encode, /rerank) ran out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import httpx
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


@pytest.fixture(autouse=True)
def fuzzed_and_still_healthy(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each fuzz test, on its own (whatever ran before it): the fuzzer really sent requests to its service
    (at least ``EXAMPLES``: every service has operations with request bodies) and the service is still ready."""
    service = request.node.name.split("[")[0].removeprefix("test_fuzz_")
    server: BentoServer = request.getfixturevalue(f"{service}_server")
    before = CALLS[service]
    yield
    sent = CALLS[service] - before
    print(f"\nfuzz requests to {service}: {sent}")
    assert sent >= EXAMPLES, f"the fuzzer sent only {sent} requests to {service}"
    assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200


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
