"""Query-first scheduling of the CPU work around the model, not only of the model queue.

The batcher runs queued query inputs before queued document inputs. On a small CPU box that alone is not enough:
a bulk ingest also decodes images and starts document batches back to back, and all of it shares the cores (and
the GIL) with the query's own parsing, preprocessing and forward pass. ``PriorityGate`` closes the gap:

* while an interactive (query) request is in flight, background work (decoding a document image, starting a
  document model batch) waits for it. A wait never exceeds ``max_hold_s``, so a steady stream of queries slows an
  ingest down but cannot stall it;
* while queries keep arriving (one seen within ``recent_s``), the batcher sizes document batches to take about as
  long as a query batch, so a query that arrives mid-batch waits little behind it. With no queries around,
  document batches are full size again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from service.config import Settings


class PriorityGate:
    """Counts interactive requests in flight; background work yields to them (bounded)."""

    def __init__(
        self, max_hold_s: float, recent_s: float = 1.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """``clock``: what "recently" is measured on (a test steps a fake one instead of sleeping)."""
        self.max_hold_s = max_hold_s
        self.recent_s = recent_s
        self._clock = clock
        self._active = 0
        self._last_seen = -float("inf")
        self._clear = asyncio.Event()
        self._clear.set()
        self._on_clear: list[Callable[[], None]] = []
        self.on_hold: Callable[[str], None] | None = None
        """Called with the stage (``decode``, ``batch``) each time background work waits (a metric)."""

    @classmethod
    def for_service(cls, settings: Settings, service: str) -> PriorityGate:
        """The gate ``settings`` ask for (disabled with ``query_priority`` off), counting its holds as
        ``mmsearch_priority_holds_total{service=...}``."""
        from service.metrics import get_metrics

        gate = cls(settings.query_priority_max_hold_ms / 1000 if settings.query_priority else 0)
        holds = get_metrics().priority_holds
        gate.on_hold = lambda stage: holds.labels(service, stage).inc()
        return gate

    @property
    def enabled(self) -> bool:
        return self.max_hold_s > 0

    @property
    def busy(self) -> bool:
        """An interactive request is in flight (and the gate is enabled)."""
        return self.enabled and self._active > 0

    def recently_active(self) -> bool:
        """An interactive request is in flight or finished within ``recent_s``."""
        return self.enabled and (self._active > 0 or self._clock() - self._last_seen < self.recent_s)

    @contextlib.asynccontextmanager
    async def interactive(self) -> AsyncIterator[None]:
        """Mark an interactive request in flight for the duration of the block."""
        self._active += 1
        self._clear.clear()
        try:
            yield
        finally:
            self._active -= 1
            self._last_seen = self._clock()
            if self._active == 0:
                self._clear.set()
                for fn in self._on_clear:
                    fn()

    def add_clear_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` (on the event loop) whenever the last in-flight interactive request finishes."""
        self._on_clear.append(fn)

    def note_hold(self, stage: str) -> None:
        if self.on_hold is not None:
            self.on_hold(stage)

    async def background_turn(self, stage: str = "decode") -> None:
        """Return at once when no interactive request is in flight, else when none is or ``max_hold_s`` passed."""
        if not self.busy:
            return
        self.note_hold(stage)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._clear.wait(), self.max_hold_s)
