"""An in-process adaptive micro-batcher for one model.

Why not BentoML's ``batchable=True``: a batchable API takes exactly one argument, cannot keep text and images in
separate model batches, cannot serve queries before bulk documents, and cannot split a batch that runs out of
memory. This batcher does all four (the design Infinity uses):

* Requests are split into items; items wait in *lanes* (e.g. ``("query", "image")``). A model batch only ever
  holds items of one lane, so CLIP never sees mixed text/image batches and each batch has one prompt.
* Lanes have a priority (lower runs first): interactive queries overtake queued bulk documents. With a
  ``PriorityGate`` (``service.priority``) document batches also wait for a query request that is still being
  parsed, and are kept short while queries keep arriving.
* One worker runs the model in a dedicated thread. While a batch runs, new items queue up; the next batch takes
  up to ``max_batch_size`` of them at once. Batches therefore grow with load and stay at 1 when idle (no
  artificial wait), and the event loop stays free to fetch and decode media in parallel.
* Bounded: more than ``max_queue_size`` waiting items -> ``Overloaded`` (429); an item waiting longer than
  ``max_wait_s`` -> ``QueueTimeout`` (503); past the request's deadline -> ``DeadlineExceeded`` (504).
* Out of memory: the batch is split in halves and retried; the effective max batch size is lowered; a single item
  that still does not fit fails alone with ``ItemTooLarge`` (413) and everything else is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from service.priority import PriorityGate

log = logging.getLogger("mmsearch.batching")

T = TypeVar("T")
R = TypeVar("R")


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
class _Pending(Generic[T, R]):
    payload: T
    future: asyncio.Future[R]
    enqueued: float
    deadline: float | None


@dataclass
class BatchStats:
    """Counters the service exports as metrics."""

    batches: int = 0
    items: int = 0
    oom_splits: int = 0


class MicroBatcher(Generic[T, R]):
    """Batch items from concurrent requests into model calls of one lane each.

    ``run(lane, payloads)`` is called in a worker thread and must return one result per payload, in order.
    """

    def __init__(
        self,
        run: Callable[[Hashable, list[T]], Sequence[R]],
        *,
        max_batch_size: int,
        max_queue_size: int,
        max_wait_s: float,
        is_oom: Callable[[BaseException], bool] = lambda e: False,
        on_batch: Callable[[Hashable, int, float], None] | None = None,
        gate: PriorityGate | None = None,
        background_budget: float = 1.0,
        name: str = "model",
    ) -> None:
        self._run = run
        self.max_batch_size = max_batch_size
        self.effective_max_batch_size = max_batch_size
        self._max_queue_size = max_queue_size
        self._max_wait_s = max_wait_s
        self._is_oom = is_oom
        self._on_batch = on_batch
        self._gate = gate
        self._background_budget = background_budget
        if gate is not None:
            gate.add_clear_listener(self._poke)
        self._query_batch_s: float | None = None  # moving averages of model time, for sizing document batches
        self._item_s: dict[Hashable, float] = {}
        self._queues: dict[tuple[int, Hashable], deque[_Pending[T, R]]] = {}
        self._queued = 0
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-batch")
        self.stats = BatchStats()

    @property
    def queued(self) -> int:
        """Items waiting (not counting the batch that is running)."""
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
        now = time.monotonic()
        queue = self._queues.setdefault((priority, lane), deque())
        pending = [_Pending(p, loop.create_future(), now, deadline) for p in payloads]
        queue.extend(pending)
        self._queued += len(pending)
        assert self._wakeup is not None
        self._wakeup.set()
        try:
            return list(await asyncio.gather(*(p.future for p in pending)))
        finally:
            for p in pending:  # a cancelled request frees its queue slots
                if not p.future.done():
                    p.future.cancel()

    def _poke(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._wakeup = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="micro-batcher")

    def _best_lane(self) -> tuple[int, Hashable] | None:
        """The highest-priority non-empty lane (oldest head first), dropping cancelled and expired heads."""
        now = time.monotonic()
        best: tuple[int, float, tuple[int, Hashable]] | None = None
        for key, queue in self._queues.items():
            while queue and self._drop_if_done(queue[0], now):
                queue.popleft()
            if queue:
                rank = (key[0], queue[0].enqueued, key)
                if best is None or rank[:2] < best[:2]:
                    best = rank
        return None if best is None else best[2]

    def _take(self, key: tuple[int, Hashable], cap: int | None = None) -> list[_Pending[T, R]]:
        """Up to the effective batch size (and ``cap``) of live items from the head of lane ``key``."""
        now = time.monotonic()
        queue = self._queues[key]
        batch: list[_Pending[T, R]] = []
        limit = min(self.effective_max_batch_size, cap or self.effective_max_batch_size)
        while queue and len(batch) < limit:
            p = queue.popleft()
            if not self._drop_if_done(p, now):
                self._queued -= 1
                batch.append(p)
        return batch

    def _background_cap(self, key: tuple[int, Hashable]) -> int | None:
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

    def _learn(self, key: tuple[int, Hashable], size: int, seconds: float, alpha: float = 0.2) -> None:
        """Update the moving averages: seconds per query batch, and seconds per item in each lane."""
        if key[0] == 0:
            q = self._query_batch_s
            self._query_batch_s = seconds if q is None else (1 - alpha) * q + alpha * seconds
        per_item = seconds / size
        prev = self._item_s.get(key[1])
        self._item_s[key[1]] = per_item if prev is None else (1 - alpha) * prev + alpha * per_item

    def _drop_if_done(self, p: _Pending[T, R], now: float) -> bool:
        """Remove a cancelled or expired item from the queue accounting; True if it must not run."""
        if p.future.done():
            self._queued -= 1
            return True
        if p.deadline is not None and now > p.deadline:
            self._queued -= 1
            p.future.set_exception(DeadlineExceeded("request deadline passed while queued"))
            return True
        if now - p.enqueued > self._max_wait_s:
            self._queued -= 1
            p.future.set_exception(
                QueueTimeout(f"input waited more than {self._max_wait_s:.1f}s in the queue; retry later")
            )
            return True
        return False

    async def _work(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        hold_until: float | None = None
        while True:
            key = self._best_lane()
            if key is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            gate = self._gate
            if key[0] > 0 and gate is not None and gate.busy:
                # A query request is in flight but not queued yet (still parsing or fetching): hold background
                # batches until it is queued or done, at most ``max_hold_s`` in all.
                if hold_until is None:
                    hold_until = time.monotonic() + gate.max_hold_s
                    gate.note_hold("batch")
                remaining = hold_until - time.monotonic()
                if remaining > 0:
                    self._wakeup.clear()  # set again by a new submission or by the gate clearing
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), remaining)
                    continue
            hold_until = None
            lane, batch = key[1], self._take(key, self._background_cap(key))
            if not batch:
                continue
            started = time.perf_counter()
            try:
                outcomes = await loop.run_in_executor(
                    self._executor, self._run_splitting, lane, [p.payload for p in batch]
                )
            except Exception as e:  # a bug in run(): fail this batch, keep serving
                log.exception("model batch failed")
                outcomes = [e] * len(batch)
            elapsed = time.perf_counter() - started
            self._learn(key, len(batch), elapsed)
            if self._on_batch is not None:
                self._on_batch(lane, len(batch), elapsed)
            for p, out in zip(batch, outcomes, strict=True):
                if p.future.done():
                    continue
                if isinstance(out, BaseException):
                    p.future.set_exception(out)
                else:
                    p.future.set_result(out)

    def _run_splitting(self, lane: Hashable, payloads: list[T]) -> list[R | BaseException]:
        """Run one batch; on out-of-memory split it in halves (recursively) and lower the batch size."""
        try:
            results = list(self._run(lane, payloads))
        except Exception as e:
            if not self._is_oom(e):
                raise
            self.stats.oom_splits += 1
            if len(payloads) == 1:
                return [ItemTooLarge("this input does not fit in model memory even alone")]
            half = len(payloads) // 2
            self.effective_max_batch_size = max(1, min(self.effective_max_batch_size, half))
            log.warning("out of memory at batch %d: split, max batch now %d", len(payloads), half)
            return self._run_splitting(lane, payloads[:half]) + self._run_splitting(lane, payloads[half:])
        if len(results) != len(payloads):
            raise RuntimeError(f"model returned {len(results)} results for {len(payloads)} inputs")
        self.stats.batches += 1
        self.stats.items += len(payloads)
        return list(results)

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
