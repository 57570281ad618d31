"""Index maintenance off the request path: one daemon thread per index runs each collection's upkeep (ANN index
build, compaction, folding new rows into the indexes) after writes, never inside them.

Writers only call :meth:`Maintenance.wrote` (a counter under a condition variable: it never waits for the work).
The thread runs ``work(name, writes, failures)`` for each collection written since its last pass, at most once per
``interval_s`` per collection: ``writes`` counts the writes since the last pass that returned ``True`` (a
compaction), ``failures`` the failed passes in a row. A failed pass is logged and retried after a backoff that
doubles from ``retry_s`` up to ``max_retry_s``, even if no write comes (a build that failed is tried again).
:meth:`close` stops the thread (a pass in progress finishes first).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("service.index.maintenance")

Work = Callable[[str, int, int], bool]
"""``work(name, writes, failures)``: maintain one collection; ``True`` when it compacted (the write count restarts)."""


@dataclass
class _Collection:
    writes: int = 0
    """Writes since the last pass that compacted."""
    failures: int = 0
    """Failed passes in a row."""
    due: bool = False
    """A pass is wanted (a write since the last pass started, or a failed pass to retry)."""
    not_before: float = 0.0
    """Monotonic time before which no pass starts (the interval between passes, or a failure's backoff)."""


class Maintenance:
    """Schedules ``work`` for collections that were written, on one daemon thread (see the module docstring)."""

    def __init__(
        self,
        work: Work,
        *,
        thread_name: str = "index-maintenance",
        interval_s: float = 0.5,
        retry_s: float = 0.5,
        max_retry_s: float = 60.0,
    ) -> None:
        self._work = work
        self._thread_name = thread_name
        self.interval_s = interval_s
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self._collections: dict[str, _Collection] = {}
        self._running: str | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.passes = 0
        """Passes run (successful or not), for tests and logs."""

    def wrote(self, name: str) -> None:
        """A write to ``name`` was committed: count it and ask for a pass. Never waits for maintenance work."""
        with self._cond:
            if self._closed:
                return
            state = self._collections.setdefault(name, _Collection())
            state.writes += 1
            state.due = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def forget(self, name: str) -> None:
        """The collection is gone (dropped): no pass for it until it is written again."""
        with self._cond:
            self._collections.pop(name, None)
            self._cond.notify_all()

    def _next(self) -> tuple[str, int, int] | None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                due = [(s.not_before, n) for n, s in self._collections.items() if s.due]
                ready = [n for t, n in sorted(due) if t <= now]
                if ready:
                    state = self._collections[ready[0]]
                    state.due = False
                    self._running = ready[0]
                    return ready[0], state.writes, state.failures
                self._cond.wait(min(t for t, _ in due) - now if due else None)
            return None

    def _run(self) -> None:
        while (job := self._next()) is not None:
            name, writes, failures = job
            try:
                t0 = time.monotonic()
                compacted = self._work(name, writes, failures)
                log.debug("collection %r maintained in %.2f s", name, time.monotonic() - t0)
            except Exception as e:
                with self._cond:
                    state = self._collections.get(name)
                    if state is not None:
                        state.failures += 1
                        delay = min(self.retry_s * 2 ** (state.failures - 1), self.max_retry_s)
                        state.not_before = time.monotonic() + delay
                        state.due = True
                        log.warning(
                            "background maintenance of collection %r failed (%d in a row), retrying in %.2f s: %s: %s",
                            name,
                            state.failures,
                            delay,
                            type(e).__name__,
                            e,
                        )
            else:
                with self._cond:
                    state = self._collections.get(name)
                    if state is not None:
                        state.failures = 0
                        if compacted:
                            state.writes = max(0, state.writes - writes)
                        state.not_before = time.monotonic() + self.interval_s
            finally:
                with self._cond:
                    self.passes += 1
                    self._running = None
                    self._cond.notify_all()

    def idle(self) -> bool:
        """No pass running or wanted."""
        with self._cond:
            return self._running is None and not any(s.due for s in self._collections.values())

    def wait_idle(self, timeout: float) -> bool:
        """Block until no pass is running or wanted; ``False`` on timeout (e.g. a pass keeps failing)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._running is None and not any(s.due for s in self._collections.values()), timeout
            )

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread: no new pass starts; a pass in progress is waited for up to ``timeout`` (a build cut short
        by the process exiting commits nothing: Lance and Milvus commit an index atomically)."""
        with self._cond:
            self._closed = True
            self._collections.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=timeout)

    @property
    def alive(self) -> bool:
        """Whether the thread is running."""
        thread = self._thread
        return thread is not None and thread.is_alive()
