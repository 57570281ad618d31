"""Query inputs are served before queued bulk document inputs (real Embedder and Search bentos, tiny profile).

Mechanisms, asserted deterministically: the order in which the model serves a query and a deep queue of
documents, the priority holds counted in ``/metrics``, and the queue deadline. How much query latency grows
under a bulk ingest is a measurement, not a test: ``python -m bench.priority`` (``bench/RESULTS.md`` section 7).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from bench.priority import bulk_body, bulk_ingest, seed_collection
from bench.support.metrics import metric_sum, samples
from bench.support.servers import BentoServer
from tests.conftest import serve_bento, serve_wired_search

pytestmark = pytest.mark.e2e

DOCS = 4096  # one bulk request: queued at once, 512 model batches of 8 with the tiny CLIP
LIMITS = {
    "MMSEARCH_MAX_INPUTS_PER_REQUEST": str(DOCS),
    "MMSEARCH_MAX_DOCUMENTS_PER_REQUEST": str(DOCS),
    "MMSEARCH_MAX_BATCH_SIZE": "8",
    "MMSEARCH_MAX_QUEUE_WAIT_MS": "300000",  # a loaded machine takes long to embed them all: no 503 for queue time
}


def _server(tmp_path_factory: pytest.TempPathFactory, name: str, priority: bool) -> Iterator[BentoServer]:
    yield from serve_bento(
        tmp_path_factory.mktemp(name),
        "service.embedder:Embedder",
        MMSEARCH_QUERY_PRIORITY=str(priority).lower(),
        **LIMITS,
    )


@pytest.fixture(scope="module")
def prio_server(tmp_path_factory: pytest.TempPathFactory, tiny_models) -> Iterator[BentoServer]:  # type: ignore[no-untyped-def]
    yield from _server(tmp_path_factory, "prio", True)


@pytest.fixture(scope="module")
def fifo_server(tmp_path_factory: pytest.TempPathFactory, tiny_models) -> Iterator[BentoServer]:  # type: ignore[no-untyped-def]
    yield from _server(tmp_path_factory, "fifo", False)


@pytest.fixture(scope="module")
def search_prio_server(
    tmp_path_factory: pytest.TempPathFactory, model_urls: dict[str, str], prio_server: BentoServer
) -> Iterator[BentoServer]:
    """Search (query priority on by default) with the same limits, calling this module's priority Embedder."""
    yield from serve_wired_search(
        tmp_path_factory.mktemp("search-prio"), model_urls, MMSEARCH_EMBEDDER_URL=prio_server.url, **LIMITS
    )


def _queue_depth(url: str) -> float:
    return metric_sum(url, "mmsearch_queue_depth", service="embedder")


def _docs(n: int = DOCS) -> list[str]:
    return [f"quarterly report page {i}: " + "revenue and churn by region " * 4 for i in range(n)]


async def _query_behind_bulk(
    url: str,
    bulk_route: str,
    bulk: dict[str, object],
    query_route: str,
    query: dict[str, object],
    embedder_url: str | None = None,
) -> tuple[bool, float, httpx.Response]:
    """Post one bulk request, wait until its documents wait in the Embedder's queue, send one query.

    Returns whether the bulk request was still being served when the query was answered, the Embedder's queue
    depth right then (read from ``embedder_url``, default ``url``), and the bulk response.
    """
    embedder_url = embedder_url or url
    async with httpx.AsyncClient(base_url=url, timeout=300) as c:
        task = asyncio.create_task(c.post(bulk_route, json=bulk))
        give_up = asyncio.get_running_loop().time() + 120
        while _queue_depth(embedder_url) < DOCS // 2:  # the bulk request's documents are queued now
            assert asyncio.get_running_loop().time() < give_up, "the document queue never filled"
            assert not task.done(), task.result().text[:200]
            await asyncio.sleep(0.005)
        answer = await c.post(query_route, json=query)
        assert answer.status_code == 200, answer.text[:200]
        pending, depth = not task.done(), _queue_depth(embedder_url)
        return pending, depth, await task


def test_a_query_overtakes_queued_documents(prio_server: BentoServer) -> None:
    """Thousands of document inputs are queued before the query; it is answered while most of them still wait."""
    bulk = {"inputs": _docs(), "input_type": "document"}
    query = {"inputs": ["where is the revenue chart"], "input_type": "query"}
    pending, depth, resp = asyncio.run(_query_behind_bulk(prio_server.url, "/encode", bulk, "/encode", query))
    assert resp.status_code == 200 and len(resp.json()["embeddings"]) == DOCS
    assert pending and depth > 0, (pending, depth)


