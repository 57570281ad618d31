"""Decoded-pixel budgets: per request and in flight per worker.

A few kilobytes of PNG can declare tens of megapixels, and a request may carry hundreds of images, so the per-image
pixel cap alone does not bound memory. Every request that decodes images takes a ``Lease`` for the pixels of all
of its images at once (read from their headers, before any pixel is decoded), and holds it until the request is
done with the decoded images (the model has run):

* more than ``max_request_pixels`` in one request -> 413 naming the image that crossed the limit;
* the worker's ``max_inflight_pixels`` taken by other requests -> the request waits in FIFO order for up to
  ``pixel_wait_s``, then gets 503 with Retry-After.

A lease reserves once, for everything its request decodes, so no request ever holds part of the budget while
waiting for more (no deadlock between requests).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Sequence

from service import memory
from service.config import Settings

__all__ = ["Lease", "PixelBudget", "PixelBudgetBusy", "TooManyPixels"]

TRIM_AFTER_PIXELS = 4_000_000
"""Releasing a lease at least this large trims the C heaps (``service.memory.trim``)."""


class TooManyPixels(Exception):
    """One request's images hold more pixels than allowed; ``index`` is the image that crossed the limit."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


class PixelBudgetBusy(Exception):
    """The worker's in-flight pixel budget stayed full for the whole wait."""


class PixelBudget:
    """Decoded pixels held by all requests of one worker (one per process, used on its event loop)."""

    def __init__(self, capacity: int, per_request: int, wait_s: float) -> None:
        self.capacity = capacity
        self.per_request = min(per_request, capacity)
        self.wait_s = wait_s
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @classmethod
    def from_settings(cls, s: Settings) -> PixelBudget:
        return cls(s.max_inflight_pixels, s.max_request_pixels, s.pixel_wait_s)

    async def _acquire(self, n: int) -> None:
        if not self._waiters and self.used + n <= self.capacity:
            self.used += n
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, waiter)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(self.wait_s):
                await waiter
        except TimeoutError:
            if not waiter.done() or waiter.cancelled():
                self._waiters.remove(entry)
                self._wake()
                raise PixelBudgetBusy(
                    f"this worker is decoding {self.capacity} pixels for other requests "
                    f"(MMSEARCH_MAX_INFLIGHT_PIXELS); retry later"
                ) from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release(n)  # granted just as we were cancelled
            elif entry in self._waiters:
                self._waiters.remove(entry)
                self._wake()
            raise

    def release(self, n: int) -> None:
        self.used -= n
        self._wake()
        if n >= TRIM_AFTER_PIXELS:  # the request's images are gone: hand their memory back to the OS
            asyncio.get_running_loop().run_in_executor(None, memory.trim)

    def _wake(self) -> None:
        """Grant waiting reservations in order while they fit (FIFO: a big one is not starved by small ones)."""
        while self._waiters and self.used + self._waiters[0][0] <= self.capacity:
            n, waiter = self._waiters.popleft()
            if waiter.done():
                continue
            self.used += n
            waiter.set_result(None)

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[Lease]:
        """A request's lease; everything it reserved is released when the block ends."""
        lease = Lease(self)
        try:
            yield lease
        finally:
            lease.release()


class Lease:
    """The pixels one request holds."""

    def __init__(self, budget: PixelBudget) -> None:
        self.budget = budget
        self.held = 0
        self._reserved = False

    async def reserve(self, sizes: Sequence[int]) -> None:
        """Reserve the pixels of all of a request's images at once (``sizes``: pixels per image, in order)."""
        if self._reserved:
            raise RuntimeError("a lease reserves once, for all the images of its request")
        self._reserved = True
        total = 0
        for i, n in enumerate(sizes):
            total += n
            if total > self.budget.per_request:
                raise TooManyPixels(
                    f"the images of this request hold more than {self.budget.per_request} decoded pixels together "
                    "(MMSEARCH_MAX_REQUEST_PIXELS)",
                    i,
                )
        if total:
            await self.budget._acquire(total)
            self.held = total

    def release(self) -> None:
        if self.held:
            self.budget.release(self.held)
            self.held = 0
