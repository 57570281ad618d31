"""What every model service shares: settings, the media loader, the micro-batcher, its lanes and its metrics."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

import numpy as np
from mmsearch_schema.wire import InputType, Item

from service.adapters import ModelAdapter
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
from service.faults import oom_check
from service.inputs import ModelInput, item_paths, resolve_items
from service.media import MediaLoader
from service.metrics import get_metrics
from service.models import is_oom
from service.pixels import Lease
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


def media_cost(settings: Settings) -> Callable[[Any], float]:
    """An item's share of a model batch's cost budget (``MicroBatcher``'s ``cost``), from the sentence-transformers
    input a lane runs (``ModelInput.to_st`` / ``to_pair_st``; a pair costs its two sides): video, its sampled
    frames x pixels per frame over ``max_batch_video_pixels``; audio, its samples over ``max_batch_audio_samples``;
    anything else 0 (text and images are bounded by the batch's item count; images are resized to the model's pixel
    budget before the model sees them)."""
    video, audio = settings.max_batch_video_pixels, settings.max_batch_audio_samples

    def cost(payload: Any) -> float:
        if isinstance(payload, tuple):
            return sum(cost(p) for p in payload)
        if not isinstance(payload, dict):
            return 0.0
        share = 0.0
        if "video" in payload:  # (frames, height, width, 3)
            share += int(np.prod(np.shape(_array(payload["video"]))[:-1])) / video
        if "audio" in payload:  # (samples,)
            share += int(np.shape(_array(payload["audio"]))[-1]) / audio
        return share

    return cost


def _array(media: Any) -> Any:
    """The array of an audio or video input: ``{"array": ...}`` (``to_st``) or bare (``to_pair_st``)."""
    return media["array"] if isinstance(media, dict) else media


def media_loader(service: str, settings: Settings, gate: PriorityGate) -> MediaLoader:
    """The media loader of one service: document decodes wait at ``gate`` behind in-flight queries, and every
    fetch/decode refusal is counted by reason (``mmsearch_refusals_total{service=...}``)."""
    loader = MediaLoader(settings)
    loader.gate = gate
    refusals = get_metrics().refusals
    loader.on_refusal = lambda reason: refusals.labels(service, reason).inc()
    return loader


class ModelRuntime(Generic[T, R]):
    """Batches model calls for one model of a service and records what the model actually received.

    The batcher prepares a batch with ``adapter.prepare`` in its preprocessing thread and runs it with
    ``adapter.run`` in the model thread (``service.adapters``).
    """

    def __init__(
        self,
        service: str,
        settings: Settings,
        adapter: ModelAdapter,
        *,
        max_batch_size: int | None = None,
        max_queue_wait_ms: int | None = None,
        max_queue_size: int | None = None,
        gate: PriorityGate | None = None,
        loader: MediaLoader | None = None,
        model: str | None = None,
    ):
        """``max_batch_size`` / ``max_queue_wait_ms`` / ``max_queue_size``: when the model's own limit differs from
        ``MMSEARCH_MAX_BATCH_SIZE`` / ``MMSEARCH_MAX_QUEUE_WAIT_MS`` / ``MMSEARCH_MAX_QUEUE_SIZE`` (the Reader's
        ``MMSEARCH_OCR_*``, a model repository entry's). ``gate`` and ``loader``: the service's, shared by every
        model it hosts (queries keep priority across models; one pixel budget); default: new ones. ``model``: the
        ``model`` label of its metrics (default: the adapter's name)."""
        self.service = service
        self.settings = settings
        self.adapter = adapter
        self.model = model or adapter.name
        self.metrics = get_metrics()
        self.gate = gate or PriorityGate.for_service(settings, service)
        # document images decode after in-flight queries
        self.loader = loader or media_loader(service, settings, self.gate)
        fault = oom_check(settings)  # test-only; None in production, which then runs the adapter's own calls
        prepare: Any = adapter.prepare
        run: Any = adapter.run
        if fault is not None:

            def prepare(lane: Hashable, inputs: list[T]) -> tuple[list[T], Any]:
                return inputs, adapter.prepare(lane, inputs)

            def run(lane: Hashable, prepared: tuple[list[T], Any]) -> Sequence[R]:
                fault(prepared[0])
                return adapter.run(lane, prepared[1])

        self.batcher: MicroBatcher[T, R] = MicroBatcher(
            run,
            prepare=prepare,
            coalesce_s=settings.coalesce_s(adapter.accelerated),
            max_batch_size=max_batch_size or settings.max_batch_size,
            max_queue_size=max_queue_size or settings.max_queue_size,
            max_wait_s=(max_queue_wait_ms or settings.max_queue_wait_ms) / 1000,
            is_oom=is_oom,
            on_batch=self._observe,
            on_depth=self.metrics.queue_depth.labels(service, self.model).set,
            gate=self.gate,
            background_budget=settings.query_priority_batch_budget,
            cost=media_cost(settings),
            name=service,
        )

        if adapter.threads is not None:
            self.metrics.model_threads.labels(service).set(adapter.threads.threads)

    def info(self) -> dict[str, Any]:
        """Batching and threading facts for ``/info``."""
        b = self.batcher
        return {
            "max_batch_size": b.max_batch_size,
            "effective_max_batch_size": b.effective_max_batch_size,
            # the cost budget per batch (lowered with the effective one after an out-of-memory error)
            "max_batch_video_pixels": int(self.settings.max_batch_video_pixels * b.effective_max_batch_cost),
            "max_batch_audio_samples": int(self.settings.max_batch_audio_samples * b.effective_max_batch_cost),
            "batch_coalesce_ms": round(b.coalesce_s * 1000, 3),
            "accelerated": self.adapter.accelerated,
            "torch_threads": self.adapter.threads.as_dict() if self.adapter.threads is not None else None,
        }

    def _observe(self, lane: Hashable, size: int, seconds: float) -> None:
        label = "/".join(map(str, lane)) if isinstance(lane, tuple) else str(lane)
        self.metrics.model_batch_size.labels(self.service, label, self.model).observe(size)
        self.metrics.model_batch_seconds.labels(self.service, label, self.model).observe(seconds)

    def count_input(self, modality: str, input_type: str) -> None:
        """``mmsearch_inputs_total{service, modality, input_type, model}``."""
        self.metrics.inputs.labels(self.service, modality, input_type, self.model).inc()

    def scope(self, input_type: InputType) -> contextlib.AbstractAsyncContextManager[Any]:
        """Around a request's work: a query marks itself in flight, so document work yields to it at every stage."""
        return self.gate.interactive() if input_type == "query" else contextlib.nullcontext()

    async def resolve(
        self,
        items: Sequence[str | Item],
        *,
        field: str,
        supported: Sequence[str],
        model: str,
        input_type: InputType,
        lease: Lease | None = None,
    ) -> list[ModelInput]:
        """Validate ``field``'s items and fetch/decode their images under the media policy (documents: as background
        work; ``lease`` holds the decoded pixels' budget until the request ends)."""
        return await resolve_items(
            items,
            paths=item_paths(field, len(items)),
            loader=self.loader,
            settings=self.settings,
            supported=supported,
            model=model,
            background=input_type == "document",
            lease=lease,
        )

    def refused(self, reason: str) -> None:
        self.metrics.refusals.labels(self.service, reason).inc()

    async def run_lanes(
        self, payloads: Sequence[tuple[Hashable, T]], *, priority: int, timeout: float | None = None
    ) -> list[R]:
        """Run ``(lane, payload)`` pairs, one batcher submission per lane, the lanes concurrently; results in input
        order. A model batch holds one lane only (one prompt, one modality or modality pair)."""
        by_lane: dict[Hashable, list[int]] = {}
        for i, (lane, _) in enumerate(payloads):
            by_lane.setdefault(lane, []).append(i)
        lanes = list(by_lane.items())
        results = await asyncio.gather(
            *(self.run(lane, [payloads[i][1] for i in idx], priority=priority, timeout=timeout) for lane, idx in lanes)
        )
        out: list[R | None] = [None] * len(payloads)
        for (_, idx), got in zip(lanes, results, strict=True):
            for i, r in zip(idx, got, strict=True):
                out[i] = r
        return out  # type: ignore[return-value]  # every index is in exactly one lane

    async def run(
        self, lane: Hashable, payloads: Sequence[T], *, priority: int, timeout: float | None = None
    ) -> list[R]:
        """Run payloads through the batcher; refusals become ``ApiError``s."""
        deadline = time.monotonic() + timeout if timeout else None
        if not self.settings.query_priority:
            priority = DOCUMENT_PRIORITY
        try:
            return await self.batcher.submit(lane, payloads, priority=priority, deadline=deadline)
        except BatchError as e:
            err = batch_error_to_api(e)
            self.refused(err.code)
            raise err from None