def test_without_query_priority_the_query_waits_its_turn(fifo_server: BentoServer) -> None:
    """With ``MMSEARCH_QUERY_PRIORITY=false`` the same query is served after every document queued before it."""
    bulk = {"inputs": _docs(), "input_type": "document"}
    query = {"inputs": ["where is the revenue chart"], "input_type": "query"}
    _, depth, resp = asyncio.run(_query_behind_bulk(fifo_server.url, "/encode", bulk, "/encode", query))
    assert resp.status_code == 200
    assert depth == 0  # nothing was left in the queue when the query ran
    assert _holds(fifo_server.url) == {}  # and no document work ever waited for a query


def test_a_search_overtakes_a_bulk_upsert(search_prio_server: BentoServer, prio_server: BentoServer) -> None:
    """Through Search: ``/search`` embeds its query at the Embedder ahead of an ``/upsert``'s queued documents."""
    url = search_prio_server.url
    bulk = {"documents": [{"id": f"page-{i}", "text": t} for i, t in enumerate(_docs())]}
    query = {"query": "where is the revenue chart", "rerank": False, "top_k": 5}
    seed = httpx.post(f"{url}/upsert", json={"documents": [{"id": "seed", "text": "seed"}]}, timeout=120)
    assert seed.status_code == 200, seed.text[:200]
    pending, depth, resp = asyncio.run(_query_behind_bulk(url, "/upsert", bulk, "/search", query, prio_server.url))
    assert resp.status_code == 200 and resp.json()["upserted"] == DOCS
    assert pending and depth > 0, (pending, depth)


def _holds(url: str, service: str = "embedder") -> dict[str, float]:
    return {labels["stage"]: v for labels, v in samples(url, "mmsearch_priority_holds_total", service=service)}


def _query_until(url: str, route: str, body: dict[str, object], done: object, limit: int = 2000) -> None:
    """Send sequential queries until ``done()`` (checked every 10), at most ``limit``."""
    with httpx.Client(base_url=url, timeout=60) as c:
        for i in range(limit):
            r = c.post(route, json=body)
            assert r.status_code == 200, r.text[:200]
            if i % 10 == 9 and done():  # type: ignore[operator]
                return
    pytest.fail(f"no priority hold after {limit} queries: {done}")


def test_document_decodes_and_batches_wait_for_queries(prio_server: BentoServer) -> None:
    """While three clients ingest inline images back to back, queries make document work wait at both stages
    (an image decode and a batch start), counted in ``mmsearch_priority_holds_total``."""
    url = prio_server.url
    query = {"inputs": ["where is the revenue chart"], "input_type": "query"}
    with bulk_ingest(url, bulk_body(64), n_inputs=64, clients=3) as ingest:

        def held() -> bool:
            h = _holds(url)
            return h.get("decode", 0) > 0 and h.get("batch", 0) > 0

        _query_until(url, "/encode", query, held)
        assert ingest.errors.value == 0 and ingest.done.value > 0  # the ingest went on meanwhile


def test_search_ingest_stages_wait_for_searches(search_prio_server: BentoServer) -> None:
    """Search's own upsert stages (storing images, the index write) wait for in-flight searches too."""
    url = search_prio_server.url
    body = bulk_body(64, service="search")
    seed_collection(url, body)
    with bulk_ingest(url, body, n_inputs=64, clients=3, route="/upsert") as ingest:

        def held() -> bool:
            h = _holds(url, "search")
            return h.get("store", 0) + h.get("index", 0) > 0

        _query_until(url, "/search", {"query": "where is the revenue chart", "rerank": False, "top_k": 10}, held)
        assert ingest.errors.value == 0 and ingest.done.value > 0


def test_request_deadline_is_honoured_in_the_queue(prio_server: BentoServer) -> None:
    """An input still queued when its request's ``timeout`` passes is dropped with 504, not run late.

    Text documents fill the queue at once (images would trickle in from the document decode pool).
    """
    docs = _docs(256)

    async def go() -> tuple[list[httpx.Response], httpx.Response]:
        async with httpx.AsyncClient(base_url=prio_server.url, timeout=120) as c:
            bulk = [asyncio.create_task(c.post("/encode", json={"inputs": docs})) for _ in range(4)]
            give_up = asyncio.get_running_loop().time() + 60
            while _queue_depth(prio_server.url) < 64:  # hundreds of document inputs are waiting now
                assert asyncio.get_running_loop().time() < give_up, "the document queue never filled"
                await asyncio.sleep(0.005)
            late = await c.post("/encode", json={"inputs": docs[:8], "timeout": 0.001})
            return list(await asyncio.gather(*bulk)), late

    bulk, late = asyncio.run(go())
    assert all(r.status_code == 200 for r in bulk)
    assert late.status_code == 504 and late.json()["code"] == "deadline_exceeded", late.text[:200]
