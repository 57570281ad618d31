"""Unit tests of the micro-batcher: lanes, order, priority, limits, deadlines and out-of-memory splitting.

The model is replaced by a recording function here (the batcher is the unit under test); the real models run
through it in the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Hashable

import pytest

from service.batching import (
    DeadlineExceeded,
    ItemTooLarge,
    MicroBatcher,
    Overloaded,
    QueueTimeout,
)


class Recorder:
    """Runs batches, recording (lane, payloads); can be paused to let a queue build up."""

    def __init__(self, oom_over: int = 0, oom_items: frozenset[int] = frozenset()) -> None:
        self.batches: list[tuple[Hashable, list[int]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.oom_over = oom_over
        self.oom_items = oom_items

    def __call__(self, lane: Hashable, payloads: list[int]) -> list[str]:
        self.gate.wait(10)
        if (self.oom_over and len(payloads) > self.oom_over) or self.oom_items & set(payloads):
            raise MemoryError("simulated")
        self.batches.append((lane, list(payloads)))
        return [f"{lane}:{p}" for p in payloads]


def make(rec: Recorder, **kw: object) -> MicroBatcher[int, str]:
    opts: dict = {"max_batch_size": 4, "max_queue_size": 1000, "max_wait_s": 30.0}
    opts.update(kw)
    return MicroBatcher(rec, is_oom=lambda e: isinstance(e, MemoryError), **opts)


async def _blocked_start(b: MicroBatcher[int, str], rec: Recorder) -> asyncio.Task[list[str]]:
    """Occupy the worker with one batch that waits on ``rec.gate``."""
    rec.gate.clear()
    first = asyncio.create_task(b.submit("warm", [-1]))
    while not b._worker or b.queued:  # wait until the worker has taken it
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.01)
    return first


def test_lanes_are_never_mixed_and_order_is_kept() -> None:
    async def go() -> None:
        rec = Recorder()
        b = make(rec)
        first = await _blocked_start(b, rec)
        text = asyncio.create_task(b.submit("text", list(range(10))))
        image = asyncio.create_task(b.submit("image", list(range(100, 103))))
        await asyncio.sleep(0.01)
        rec.gate.set()
        assert await text == [f"text:{i}" for i in range(10)]
        assert await image == [f"image:{i}" for i in range(100, 103)]
        await first
        for lane, payloads in rec.batches[1:]:
            assert len(payloads) <= 4
            assert all((p >= 100) == (lane == "image") for p in payloads)
        assert len(rec.batches) == 1 + 3 + 1  # warm-up, 10 texts in 4+4+2, 3 images in 1
        await b.aclose()

    asyncio.run(go())


def test_concurrent_requests_share_batches() -> None:
    async def go() -> None:
        rec = Recorder()
        b = make(rec, max_batch_size=32)
        first = await _blocked_start(b, rec)
        calls = [asyncio.create_task(b.submit("text", [i])) for i in range(20)]
        await asyncio.sleep(0.01)
        rec.gate.set()
        assert [await c for c in calls] == [[f"text:{i}"] for i in range(20)]
        await first
        assert [len(p) for _, p in rec.batches[1:]] == [20]  # 20 requests, one model call
        await b.aclose()

    asyncio.run(go())


def test_queries_overtake_queued_documents() -> None:
    async def go() -> None:
        rec = Recorder()
        b = make(rec, max_batch_size=2)
        first = await _blocked_start(b, rec)
        docs = asyncio.create_task(b.submit("doc", list(range(6)), priority=1))
        await asyncio.sleep(0.01)
        query = asyncio.create_task(b.submit("query", [99], priority=0))
        await asyncio.sleep(0.01)
        rec.gate.set()
        await asyncio.gather(docs, query, first)
        lanes = [lane for lane, _ in rec.batches[1:]]
        assert lanes == ["query", "doc", "doc", "doc"]  # queued later, served first
        await b.aclose()

    asyncio.run(go())


def test_overload_is_refused_immediately() -> None:
    async def go() -> None:
        rec = Recorder()
        b = make(rec, max_queue_size=5)
        first = await _blocked_start(b, rec)
        ok = asyncio.create_task(b.submit("t", [1, 2, 3]))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded, match="limit 5"):
            await b.submit("t", [4, 5, 6])
        rec.gate.set()
        assert await ok == ["t:1", "t:2", "t:3"]
        await first
        await b.aclose()

    asyncio.run(go())


def test_queue_timeout_and_request_deadline() -> None:
    async def go() -> None:
        rec = Recorder()
        b = make(rec, max_wait_s=0.05)
        first = await _blocked_start(b, rec)
        late = asyncio.create_task(b.submit("t", [1]))
        deadline = asyncio.create_task(b.submit("u", [2], deadline=time.monotonic() + 0.01))
        await asyncio.sleep(0.1)
        rec.gate.set()
        with pytest.raises(QueueTimeout):
            await late
        with pytest.raises(DeadlineExceeded):
            await deadline
        await first
        assert all(lane == "warm" for lane, _ in rec.batches)  # neither ran late
        await b.aclose()

    asyncio.run(go())


def test_oom_splits_lowers_batch_size_and_isolates_one_item() -> None:
    async def go() -> None:
        rec = Recorder(oom_over=2, oom_items=frozenset({7}))
        b = make(rec, max_batch_size=8)
        first = await _blocked_start(b, rec)
        good = asyncio.create_task(b.submit("t", [1, 2, 3, 4, 5, 6]))
        bad = asyncio.create_task(b.submit("t", [7]))
        await asyncio.sleep(0.01)
        rec.gate.set()
        assert await good == [f"t:{i}" for i in range(1, 7)]
        with pytest.raises(ItemTooLarge):
            await bad
        await first
        assert b.effective_max_batch_size <= 2 and b.stats.oom_splits >= 2
        assert all(len(p) <= 2 for _, p in rec.batches)
        await b.aclose()

    asyncio.run(go())


def test_cancelled_request_frees_its_slots() -> None:
    async def go() -> None:
        rec = Recorder()
        b = make(rec, max_queue_size=4)
        first = await _blocked_start(b, rec)
        gone = asyncio.create_task(b.submit("t", [1, 2, 3, 4]))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.sleep(0.01)
        rec.gate.set()
        await first
        assert await b.submit("t", [5, 6, 7, 8]) == ["t:5", "t:6", "t:7", "t:8"]
        assert all(1 not in p for _, p in rec.batches)
        await b.aclose()

    asyncio.run(go())
