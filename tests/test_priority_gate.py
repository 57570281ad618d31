"""Unit tests of query-first scheduling around the model: the gate, held and shortened document batches, and
document image decodes that wait for in-flight queries.

The model is a recording function that sleeps per item (the scheduler is the unit under test); the real bento
with the tiny CLIP runs the same code in ``tests/test_priority_e2e.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable

from bench.support.images import data_uri, make_image, png_bytes
from service.batching import MicroBatcher
from service.config import Settings
from service.media import MediaLoader
from service.priority import PriorityGate


class Timed:
    """A model whose batches take ``per_item[lane]`` seconds per input; records (lane, size, start time)."""

    def __init__(self, per_item: dict[str, float]) -> None:
        self.per_item = per_item
        self.batches: list[tuple[Hashable, int, float]] = []

    def __call__(self, lane: Hashable, payloads: list[int]) -> list[int]:
        self.batches.append((lane, len(payloads), time.monotonic()))
        time.sleep(self.per_item.get(str(lane), 0.0) * len(payloads))
        return payloads


def _batcher(model: Timed, gate: PriorityGate, **kw: object) -> MicroBatcher[int, int]:
    opts: dict = {"max_batch_size": 8, "max_queue_size": 10_000, "max_wait_s": 30.0}
    opts.update(kw)
    return MicroBatcher(model, gate=gate, **opts)


def test_gate_counts_interactive_requests_and_bounds_the_hold() -> None:
    async def go() -> None:
        gate = PriorityGate(max_hold_s=0.05)
        holds: list[str] = []
        gate.on_hold = holds.append
        assert not gate.busy and not gate.recently_active()
        await gate.background_turn()  # nothing in flight: no wait (no hold counted)
        assert holds == []
        async with gate.interactive():
            async with gate.interactive():
                assert gate.busy
            assert gate.busy  # one still in flight
            t0 = time.monotonic()
            await asyncio.wait_for(gate.background_turn(), 5)  # never released: returns after max_hold_s
            assert time.monotonic() - t0 >= 0.04
        assert not gate.busy and gate.recently_active()
        assert holds == ["decode"]
        off = PriorityGate(max_hold_s=0)  # disabled (query_priority=false): never busy, never waits
        async with off.interactive():
            assert not off.busy and not off.recently_active()

    asyncio.run(go())


def test_document_batch_waits_for_a_query_still_being_parsed() -> None:
    """Documents queued while a query request is in flight (not yet queued) do not start before it."""

    async def go() -> None:
        model = Timed({})
        gate = PriorityGate(max_hold_s=5.0)
        b = _batcher(model, gate)
        async with gate.interactive():  # the query request is being parsed
            docs = asyncio.create_task(b.submit("doc", list(range(4)), priority=1))
            await asyncio.sleep(0.1)
            assert model.batches == []  # held for the query, well within max_hold_s
            assert await b.submit("query", [99], priority=0) == [99]  # the query's own batch is not held
        await docs
        assert [lane for lane, _, _ in model.batches] == ["query", "doc"]
        await b.aclose()

    asyncio.run(go())


def test_document_batch_hold_is_bounded() -> None:
    """A query that never finishes cannot stall the ingest: documents run after ``max_hold_s``."""

    async def go() -> None:
        model = Timed({})
        gate = PriorityGate(max_hold_s=0.05)
        b = _batcher(model, gate)
        async with gate.interactive():
            t0 = time.monotonic()
            assert await asyncio.wait_for(b.submit("doc", [1, 2, 3], priority=1), 5) == [1, 2, 3]
            assert time.monotonic() - t0 >= 0.04
        await b.aclose()

    asyncio.run(go())


def test_document_batches_are_short_while_queries_arrive_and_full_otherwise() -> None:
    async def go() -> None:
        # a query batch takes ~10 ms, a document ~4 ms per input: while querying, ~2 documents per batch
        model = Timed({"query": 0.010, "doc": 0.004})
        now = [0.0]  # the gate's clock: "recently" must not depend on how fast a loaded machine runs this test
        gate = PriorityGate(max_hold_s=1.0, recent_s=0.3, clock=lambda: now[0])
        b = _batcher(model, gate)
        await b.submit("doc", list(range(8)), priority=1)  # no query seen yet: one full batch
        async with gate.interactive():
            await b.submit("query", [0], priority=0)
        await b.submit("doc", list(range(16)), priority=1)  # a query finished just now
        now[0] += 0.35  # no query for longer than recent_s
        await b.submit("doc", list(range(16)), priority=1)
        sizes = [n for lane, n, _ in model.batches if lane == "doc"]
        assert sizes[0] == 8
        while_querying = sizes[1 : 1 + len(sizes) - 3]
        assert sizes[-2:] == [8, 8], sizes  # full size again once queries stopped
        assert sum(while_querying) == 16 and max(while_querying) <= 3, sizes
        await b.aclose()

    asyncio.run(go())


def test_budget_scales_document_batches() -> None:
    async def go() -> None:
        model = Timed({"query": 0.010, "doc": 0.004})
        gate = PriorityGate(max_hold_s=1.0, recent_s=5.0)
        b = _batcher(model, gate, background_budget=3.0)  # ~30 ms of documents: ~7 per batch
        await b.submit("doc", list(range(8)), priority=1)
        async with gate.interactive():
            await b.submit("query", [0], priority=0)
        await b.submit("doc", list(range(16)), priority=1)
        sizes = [n for lane, n, _ in model.batches if lane == "doc"][1:]
        assert sum(sizes) == 16 and 4 <= max(sizes) <= 8, sizes
        await b.aclose()

    asyncio.run(go())


def test_document_decodes_wait_for_in_flight_queries_query_decodes_do_not() -> None:
    async def go() -> None:
        loader = MediaLoader(Settings(document_decode_threads=1))
        gate = PriorityGate(max_hold_s=5.0)
        holds: list[str] = []
        gate.on_hold = holds.append
        loader.gate = gate
        img = make_image(0, size=(32, 32))
        uri, png = data_uri(img), png_bytes(img)
        async with gate.interactive():
            bulk = asyncio.create_task(
                loader.load_many([(uri, f"inputs[{i}].image") for i in range(3)], background=True)
            )
            upload = asyncio.create_task(loader.decode_upload(png, "image[0]", background=True))
            query = await asyncio.wait_for(loader.load(uri, "query.image"), 5)  # not held
            assert query.size == (32, 32)
            assert (await asyncio.wait_for(loader.decode_upload(png, "image[0]"), 5)).size == (32, 32)
            await asyncio.sleep(0.1)
            assert not bulk.done() and not upload.done()
        images = await asyncio.wait_for(bulk, 5)
        assert [im.size for im in images] == [(32, 32)] * 3 and (await upload).size == (32, 32)
        assert holds == ["decode"]
        await loader.aclose()

    asyncio.run(go())
