"""Query inputs are served before queued bulk document inputs (real Embedder bento, tiny profile)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.conftest import serve_bento
from tests.support.images import data_uri, make_image
from tests.support.servers import BentoServer

pytestmark = pytest.mark.e2e


def _server(tmp_path_factory: pytest.TempPathFactory, name: str, priority: bool) -> Iterator[BentoServer]:
    yield from serve_bento(
        tmp_path_factory.mktemp(name),
        "service.embedder:Embedder",
        MMSEARCH_MAX_BATCH_SIZE="8",
        MMSEARCH_QUERY_PRIORITY=str(priority).lower(),
    )


@pytest.fixture(scope="module")
def prio_server(tmp_path_factory: pytest.TempPathFactory, tiny_models) -> Iterator[BentoServer]:  # type: ignore[no-untyped-def]
    yield from _server(tmp_path_factory, "prio", True)


@pytest.fixture(scope="module")
def fifo_server(tmp_path_factory: pytest.TempPathFactory, tiny_models) -> Iterator[BentoServer]:  # type: ignore[no-untyped-def]
    yield from _server(tmp_path_factory, "fifo", False)


async def _query_latencies(c: httpx.AsyncClient, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        r = await c.post("/encode", json={"inputs": [f"where is the revenue chart {i}"], "input_type": "query"})
        out.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text
        await asyncio.sleep(0.005)
    return out


async def _measure(url: str) -> tuple[float, float, int]:
    """(idle p95, p95 during bulk ingest, documents embedded during it).

    Three clients stream requests of 64 inline images back to back (``upsert_many`` style), so the document queue
    stays deep: in FIFO order a query waits behind all of it, with priority only behind the batch already running.
    """
    images = [data_uri(make_image(i, size=(64, 64))) for i in range(64)]
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=64)) as c:
        await _query_latencies(c, 10)  # warm-up
        idle = await _query_latencies(c, 150)
        stop = asyncio.Event()
        done = 0

        async def bulk() -> None:
            nonlocal done
            while not stop.is_set():
                r = await c.post("/encode", json={"inputs": [{"image": u} for u in images], "input_type": "document"})
                assert r.status_code == 200, r.text
                done += len(images)

        workers = [asyncio.create_task(bulk()) for _ in range(3)]
        await asyncio.sleep(0.5)  # let the document queue fill
        busy = await _query_latencies(c, 150)
        stop.set()
        await asyncio.gather(*workers)
    return float(np.percentile(idle, 95)), float(np.percentile(busy, 95)), done


def test_queries_keep_latency_during_bulk_ingest(prio_server: BentoServer, fifo_server: BentoServer) -> None:
    idle, busy, docs = asyncio.run(_measure(prio_server.url))
    f_idle, f_busy, f_docs = asyncio.run(_measure(fifo_server.url))
    print(
        f"\npriority: query p95 idle {idle * 1000:.1f} ms, during ingest {busy * 1000:.1f} ms "
        f"({busy / idle:.2f}x, {docs} docs embedded meanwhile)\n"
        f"fifo:     query p95 idle {f_idle * 1000:.1f} ms, during ingest {f_busy * 1000:.1f} ms "
        f"({f_busy / f_idle:.2f}x, {f_docs} docs)"
    )
    assert docs > 0 and f_docs > 0
    # What queue order controls: the wait behind queued documents. Priority must cut the query p95 under ingest
    # well below FIFO's. (The remaining inflation over idle is CPU contention on this 2-core box: the ingest's
    # JSON parsing, image decoding and model batches share the cores with the queries; see the issue note.)
    assert busy < 0.75 * f_busy


def _queue_depth(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    m = re.search(r'mmsearch_queue_depth\{[^}]*service="embedder"[^}]*\} ([0-9.e+]+)', text)
    return float(m.group(1)) if m else 0.0


def test_request_deadline_is_honoured_in_the_queue(prio_server: BentoServer) -> None:
    """An input still queued when its request's ``timeout`` passes is dropped with 504, not run late."""
    images = [{"image": data_uri(make_image(i, size=(64, 64)))} for i in range(256)]

    async def go() -> tuple[list[httpx.Response], httpx.Response]:
        async with httpx.AsyncClient(base_url=prio_server.url, timeout=120) as c:
            bulk = [asyncio.create_task(c.post("/encode", json={"inputs": images})) for _ in range(4)]
            while _queue_depth(prio_server.url) < 64:  # hundreds of document inputs are waiting now
                await asyncio.sleep(0.005)
            late = await c.post("/encode", json={"inputs": images[:8], "timeout": 0.001})
            return list(await asyncio.gather(*bulk)), late

    bulk, late = asyncio.run(go())
    assert all(r.status_code == 200 for r in bulk)
    assert late.status_code == 504 and late.json()["code"] == "deadline_exceeded", late.text[:200]
