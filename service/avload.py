"""Audio and video items to model arrays: fetched, planned, reserved, decoded (issue #21, ``/encode`` only).

Four steps per request, after ``service.inputs`` has validated the items: every item's bytes are fetched under
the fetch policy or read from its data URI (``MediaLoader.fetch_av``: ``max_audio_bytes``/``max_video_bytes``);
its headers are read for a *plan*, the most samples or pixels it may decode to (``avmedia.AudioSpec.plan`` /
``VideoSpec.plan``, with every header check: container, codec, streams, duration, rate, channels, frame size); the
plans are reserved in the request's pixel lease together with its images (``service.pixels``: 413 over
``max_request_pixels``, 503 when the worker's in-flight budget stays full); then each item is decoded in a thread
under a limit equal to its plan, so the decoder can never hold more than was reserved. Nothing here hands a
string or a path to a model: the results are float32 samples and uint8 frames.

Units: the pixel budget counts RGB pixels (3 bytes); an audio sample is float32 (4 bytes), so it counts 4/3.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from service.avmedia import PLAN_SLACK_S, Audio, AudioSpec, AVMediaError, Video, VideoSpec
from service.config import Settings
from service.media import MediaError, MediaLoader, first_failure

__all__ = ["AVRef", "AVTarget", "Planned", "budget_units", "decode_planned", "plan_refs"]

DEFAULT_AUDIO_RATE = 16_000
"""The rate audio models are trained at (wav2vec2, HuBERT, Whisper, CLAP-HTSAT 48 kHz excepted): used when a
model's feature extractor names none."""


@dataclass(frozen=True)
class AVTarget:
    """What a model takes: audio resampled to ``audio_rate`` Hz, mono; video sampled at ``video_fps`` (``None``:
    ``MMSEARCH_VIDEO_FPS``), at most ``video_max_frames`` frames (``None``: ``MMSEARCH_MAX_VIDEO_FRAMES``)."""

    audio_rate: int = DEFAULT_AUDIO_RATE
    video_fps: float | None = None
    video_max_frames: int | None = None

    @classmethod
    def of(cls, model: Any) -> AVTarget:
        """Read from a sentence-transformers model's processors: the feature extractor's ``sampling_rate``, the
        video processor's ``fps`` and ``max_frames`` (when it samples frames itself)."""
        rate, fps, frames = None, None, None
        modules = model.modules() if hasattr(model, "modules") else []
        for module in modules:
            processor = getattr(module, "processor", None)
            extractor = getattr(processor, "feature_extractor", None)
            rate = rate or _positive(getattr(extractor, "sampling_rate", None))
            video = getattr(processor, "video_processor", None)
            fps = fps or _positive(getattr(video, "fps", None))
            frames = frames or _positive(getattr(video, "max_frames", None))
        return cls(int(rate or DEFAULT_AUDIO_RATE), fps, int(frames) if frames else None)

    def spec(self, ref: AVRef) -> AudioSpec | VideoSpec:
        """What ``ref`` is decoded to for this model."""
        if ref.kind == "audio":
            return AudioSpec(rate=self.audio_rate, field=ref.field, window=ref.window)
        return VideoSpec(fps=self.video_fps, max_frames=self.video_max_frames, field=ref.field, window=ref.window)


def _positive(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else None


@dataclass(frozen=True)
class AVRef:
    """One audio or video item of a request: its position, ``kind``, reference and field (``inputs[2].audio``)."""

    index: int
    kind: str
    ref: str
    field: str
    window: tuple[float, float] | None = None
    """``(t0, t1)`` s: only that time range of the clip (a segment)."""
    data: bytes | None = None
    """The clip's bytes when they came with the request (an upload, read within ``max_<kind>_bytes``): not
    fetched."""


@dataclass(frozen=True)
class Planned:
    """An item's bytes and its plan: ``limit`` samples (audio) or pixels (video), ``units`` in the pixel budget."""

    ref: AVRef
    data: bytes
    limit: int

    @property
    def units(self) -> int:
        return budget_units(self.ref.kind, self.limit)


def budget_units(kind: str, n: int) -> int:
    """``n`` decoded samples (audio, float32) or pixels (video, RGB) in pixel-budget units (3 bytes each)."""
    return math.ceil(n * 4 / 3) if kind == "audio" else n


async def plan_refs(
    refs: Sequence[AVRef], loader: MediaLoader, settings: Settings, target: AVTarget, *, background: bool
) -> list[Planned]:
    """Fetch every item's bytes and read its plan from the headers, concurrently; the first refusal by position."""

    fetched: dict[tuple[str, str], asyncio.Task[bytes]] = {}

    async def fetch(ref: AVRef) -> bytes:
        key = (ref.kind, ref.ref)  # a clip's segments share one fetch (one read of a stored clip)
        if key not in fetched:
            fetched[key] = asyncio.ensure_future(loader.fetch_av(ref.ref, ref.field, ref.kind))
        return await asyncio.shield(fetched[key])

    async def one(ref: AVRef) -> Planned:
        data = ref.data if ref.data is not None else await fetch(ref)
        fn = functools.partial(target.spec(ref).plan, data, settings)
        return Planned(ref, data, await _counted(loader, ref.field, loader.run_decode(background, fn)))

    try:
        return await first_failure([one(r) for r in refs])
    finally:
        # a failed fetch's task holds its error, whose traceback holds ``one``'s frame, which holds ``fetched``: a
        # reference cycle that kept the refused request's frames (its data URI included) until a gc pass
        fetched.clear()


async def decode_planned(
    planned: Sequence[Planned], loader: MediaLoader, settings: Settings, target: AVTarget, *, background: bool
) -> list[Audio | Video]:
    """Decode every planned item (reserved beforehand) under a limit equal to its plan; in order."""

    async def one(p: Planned) -> Audio | Video:
        spec = target.spec(p.ref)
        held = settings.model_copy(update={spec.limit: p.limit})
        fn: Callable[[], Audio | Video] = functools.partial(spec.decode, p.data, held)
        try:
            return await _counted(loader, p.ref.field, loader.run_decode(background, fn))
        except AVMediaError as e:
            raise _past_plan(e, p, settings) from None

    return await first_failure([one(p) for p in planned])


def _past_plan(e: AVMediaError, p: Planned, settings: Settings) -> AVMediaError:
    """A refusal at the plan's limit said as what it is: the stream decodes past what its header declared (the
    configured limit, which the message would otherwise name, was not reached)."""
    audio = p.ref.kind == "audio"
    configured = settings.max_audio_samples if audio else settings.max_video_pixels
    if e.reason != ("too_many_samples" if audio else "too_many_pixels") or p.limit >= configured:
        return e
    unit = "samples" if audio else "pixels"
    e.message = (
        f"{p.ref.kind} decodes to more than the {p.limit} {unit} its header declared (duration + {PLAN_SLACK_S:g} s"
        f"{'' if audio else ', one frame'}): the stream runs past its declared duration"
    )
    e.args = (e.message,)
    return e


async def _counted(loader: MediaLoader, field: str, step: Any) -> Any:
    """Await a decoding step; its refusal names ``field`` and is counted as a media refusal."""
    try:
        return await step
    except MediaError as e:
        raise loader.refuse(e, field) from None
