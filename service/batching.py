"""An in-process adaptive micro-batcher for one model.

Why not BentoML's ``batchable=True``: a batchable API takes exactly one argument, cannot keep text and images in
separate model batches, cannot serve queries before bulk documents, and cannot split a batch that runs out of
memory. This batcher does all four (the design Infinity uses):

* Requests are split into items; items wait in *lanes* (e.g. ``("query", "image")``). A model batch only ever
  holds items of one lane, so CLIP never sees mixed text/image batches and each batch has one prompt.
* Lanes have a priority (lower runs first): interactive queries overtake queued bulk documents. With a
  ``PriorityGate`` (``service.priority``) document batches also wait for a query request that is still being
  parsed, and are kept short while queries keep arriving.
* Two stages, each in its own thread: ``prepare`` (tokenisation, image preprocessing) and ``run`` (the forward
  pass). While the model runs batch *k*, batch *k+1* is prepared, so a GPU waits for no CPU work when requests
  queue up. A batch is prepared ahead only when it is full (the model is busy anyway, and a partial batch
  started early would cost a GPU a whole batch's fixed cost for a few items); query batches may be prepared
  ahead of a prepared document batch, and the model takes the highest-priority prepared batch.
* Batch sizes follow the load: idle, a batch holds what is queued (1 at one client). **Coalescing**
  (``coalesce_s``): when the model frees up and fewer items are queued than are on their way back, the batcher
  waits up to ``coalesce_s`` for them instead of starting a small batch. On a GPU a batch of 2 costs almost
  what a batch of 32 does, so this doubles throughput at 32 clients; on a CPU the cost per item is flat and
  ``0`` is right. *On their way back*: the items of every request answered lately that no new request has
  matched yet (closed-loop clients resend when answered), not only those of the last batch. Counting only the
  last batch let clients whose turnaround is longer than a batch settle into groups that alternate (8 clients
  in two batches of 4 forever: each group is still in flight when the other's batch ends). An answer is
  expected back for ``2 * (coalesce_s + the lane's last batch time)``; arrivals match the oldest answers
  first. A single client never waits: one request answered, one back.
* Whole requests go into one batch where they fit (a reranked query's 20 pairs are scored together instead of
  straddling two batches); a request larger than a batch is split.
* **Cost** (``cost``): besides the item count, a batch is bounded by what its items cost, for items whose model
  time and memory grow with their size (audio: samples; video: sampled frames x pixels per frame;
  ``service.runtime.media_cost`` gives each item its share of a batch). A batch's shares add up to at most
  ``effective_max_batch_cost`` (1.0); an item whose share alone exceeds it runs in a batch of its own. So a batch
  of long clips holds the model no longer than the budget (or one over-budget clip) takes, and a query that
  arrives meanwhile waits for that batch only: the document batches behind it wait for the query's.
* Bounded: more than ``max_queue_size`` waiting items -> ``Overloaded`` (429); an item waiting longer than
  ``max_wait_s`` -> ``QueueTimeout`` (503); past the request's deadline -> ``DeadlineExceeded`` (504).
* Out of memory: the batch is split in halves and retried; the effective max batch size is lowered (for a batch
  with a cost, the cost budget instead: the measure that predicts its memory, leaving text and image batches at
  their size); a single item that still does not fit fails alone with ``ItemTooLarge`` (413) and everything
  else is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from service.priority import PriorityGate

log = logging.getLogger("mmsearch.batching")

T = TypeVar("T")
R = TypeVar("R")

Key = tuple[int, Hashable]  # (priority, lane)


class BatchError(Exception):
    """Base of the batcher's refusals."""


class Overloaded(BatchError):
    """The queue is full."""


class QueueTimeout(BatchError):
    """An item waited in the queue longer than allowed."""


class DeadlineExceeded(BatchError):
    """The request's own deadline passed before its items ran."""


class ItemTooLarge(BatchError):
    """A single item did not fit in memory even alone."""


