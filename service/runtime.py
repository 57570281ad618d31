"""What every model service shares: settings, the media loader, the micro-batcher and its metrics."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

from service.batching import (
    BatchError,
    DeadlineExceeded,
    ItemTooLarge,
    MicroBatcher,
    Overloaded,
    QueueTimeout,
)
from service.config import Settings
from service.errors import ApiError
from service.media import MediaLoader
from service.metrics import get_metrics
from service.models import is_oom
from service.priority import PriorityGate

T = TypeVar("T")
R = TypeVar("R")

QUERY_PRIORITY = 0
DOCUMENT_PRIORITY = 1


def batch_error_to_api(e: BatchError) -> ApiError:
    """Map a batcher refusal to its HTTP answer."""
    if isinstance(e, Overloaded):
        return ApiError(429, "overloaded", str(e), retry_after=1)
    if isinstance(e, QueueTimeout):
        return ApiError(503, "queue_timeout", str(e), retry_after=2)
    if isinstance(e, DeadlineExceeded):
        return ApiError(504, "deadline_exceeded", str(e))
    if isinstance(e, ItemTooLarge):
        return ApiError(413, "input_too_large", str(e))
    return ApiError(503, "unavailable", str(e), retry_after=1)


class ModelRuntime(Generic[T, R]):
    """Batches model calls for one service and records what the model actually received."""

    def __init__(self, service: str, settings: Settings, run: Callable[[Hashable, list[T]], Sequence[R]]):
        self.service = service
        self.settings = settings
        self.loader = MediaLoader(settings)
        self.metrics = get_metrics()
        self.loader.on_refusal = self.refused  # fetch/decode failures by reason
        self.gate = PriorityGate.for_service(settings, service)
        self.loader.gate = self.gate  # document images decode after in-flight queries
        self.batcher: MicroBatcher[T, R] = MicroBatcher(
            run,
            max_batch_size=settings.max_batch_size,
            max_queue_size=settings.max_queue_size,
            max_wait_s=settings.max_latency_ms / 1000,
            is_oom=is_oom,
            on_batch=self._observe,
            gate=self.gate,
            background_budget=settings.query_priority_batch_budget,
            name=service,
        )

    def _observe(self, lane: Hashable, size: int, seconds: float) -> None:
        label = "/".join(map(str, lane)) if isinstance(lane, tuple) else str(lane)
        self.metrics.model_batch_size.labels(self.service, label).observe(size)
        self.metrics.model_batch_seconds.labels(self.service, label).observe(seconds)

    def refused(self, reason: str) -> None:
        self.metrics.refusals.labels(self.service, reason).inc()

    async def run(
        self, lane: Hashable, payloads: Sequence[T], *, priority: int, timeout: float | None = None
    ) -> list[R]:
        """Run payloads through the batcher; refusals become ``ApiError``s."""
        deadline = time.monotonic() + timeout if timeout else None
        if not self.settings.query_priority:
            priority = DOCUMENT_PRIORITY
        self.metrics.queue_depth.labels(self.service).set(self.batcher.queued)
        try:
            return await self.batcher.submit(lane, payloads, priority=priority, deadline=deadline)
        except BatchError as e:
            err = batch_error_to_api(e)
            self.refused(err.code)
            raise err from None
        finally:
            self.metrics.queue_depth.labels(self.service).set(self.batcher.queued)
