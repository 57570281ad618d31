"""Unit tests of the micro-batcher: lanes, order, priority, limits, deadlines and out-of-memory splitting.

The model is replaced by a recording function here (the batcher is the unit under test); the real models run
through it in the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Hashable

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


class Staged(Recorder):
    """A ``Recorder`` with a ``prepare`` step that records which thread prepared which batch, and when."""

    def __init__(self) -> None:
        super().__init__()
        self.prepared: list[tuple[str, list[int], bool]] = []  # (thread name, payloads, model busy then)

    def prepare(self, lane: Hashable, payloads: list[int]) -> list[int]:
        self.prepared.append((threading.current_thread().name, list(payloads), not self.gate.is_set()))
        return [p * 10 for p in payloads]


def test_a_younger_full_lane_is_not_prepared_ahead_of_an_older_partial_one() -> None:
    """At one priority (query priority off) lanes are served by age: a document lane that is always full must not
    be prepared ahead, batch after batch, of a lone query queued before it (it starved to its queue timeout)."""

    async def go() -> None:
        rec = Recorder()
        b = make(rec, max_batch_size=4)
        first = await _blocked_start(b, rec)
        query = asyncio.create_task(b.submit("query", [99], priority=1))
        await asyncio.sleep(0.01)
        docs = asyncio.create_task(b.submit("doc", list(range(8)), priority=1))
        await asyncio.sleep(0.01)
        rec.gate.set()
        await asyncio.gather(first, query, docs)
        assert [lane for lane, _ in rec.batches[1:]] == ["query", "doc", "doc"]
        await b.aclose()

    asyncio.run(go())


def test_next_batch_is_prepared_in_its_own_thread_while_the_model_runs() -> None:
    async def go() -> None:
        rec = Staged()
        b = MicroBatcher(rec, prepare=rec.prepare, max_batch_size=4, max_queue_size=100, max_wait_s=30, name="m")
        first = await _blocked_start(b, rec)
        second = asyncio.create_task(b.submit("t", [1, 2, 3, 4]))  # a full batch: worth preparing ahead
        while len(rec.prepared) < 2:
            await asyncio.sleep(0.001)
        rec.gate.set()
        assert await second == ["t:10", "t:20", "t:30", "t:40"]  # run() got the prepared features
        await first
        (t_warm, _, _), (t_next, payloads, model_busy) = rec.prepared
        assert t_warm.startswith("m-batch")  # the model was idle: prepared in the model thread, no extra hop
        assert t_next.startswith("m-prepare") and payloads == [1, 2, 3, 4] and model_busy
        assert b.stats.prepared_ahead == 1
        await b.aclose()

    asyncio.run(go())


def test_a_partial_batch_is_not_prepared_ahead() -> None:
    """While the model is busy only a full batch is taken; a partial one waits for the model (a GPU would spend a
    whole batch's fixed cost on it)."""

    async def go() -> None:
        rec = Staged()
        b = MicroBatcher(rec, prepare=rec.prepare, max_batch_size=4, max_queue_size=100, max_wait_s=30, name="m")
        first = await _blocked_start(b, rec)
        calls = [asyncio.create_task(b.submit("t", [i])) for i in range(3)]
        await asyncio.sleep(0.05)
        assert len(rec.prepared) == 1 and b.queued == 3  # only the warm-up batch was taken
        rec.gate.set()
        await asyncio.gather(first, *calls)
        assert [p for _, p in rec.batches[1:]] == [[0, 10, 20]]  # one batch, prepared when the model was free
        assert rec.prepared[1][0].startswith("m-batch")
        await b.aclose()

    asyncio.run(go())


def test_whole_requests_are_packed_into_a_batch_where_they_fit() -> None:
    async def go() -> None:
        rec = Recorder()
        b = make(rec, max_batch_size=8)
        first = await _blocked_start(b, rec)
        sizes = [5, 5, 3, 12]  # ids: request r holds r*100 ... r*100+size-1
        reqs = [asyncio.create_task(b.submit("t", [r * 100 + i for i in range(n)])) for r, n in enumerate(sizes)]
        await asyncio.sleep(0.01)
        rec.gate.set()
        await asyncio.gather(first, *reqs)
        batches = [sorted({p // 100 for p in payloads}) for _, payloads in rec.batches[1:]]
        # 5 then 5 do not fit together: the 3 behind joins the first; 12 > 8 is split across two batches
        assert batches == [[0, 2], [1], [3], [3]]
        assert [len(p) for _, p in rec.batches[1:]] == [8, 5, 8, 4]
        await b.aclose()

    asyncio.run(go())


class Closed:
    """``clients`` closed-loop clients (each sends its next one-item request when the last one is answered)."""

    def __init__(self, b: MicroBatcher[int, str], clients: int, rounds: int) -> None:
        self.b, self.clients, self.rounds = b, clients, rounds

    async def run(self) -> None:
        async def client(i: int) -> None:
            for r in range(self.rounds):
                assert await self.b.submit("q", [i * 1000 + r], priority=0) == [f"q:{i * 1000 + r}"]

        await asyncio.gather(*(client(i) for i in range(self.clients)))


def test_coalescing_waits_for_the_clients_a_batch_answered() -> None:
    """Closed-loop clients resubmit when answered: with coalescing, every batch after the first holds all of
    them instead of whichever came back first (bounded by the window, here generous)."""

    async def go() -> None:
        rec = Recorder()
        b = make(rec, max_batch_size=8, coalesce_s=5.0)
        await asyncio.wait_for(Closed(b, clients=8, rounds=6).run(), 30)
        sizes = [len(p) for _, p in rec.batches]
        assert sum(sizes) == 48 and all(s == 8 for s in sizes[1:]), sizes
        await b.aclose()

    asyncio.run(go())


def test_a_single_client_never_waits_for_coalescing() -> None:
    """One request answered, one expected back: a lone client's requests start at once (a 60 s window would
    time this test out if they waited)."""

    async def go() -> None:
        rec = Recorder()
        b = make(rec, max_batch_size=8, coalesce_s=60.0)
        await asyncio.wait_for(Closed(b, clients=1, rounds=10).run(), 20)
        assert [len(p) for _, p in rec.batches] == [1] * 10
        await b.aclose()

    asyncio.run(go())


def test_coalescing_gives_up_after_the_window() -> None:
    """Fewer clients come back than the last batch answered: the batch starts when the window ends."""

    async def go() -> None:
        rec = Recorder()
        b = make(rec, max_batch_size=8, coalesce_s=0.2)
        await Closed(b, clients=6, rounds=1).run()  # one batch of 6: six expected back
        t0 = time.monotonic()
        assert await asyncio.wait_for(b.submit("q", [7], priority=0), 20) == ["q:7"]  # only one comes
        assert time.monotonic() - t0 >= 0.15  # it waited for the others (up to the window) ...
        assert [len(p) for _, p in rec.batches][-1] == 1  # ... then ran alone
        assert b.stats.coalesce_timeouts == 1
        await b.aclose()

    asyncio.run(go())


async def _until(cond: Callable[[], bool]) -> None:
    """Let the tasks just created run, then wait until ``cond()``."""
    await asyncio.sleep(0)
    while not cond():
        await asyncio.sleep(0.001)


def test_alternating_groups_of_clients_are_merged() -> None:
    """Two groups of 4 closed-loop clients whose turnaround is longer than a batch (through HTTP on a busy host):
    group Y is still in flight when group X's batch ends, and comes back before X does. Counting only the
    clients the last batch answered (X), Y's 4 would start at once and the two groups would alternate in
    batches of 4 forever; the batcher expects Y back too, so Y waits for X and every later batch holds all 8."""

    async def go() -> None:
        rec = Recorder()
        b = make(rec, max_batch_size=8, coalesce_s=0.05)
        rec.gate.clear()
        y = [asyncio.create_task(b.submit("q", [i], priority=0)) for i in range(4)]
        await _until(lambda: b.queued == 0 and b.stats.batches == 0)  # Y's batch is in the model
        x = [asyncio.create_task(b.submit("q", [10 + i], priority=0)) for i in range(4)]
        await _until(lambda: b.queued == 4)
        rec.gate.set()
        await asyncio.gather(*y)  # Y answered; Y's clients stay in flight while X waits for them ...
        await asyncio.gather(*x)  # ... up to the window, then runs alone: the two groups have formed
        assert [len(p) for _, p in rec.batches] == [4, 4] and b.stats.coalesce_timeouts == 1
        b.coalesce_s = 30.0  # from here on nothing depends on timing: a wait would time the test out

        async def client(i: int, rounds: int) -> None:
            for r in range(1, rounds + 1):
                assert await b.submit("q", [i + 100 * r], priority=0) == [f"q:{i + 100 * r}"]

        ys = [asyncio.create_task(client(i, 5)) for i in range(4)]  # Y comes back first, after X's batch ended
        await _until(lambda: b.queued == 4)
        xs = [asyncio.create_task(client(10 + i, 5)) for i in range(4)]
        await asyncio.wait_for(asyncio.gather(*ys, *xs), 20)
        assert [len(p) for _, p in rec.batches] == [4, 4] + [8] * 5
        assert b.stats.coalesce_timeouts == 1
        await b.aclose()

    asyncio.run(go())


def test_clients_that_left_are_not_expected_back_for_long() -> None:
    """Six clients answered and gone: a lone client right after waits one window for them (they might be on
    their way), one arriving after ``return_horizon`` starts at once."""

    async def go() -> None:
        rec = Recorder()
        b = make(rec, max_batch_size=8, coalesce_s=0.05)
        await Closed(b, clients=6, rounds=1).run()
        key = (0, "q")
        assert b.on_their_way_back(key, time.monotonic()) == 6
        await asyncio.sleep(b.return_horizon(key) + 0.05)
        assert b.on_their_way_back(key, time.monotonic()) == 0
        assert await b.submit("q", [7], priority=0) == ["q:7"]
        assert b.stats.coalesce_timeouts == 0  # it did not wait
        await b.aclose()

    asyncio.run(go())


def test_a_query_overtakes_a_document_batch_prepared_ahead() -> None:
    async def go() -> None:
        rec = Staged()
        b = MicroBatcher(rec, prepare=rec.prepare, max_batch_size=4, max_queue_size=100, max_wait_s=30, name="m")
        first = await _blocked_start(b, rec)
        docs = asyncio.create_task(b.submit("doc", list(range(8)), priority=1))
        while len(rec.prepared) < 2:  # a full document batch is prepared ahead
            await asyncio.sleep(0.001)
        query = asyncio.create_task(b.submit("query", [99], priority=0))
        while len(rec.prepared) < 3:  # the query is prepared ahead too, though not a full batch
            await asyncio.sleep(0.001)
        rec.gate.set()
        await asyncio.gather(first, docs, query)
        assert [lane for lane, _ in rec.batches[1:]] == ["query", "doc", "doc"]
        await b.aclose()

    asyncio.run(go())


def test_a_failing_prepare_fails_its_batch_only() -> None:
    async def go() -> None:
        rec = Staged()

        def prepare(lane: Hashable, payloads: list[int]) -> list[int]:
            if 13 in payloads:
                raise ValueError("cannot tokenise 13")
            return rec.prepare(lane, payloads)

        b = MicroBatcher(rec, prepare=prepare, max_batch_size=4, max_queue_size=100, max_wait_s=30)
        with pytest.raises(ValueError, match="13"):
            await b.submit("t", [12, 13])
        assert await b.submit("t", [14]) == ["t:140"]
        await b.aclose()

    asyncio.run(go())


# --- cost: audio and video batches bounded by what their items cost -------------------------------------------
# A payload ``p`` >= 1000 is a clip costing ``(p % 1000) / 10`` of a batch's budget (its share); smaller ones cost
# nothing (text), so that one batcher shows both rules. The cost function is the one thing the runtime supplies
# (``service.runtime.media_cost``, tested below on real decoded arrays).


def share(p: int) -> float:
    return (p % 1000) / 10 if p >= 1000 else 0.0


def clip(n: int, tenths: int) -> int:
    """The ``n``-th clip of a request, costing ``tenths`` / 10 of a batch."""
    return 1000 * (n + 1) + tenths


def _cost(rec: Recorder, lane: str) -> list[float]:
    return [round(sum(share(p) for p in payloads), 6) for got, payloads in rec.batches if got == lane]


def test_batches_never_exceed_the_cost_budget_and_an_over_budget_clip_runs_alone() -> None:
    async def go() -> None:
        rec = Recorder()
        b = make(rec, max_batch_size=8, cost=share)
        first = await _blocked_start(b, rec)
        tenths = [3, 3, 3, 3, 12, 2, 4, 4, 1, 1, 1]  # one clip (12) costs more than a batch
        clips = asyncio.create_task(b.submit("video", [clip(i, t) for i, t in enumerate(tenths)]))
        texts = asyncio.create_task(b.submit("text", list(range(16))))  # cost 0: bounded by count only
        await asyncio.sleep(0.01)
        rec.gate.set()
        await asyncio.gather(first, clips, texts)
        video = [p for lane, p in rec.batches if lane == "video"]
        assert sorted(p for batch in video for p in batch) == sorted(clip(i, t) for i, t in enumerate(tenths))
        assert [[share(p) * 10 for p in batch] for batch in video] == [[3, 3, 3], [3], [12], [2, 4, 4], [1, 1, 1]]
        over = [c for c in _cost(rec, "video") if c > 1.0]
        assert over == [1.2] and [len(p) for p in video if share(p[0]) > 1.0] == [1]  # alone
        assert [len(p) for lane, p in rec.batches if lane == "text"] == [8, 8]
        await b.aclose()

    asyncio.run(go())


def test_whole_requests_of_clips_are_packed_by_cost() -> None:
    """Requests of clips go whole into a batch where their cost fits, as they do by count."""

    async def go() -> None:
        rec = Recorder()
        b = make(rec, max_batch_size=32, cost=share)
        first = await _blocked_start(b, rec)
        reqs = [
            asyncio.create_task(b.submit("audio", [clip(10 * r + i, t) for i in range(n)]))
            for r, (n, t) in enumerate([(2, 3), (2, 3), (1, 4), (3, 5)])  # costs 0.6, 0.6, 0.4, 1.5
        ]
        await asyncio.sleep(0.01)
        rec.gate.set()
        await asyncio.gather(first, *reqs)
        groups = [
            sorted({(p // 1000 - 1) // 10 for p in payloads}) for lane, payloads in rec.batches if lane == "audio"
        ]
        # 0.6 + 0.6 does not fit: the 0.4 behind joins the first; 1.5 is split at the budget
        assert groups == [[0, 2], [1], [3], [3]]
        assert _cost(rec, "audio") == [1.0, 0.6, 1.0, 0.5]
        await b.aclose()

    asyncio.run(go())


def test_a_query_overtakes_the_document_clips_queued_before_it() -> None:
    """Long document clips queued in batches of two by cost; a query clip submitted after them runs after the
    document batch in the model only, before the remaining document batches (and before a full one prepared
    ahead)."""

    async def go() -> None:
        rec = Staged()
        b = MicroBatcher(
            rec, prepare=rec.prepare, max_batch_size=32, max_queue_size=100, max_wait_s=30, cost=share, name="m"
        )
        rec.gate.clear()
        docs = asyncio.create_task(b.submit("docs", [clip(i, 5) for i in range(8)], priority=1))
        while len(rec.prepared) < 2:  # one document batch in the model, the next prepared ahead (full by cost)
            await asyncio.sleep(0.001)
        query = asyncio.create_task(b.submit("query", [clip(99, 9)], priority=0))
        while len(rec.prepared) < 3:
            await asyncio.sleep(0.001)
        rec.gate.set()
        await asyncio.gather(docs, query)
        assert [(lane, len(p)) for lane, p in rec.batches] == [("docs", 2), ("query", 1)] + [("docs", 2)] * 3
        await b.aclose()

    asyncio.run(asyncio.wait_for(go(), 20))  # without the cost rule no document batch is full: nothing prepared


def test_media_cost_is_samples_and_frame_pixels_over_their_budgets() -> None:
    """``service.runtime.media_cost`` on the inputs the Embedder (``to_st``) and the Reranker (pairs of
    ``to_pair_st``) hand the batcher: video frames x height x width, audio samples, text and images 0."""
    import numpy as np
    from PIL import Image

    from service.avmedia import Audio, Video
    from service.config import Settings
    from service.inputs import ModelInput
    from service.runtime import media_cost

    cost = media_cost(Settings(max_batch_video_pixels=4 * 32 * 48 * 2, max_batch_audio_samples=32_000))
    video = Video(np.zeros((4, 32, 48, 3), np.uint8), np.arange(4) / 2, 2.0, (48, 32))
    audio = Audio(np.zeros(8_000, np.float32), 16_000)
    v, a, t = ModelInput(video=video), ModelInput(audio=audio, text="x"), ModelInput(text="x")
    assert cost(v.to_st()) == cost(v.to_pair_st()) == 0.5
    assert cost(a.to_st()) == cost(a.to_pair_st()) == 0.25
    assert cost((t.to_pair_st(), v.to_pair_st())) == 0.5 and cost((a.to_pair_st(), v.to_pair_st())) == 0.75
    assert cost(t.to_st()) == cost(ModelInput(image=Image.new("RGB", (8, 8))).to_st()) == cost("text") == 0.0


class CostOOM(Recorder):
    """Runs out of memory when a batch's clips cost more than ``over`` (memory grows with samples or pixels)."""

    def __init__(self, over: float, oom_items: frozenset[int]) -> None:
        super().__init__(oom_items=oom_items)
        self.over = over

    def __call__(self, lane: Hashable, payloads: list[int]) -> list[str]:
        if sum(share(p) for p in payloads) > self.over:
            raise MemoryError("simulated")
        return super().__call__(lane, payloads)


def test_out_of_memory_on_clips_lowers_the_cost_budget_not_the_batch_size() -> None:
    """A batch of clips that runs out of memory is split and retried; the cost budget comes down to what ran,
    while text batches keep their size; a clip that does not fit alone fails alone."""

    async def go() -> None:
        rec = CostOOM(over=0.5, oom_items=frozenset({clip(7, 1)}))
        b = make(rec, max_batch_size=8, cost=share)
        first = await _blocked_start(b, rec)
        good = asyncio.create_task(b.submit("audio", [clip(i, 2) for i in range(5)]))  # 1.0: one batch of 5
        bad = asyncio.create_task(b.submit("audio", [clip(7, 1)]))
        await asyncio.sleep(0.01)
        rec.gate.set()
        assert await good == [f"audio:{clip(i, 2)}" for i in range(5)]
        with pytest.raises(ItemTooLarge):
            await bad
        await first
        assert b.stats.oom_splits >= 2 and b.effective_max_batch_cost <= 0.4 + 1e-9
        assert b.effective_max_batch_size == 8
        assert await b.submit("text", list(range(8))) == [f"text:{i}" for i in range(8)]  # one batch of 8 still
        assert [len(p) for lane, p in rec.batches if lane == "text"] == [8]
        assert await b.submit("audio", [clip(i, 2) for i in range(4)]) == [f"audio:{clip(i, 2)}" for i in range(4)]
        assert _cost(rec, "audio")[-2:] == [0.4, 0.4]  # the lowered budget holds
        await b.aclose()

    asyncio.run(go())


def test_coalescing_default_is_chosen_per_device() -> None:
    """``auto`` waits 20 ms on CPU (evener batches cost less CPU per input, bench/RESULTS.md 11.0a) and 5 ms on an
    accelerator; a number set by hand is used on both."""
    from service.config import CPU_COALESCE_MS, GPU_COALESCE_MS, Settings

    auto = Settings()
    assert auto.batch_coalesce_ms == "auto"
    assert auto.coalesce_s(accelerated=False) == CPU_COALESCE_MS / 1000 == 0.02
    assert auto.coalesce_s(accelerated=True) == GPU_COALESCE_MS / 1000 == 0.005
    fixed = Settings(batch_coalesce_ms=0)
    assert fixed.coalesce_s(accelerated=False) == fixed.coalesce_s(accelerated=True) == 0.0