@dataclass(eq=False)
class _Request(Generic[T, R]):
    """The items one ``submit`` call queued in one lane; batches take them from ``taken`` on."""

    payloads: list[T]
    futures: list[asyncio.Future[R]]
    enqueued: float
    deadline: float | None
    costs: list[float] | None = None  # each item's share of a batch's cost budget; None: all 0
    taken: int = 0

    @property
    def remaining(self) -> int:
        return len(self.payloads) - self.taken

    @property
    def cancelled(self) -> bool:
        return self.taken < len(self.futures) and self.futures[self.taken].done()


@dataclass(eq=False)
class _Batch(Generic[T, R]):
    key: Key
    payloads: list[T]
    futures: list[asyncio.Future[R]]
    finished: list[_Request[T, R]]  # requests whose last items are in this batch
    prepared: Any = None
    is_prepared: bool = False  # prepared ahead in the preprocessing thread (else the model thread prepares it)
    error: BaseException | None = None  # prepare() failed
    held_until: float = 0.0  # a document batch held for a query (see _hold_background)


@dataclass
class BatchStats:
    """Counters the service exports as metrics (and tests read)."""

    batches: int = 0
    items: int = 0
    oom_splits: int = 0
    prepared_ahead: int = 0
    coalesce_timeouts: int = 0  # batches started when the coalescing window ended short of what was expected
    sizes: list[int] = field(default_factory=list)  # the last ``SIZES_KEPT`` batch sizes, oldest first

    SIZES_KEPT = 1024

    def record(self, size: int) -> None:
        self.batches += 1
        self.items += size
        self.sizes.append(size)
        if len(self.sizes) > self.SIZES_KEPT:
            del self.sizes[: len(self.sizes) - self.SIZES_KEPT]


class MicroBatcher(Generic[T, R]):
    """Batch items from concurrent requests into model calls of one lane each.

    ``prepare(lane, payloads)`` (optional; default: the payloads themselves) runs in a preprocessing thread and
    ``run(lane, prepared)`` in the model thread; ``run`` returns one result per payload, in order. ``prepare``
    is never called from two threads at once. ``coalesce_s`` and ``cost`` (an item's share of a batch's cost
    budget; 0 for items bounded by count only): see the module docstring.
    """

    def __init__(
        self,
        run: Callable[[Hashable, Any], Sequence[R]],
        *,
        max_batch_size: int,
        max_queue_size: int,
        max_wait_s: float,
        prepare: Callable[[Hashable, list[T]], Any] | None = None,
        coalesce_s: float = 0.0,
        is_oom: Callable[[BaseException], bool] = lambda e: False,
        on_batch: Callable[[Hashable, int, float], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        gate: PriorityGate | None = None,
        background_budget: float = 1.0,
        cost: Callable[[T], float] | None = None,
        name: str = "model",
    ) -> None:
        self._run = run
        self._prepare = prepare
        self._cost = cost
        self.max_batch_size = max_batch_size
        self.effective_max_batch_size = max_batch_size
        self.effective_max_batch_cost = 1.0  # lowered by out-of-memory errors of batches with a cost
        self.coalesce_s = coalesce_s
        self._max_queue_size = max_queue_size
        self._max_wait_s = max_wait_s
        self._is_oom = is_oom
        self._on_batch = on_batch
        self._on_depth = on_depth
        self._gate = gate
        self._background_budget = background_budget
        if gate is not None:
            gate.add_clear_listener(self._poke)
        self._query_batch_s: float | None = None  # moving averages of model time, for sizing document batches
        self._item_s: dict[Hashable, float] = {}
        self._queues: dict[Key, deque[_Request[T, R]]] = {}
        self._lane_items: dict[Key, int] = {}
        self._queued = 0
        self._returning: dict[Key, deque[list[float]]] = {}  # [answered at, items not back yet], oldest first
        self._last_batch_s: dict[Key, float] = {}
        self._ready: list[_Batch[T, R]] = []  # batches waiting for the model
        self._handoff: list[_Batch[T, R]] = []  # prepared batches the running model thread takes next
        self._handoff_lock = threading.Lock()
        self._running = False
        self._running_key: Key | None = None  # lane of the batch in the model (also set per chained batch)
        self._preparing: Key | None = None  # the lane whose batch is being prepared
        self._idle_since = -float("inf")
        self._hold_until: float | None = None
        self._wakeup: asyncio.Event | None = None
        self._model_wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-batch")
        self._prep_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-prepare")
        self._prep_lock = threading.Lock()
        self.stats = BatchStats()

    @property
    def queued(self) -> int:
        """Items waiting (not counting prepared batches and the batch that is running)."""
        return self._queued

    async def submit(
        self, lane: Hashable, payloads: Sequence[T], *, priority: int = 1, deadline: float | None = None
    ) -> list[R]:
        """Queue ``payloads`` in ``lane`` and wait for their results (in order).

        ``deadline`` is a ``time.monotonic()`` instant. Raises a ``BatchError`` subclass on refusal.
        """
        if not payloads:
            return []
        if self._queued + len(payloads) > self._max_queue_size:
            raise Overloaded(f"queue full: {self._queued} inputs waiting, limit {self._max_queue_size}; retry later")
        self._ensure_worker()
        loop = asyncio.get_running_loop()
        key: Key = (priority, lane)
        futures: list[asyncio.Future[R]] = [loop.create_future() for _ in payloads]
        request = _Request(list(payloads), futures, time.monotonic(), deadline, self._costs(payloads))
        self._queues.setdefault(key, deque()).append(request)
        self._lane_items[key] = self._lane_items.get(key, 0) + len(payloads)
        self._queued += len(payloads)
        self._came_back(key, len(payloads))
        self._depth_changed()
        self._poke()
        try:
            if len(futures) == 1:  # one loop iteration fewer than through gather: a lone query's latency
                return [await futures[0]]
            return list(await asyncio.gather(*futures))
        finally:
            for f in futures:  # a cancelled request frees its queue slots
                if not f.done():
                    f.cancel()

    def _costs(self, payloads: Sequence[T]) -> list[float] | None:
        """Each payload's share of a batch's cost budget; ``None`` when none has a cost."""
        if self._cost is None:
            return None
        costs = [self._cost(p) for p in payloads]
        return costs if any(costs) else None

    def _depth_changed(self) -> None:
        if self._on_depth is not None:
            self._on_depth(self._queued)

    def _poke(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
        if self._model_wakeup is not None:
            self._model_wakeup.set()

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._wakeup = asyncio.Event()
            self._model_wakeup = asyncio.Event()
            loop = asyncio.get_running_loop()
            if self._runner is not None:
                self._runner.cancel()
            self._worker = loop.create_task(self._form(), name="micro-batcher-form")
            self._runner = loop.create_task(self._run_batches(), name="micro-batcher-run")

    # --- choosing and taking a batch -------------------------------------------------------------------------

    def _prune(self, key: Key, now: float) -> None:
        """Drop cancelled and expired requests from the head of lane ``key``."""
        queue = self._queues[key]
        while queue:
            req = queue[0]
            if req.cancelled:
                self._drop(key, req, None)
            elif req.deadline is not None and now > req.deadline:
                self._drop(key, req, DeadlineExceeded("request deadline passed while queued"))
            elif now - req.enqueued > self._max_wait_s:
                msg = f"input waited more than {self._max_wait_s:.1f}s in the queue; retry later"
                self._drop(key, req, QueueTimeout(msg))
            else:
                return

    def _drop(self, key: Key, req: _Request[T, R], exc: BaseException | None) -> None:
        self._queues[key].popleft()
        n = req.remaining
        self._queued -= n
        self._lane_items[key] -= n
        if exc is not None:
            for f in req.futures[req.taken :]:
                if not f.done():
                    f.set_exception(exc)
        req.taken = len(req.payloads)
        self._depth_changed()

    def _limit(self, key: Key) -> int:
        cap = self._background_cap(key)
        return min(self.effective_max_batch_size, cap or self.effective_max_batch_size)

    def _target(self, key: Key, limit: int, now: float) -> int:
        """Items worth waiting for in ``key`` (at least 1, at most ``limit``): those queued plus those on their
        way back (answered lately, not matched by an arrival yet)."""
        return max(1, min(limit, self._lane_items.get(key, 0) + self.on_their_way_back(key, now)))

    def return_horizon(self, key: Key) -> float:
        """How long an answered item in lane ``key`` is expected back: two windows and two batches."""
        return 2 * (self.coalesce_s + self._last_batch_s.get(key, 0.0))

    def on_their_way_back(self, key: Key, now: float) -> int:
        """Items answered in lane ``key`` within ``return_horizon`` that no arrival has matched yet."""
        answers = self._returning.get(key)
        if not answers:
            return 0
        horizon = now - self.return_horizon(key)
        while answers and answers[0][0] < horizon:
            answers.popleft()
        return int(sum(a[1] for a in answers))

    def _came_back(self, key: Key, n: int) -> None:
        """``n`` items arrived in lane ``key``: they match the oldest answers still expected back."""
        answers = self._returning.get(key)
        while answers and n > 0:
            matched = min(n, int(answers[0][1]))
            answers[0][1] -= matched
            n -= matched
            if answers[0][1] <= 0:
                answers.popleft()

    def _choose(self, now: float) -> tuple[Key, int] | float | None:
        """The lane to take a batch from now and its size limit; else how long to wait (``None``: until poked)."""
        lanes = self._lanes(now)
        if not lanes:
            return None
        busy = self._running or bool(self._ready) or bool(self._handoff)
        wait: float | None = None
        top = lanes[0][0]
        for key in lanes:
            if key[0] != top:
                break  # lower priorities wait for a coalescing higher one (bounded by coalesce_s)
            if key[0] > 0 and (held := self._held(now)) is not None:
                return held
            limit = self._limit(key)
            if self._full(key, limit):
                return key, limit
            if busy and not (key[0] == 0 and self._background_runs_next()):
                # The model is busy: only a full batch is worth preparing ahead (or a query's), but not one of a
                # younger lane: with every lane at one priority (MMSEARCH_QUERY_PRIORITY=false), a full document
                # lane was prepared ahead of an older partial query lane batch after batch, and the query waited
                # until its queue timeout.
                break
            due = self._coalesce_wait(key, limit, now)
            if due <= 0:
                return key, limit
            wait = due if wait is None else min(wait, due)
        return wait

    def _lanes(self, now: float) -> list[Key]:
        """The lanes with queued items (expired ones pruned first), by priority then by their oldest request; a
        hold of background batches ends once no query request is in flight."""
        for key in self._queues:
            self._prune(key, now)
        if self._gate is None or not self._gate.busy:
            self._hold_until = None
        return sorted((k for k, q in self._queues.items() if q), key=lambda k: (k[0], self._queues[k][0].enqueued))

    def _coalesce_wait(self, key: Key, limit: int, now: float) -> float:
        """How long lane ``key``'s partial batch may still wait for more items (``<= 0``: take it now): until it
        reaches its target size, at most ``coalesce_s`` after the model went idle or its oldest request came."""
        if self.coalesce_s <= 0 or self._lane_items[key] >= self._target(key, limit, now):
            return 0.0
        deadline = max(self._idle_since, self._queues[key][0].enqueued) + self.coalesce_s
        if now >= deadline:
            self.stats.coalesce_timeouts += 1
        return deadline - now

    def _held(self, now: float) -> float | None:
        """How long background batches wait now, or ``None``: while a query request is in flight but not queued
        yet (still parsing or fetching), they are held until it is queued or done, at most ``max_hold_s`` in all."""
        if self._gate is None or not self._gate.busy:
            return None
        if self._hold_until is None:
            self._hold_until = now + self._gate.max_hold_s
            self._gate.note_hold("batch")
        return self._hold_until - now if now < self._hold_until else None

    def _full(self, key: Key, limit: int) -> bool:
        """Lane ``key`` holds a whole batch: ``limit`` items, or items costing the whole cost budget."""
        return self._lane_items[key] >= limit or self._cost_full(key)

    def _cost_full(self, key: Key) -> bool:
        """The items queued in lane ``key`` cost a whole batch's budget (checked when fewer than a batch's count
        are queued: a scan of less than one batch)."""
        total = 0.0
        for req in self._queues[key]:
            if req.costs is not None and not req.cancelled:
                total += sum(req.costs[req.taken :])
                if total >= self.effective_max_batch_cost:
                    return True
        return False

    def _background_runs_next(self) -> bool:
        """The model would run a document batch next: a query batch prepared now, even partial, goes first.
        Behind a query batch, a partial query batch is not prepared ahead: when the model frees up, coalescing
        decides how many of the answered clients to wait for (preparing it ahead split closed-loop query
        clients into groups that alternate)."""
        waiting = self._ready + self._handoff
        if waiting:
            return all(b.key[0] > 0 for b in waiting)
        running = self._running_key
        return running is not None and running[0] > 0

    @staticmethod
    def _fit(req: _Request[T, R], room: int, budget: float) -> tuple[int, float]:
        """How many of ``req``'s next items fit in ``room`` items and ``budget`` of cost, and their cost."""
        n = min(req.remaining, room)
        if req.costs is None:
            return n, 0.0
        spent = 0.0
        for k, c in enumerate(req.costs[req.taken : req.taken + n]):
            if spent + c > budget:
                return k, spent
            spent += c
        return n, spent

    def _take(self, key: Key, limit: int) -> _Batch[T, R]:
        """Up to ``limit`` items of lane ``key`` costing at most the cost budget: whole requests in queue order
        where they fit (a request that does not fit waits for the next batch, which it heads); a request larger
        than a batch is split; an item over the cost budget alone heads a batch of its own."""
        queue = self._queues[key]
        batch: _Batch[T, R] = _Batch(key, [], [], [])
        room, budget = limit, self.effective_max_batch_cost
        kept: list[_Request[T, R]] = []
        while queue and room > 0 and budget > 0:
            req = queue.popleft()
            if req.cancelled:
                self._queued -= req.remaining
                self._lane_items[key] -= req.remaining
                continue
            take, spent = self._fit(req, room, budget)
            if take < req.remaining and (batch.payloads or kept):
                kept.append(req)  # does not fit: try the requests behind it
                if len(kept) >= 64:
                    break
                continue
            if take == 0 and req.costs is not None:  # its next item alone is over the cost budget: it runs alone
                take, spent = 1, req.costs[req.taken]
            batch.payloads.extend(req.payloads[req.taken : req.taken + take])
            batch.futures.extend(req.futures[req.taken : req.taken + take])
            req.taken += take
            room -= take
            budget -= spent
            if req.remaining:
                kept.append(req)
            else:
                batch.finished.append(req)
        queue.extendleft(reversed(kept))
        size = len(batch.payloads)
        self._queued -= size
        self._lane_items[key] -= size
        self._depth_changed()
        return batch

    # --- the two stages --------------------------------------------------------------------------------------

    def _may_prepare(self) -> bool:
        """Room in the prepared slot: one batch ahead; a query batch may go ahead of prepared document batches."""
        waiting = self._ready + self._handoff
        if not waiting:
            if self._running and self._gate is not None and self._gate.recently_active():
                # queries around: do not commit a document batch ahead of one that may arrive
                return self._best_priority() == 0
            return True
        return all(b.key[0] > 0 for b in waiting) and self._best_priority() == 0

    def _best_priority(self) -> int | None:
        prios = [k[0] for k, q in self._queues.items() if q and not q[0].cancelled]
        return min(prios) if prios else None

    async def _form(self) -> None:
        """Stage 1: choose and take batches; prepare them here while the model is busy (in the preprocessing
        thread, overlapped with the forward pass), else leave that to the model thread (no extra hop)."""
        assert self._wakeup is not None and self._model_wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            self._wakeup.clear()
            choice = self._choose(time.monotonic()) if self._may_prepare() else None
            if choice is None:
                await self._wakeup.wait()
                continue
            if isinstance(choice, float):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), choice)
                continue
            key, limit = choice
            self._hold_until = None
            batch = self._take(key, limit)
            if not batch.payloads:
                continue
            if self._running and self._prepare is not None:
                self.stats.prepared_ahead += 1
                self._preparing = key
                try:
                    batch.prepared = await loop.run_in_executor(
                        self._prep_executor, self._prepare_locked, key[1], batch.payloads
                    )
                    batch.is_prepared = True
                except Exception as e:  # a bad input or a bug: fail this batch, keep serving
                    log.exception("preparing a batch failed")
                    batch.error = e
                finally:
                    self._preparing = None
            self._hand_over(batch)
            del batch  # its payloads (decoded images) must not stay alive while this loop waits

    def _prepare_locked(self, lane: Hashable, payloads: list[T]) -> Any:
        if self._prepare is None:
            return payloads
        with self._prep_lock:
            return self._prepare(lane, payloads)

    def _hold_background(self, batch: _Batch[T, R]) -> bool:
        """A prepared document batch waits (bounded) for a query batch being prepared or a query request in
        flight, so that preparing ahead never puts a document batch before a query."""
        now = time.monotonic()
        preparing_query = self._preparing is not None and self._preparing[0] == 0
        gate_busy = self._gate is not None and self._gate.busy
        if not (preparing_query or gate_busy):
            return False
        if batch.held_until == 0.0:
            batch.held_until = now + (self._gate.max_hold_s if self._gate is not None and gate_busy else 0.05)
            if gate_busy and self._gate is not None:
                self._gate.note_hold("batch")
        return now < batch.held_until

    async def _next_ready(self) -> _Batch[T, R]:
        """The highest-priority prepared batch, once no hold applies to it."""
        assert self._model_wakeup is not None
        while True:
            if self._ready:
                batch = min(self._ready, key=lambda b: b.key[0])
                if batch.key[0] == 0 or not self._hold_background(batch):
                    self._ready.remove(batch)
                    if not all(f.done() for f in batch.futures):
                        return batch
                    continue  # every request in it was cancelled while it waited
                timeout: float | None = max(batch.held_until - time.monotonic(), 0.0)
            else:
                timeout = None
            self._model_wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._model_wakeup.wait(), timeout)

    async def _run_batches(self) -> None:
        """Stage 2: run batches on the model, the highest priority first. The model thread takes batches
        handed over while it runs (``_handoff``) without a round trip through the event loop."""
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_ready()
            self._running, self._running_key = True, batch.key
            self._poke()  # the slot is free: the next batch may be prepared while this one runs
            try:
                await loop.run_in_executor(self._executor, self._execute_chain, batch, loop)
            finally:
                self._running, self._running_key = False, None
            del batch  # nor here: the last batch's payloads would live until the next one
            with self._handoff_lock:  # handed over after the model thread stopped looking: back in line
                self._ready.extend(self._handoff)
                self._handoff.clear()
            if not self._ready:
                self._idle_since = time.monotonic()
            self._poke()

    def _hand_over(self, batch: _Batch[T, R]) -> None:
        """Give a prepared batch to the model: straight to the running model thread when no hold applies."""
        if self._running and (batch.key[0] == 0 or not self._hold_background(batch)):
            with self._handoff_lock:
                self._handoff.append(batch)
        else:
            self._ready.append(batch)
            assert self._model_wakeup is not None
            self._model_wakeup.set()

    def _execute_chain(self, batch: _Batch[T, R] | None, loop: asyncio.AbstractEventLoop) -> None:
        """In the model thread: run ``batch``, then every batch handed over meanwhile; answers go to the loop."""
        while batch is not None:
            self._running_key = batch.key
            started = time.perf_counter()
            outcomes = self._execute(batch)
            elapsed = time.perf_counter() - started
            with self._handoff_lock:  # take the next one before answering, so the slot frees before the poke
                nxt = min(self._handoff, key=lambda b: b.key[0]) if self._handoff else None
                if nxt is not None:
                    self._handoff.remove(nxt)
            loop.call_soon_threadsafe(self._deliver, batch, outcomes, elapsed)
            batch = nxt

    def _deliver(self, batch: _Batch[T, R], outcomes: list[R | BaseException], elapsed: float) -> None:
        """On the loop: answer a batch's items and learn from it."""
        # closed-loop clients resend when answered: expect back the items of the requests this batch finished
        returning = sum(len(r.payloads) for r in batch.finished)
        if returning and self.coalesce_s > 0:
            self._returning.setdefault(batch.key, deque()).append([time.monotonic(), float(returning)])
        self._last_batch_s[batch.key] = elapsed
        self.on_their_way_back(batch.key, time.monotonic())  # forget the expired ones (bounded memory)
        if batch.error is None:
            self._learn(batch.key, len(batch.payloads), elapsed)
            if self._on_batch is not None:
                self._on_batch(batch.key[1], len(batch.payloads), elapsed)
        for f, out in zip(batch.futures, outcomes, strict=True):
            if f.done():
                continue
            if isinstance(out, BaseException):
                f.set_exception(out)
            else:
                f.set_result(out)
        self._poke()

    def _execute(self, batch: _Batch[T, R]) -> list[R | BaseException]:
        """In the model thread: prepare the batch if that was not done ahead, then run it."""
        if batch.error is not None:
            return [batch.error] * len(batch.payloads)
        if all(f.done() for f in batch.futures):
            return [DeadlineExceeded("cancelled")] * len(batch.payloads)  # nobody is waiting any more
        lane = batch.key[1]
        try:
            prepared = batch.prepared if batch.is_prepared else self._prepare_locked(lane, batch.payloads)
            return self._run_splitting(lane, batch.payloads, prepared)
        except Exception as e:  # a bad input or a bug in run(): fail this batch, keep serving
            log.exception("model batch failed")
            return [e] * len(batch.payloads)

    def _background_cap(self, key: Key) -> int | None:
        """While queries keep arriving, size a background batch to take ``background_budget`` query batches.

        A batch cannot be interrupted, so this bounds how long a query that arrives mid-batch waits behind it.
        ``None`` (no cap) when the lane is a query lane, no query was seen lately, or nothing is measured yet.
        """
        if key[0] == 0 or self._gate is None or not self._gate.recently_active():
            return None
        per_item = self._item_s.get(key[1])
        if per_item is None or self._query_batch_s is None:
            return None
        return max(1, int(self._background_budget * self._query_batch_s / per_item))

    def _learn(self, key: Key, size: int, seconds: float, alpha: float = 0.2) -> None:
        """Update the moving averages: seconds per query batch, and seconds per item in each lane."""
        if key[0] == 0:
            q = self._query_batch_s
            self._query_batch_s = seconds if q is None else (1 - alpha) * q + alpha * seconds
        per_item = seconds / size
        prev = self._item_s.get(key[1])
        self._item_s[key[1]] = per_item if prev is None else (1 - alpha) * prev + alpha * per_item

    def _run_splitting(self, lane: Hashable, payloads: list[T], prepared: Any) -> list[R | BaseException]:
        """Run one batch; on out-of-memory split it in halves (recursively, preparing each half again) and
        lower the batch size."""
        try:
            results = list(self._run(lane, prepared))
        except Exception as e:
            if not self._is_oom(e):
                raise
            self.stats.oom_splits += 1
            if len(payloads) == 1:
                return [ItemTooLarge("this input does not fit in model memory even alone")]
            half = len(payloads) // 2
            self._lower_limits(payloads, half)
            out: list[R | BaseException] = []
            for part in (payloads[:half], payloads[half:]):
                out += self._run_splitting(lane, part, self._prepare_locked(lane, part))
            return out
        if len(results) != len(payloads):
            raise RuntimeError(f"model returned {len(results)} results for {len(payloads)} inputs")
        self.stats.record(len(payloads))
        return list(results)

    def _lower_limits(self, payloads: list[T], half: int) -> None:
        """After an out-of-memory error at ``payloads``: a batch with a cost lowers the cost budget to its larger
        half's cost, any other batch the max batch size to ``half``."""
        halves = self._costs(payloads[:half]), self._costs(payloads[half:])
        if halves[0] is None and halves[1] is None:
            self.effective_max_batch_size = max(1, min(self.effective_max_batch_size, half))
            log.warning("out of memory at batch %d: split, max batch now %d", len(payloads), half)
            return
        larger = max(sum(h or ()) for h in halves)
        self.effective_max_batch_cost = min(self.effective_max_batch_cost, larger)
        log.warning(
            "out of memory at batch %d costing %.3f: split, cost budget now %.3f",
            len(payloads),
            sum(sum(h or ()) for h in halves),
            self.effective_max_batch_cost,
        )

    async def aclose(self) -> None:
        for task in (self._worker, self._runner):
            if task is not None:
                task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._prep_executor.shutdown(wait=False, cancel_futures=True)
