"""Audio and video documents at ingest (Search, issue #21): fetched once, checked, cut into windows, stored.

Search owns its media: a clip's bytes are fetched here once under the fetch policy (or read from a data URI or the
media store), its headers checked with every check the Embedder makes (``avmedia.probe_clip``: container, codec,
streams, duration, rate, frame size), its windows computed (``service.segments``), a keyframe preview decoded at
the start of each video window (one seek each), and the clip stored by content with those previews
(``MediaStore.put_clip``). The Embedder then gets each window as ``{"video": "media://<sha256>.<ext>", "t0", "t1"}``:
it reads the stored clip once per request and decodes only the window (``avmedia`` seeks to the keyframe before
``t0``), so nothing is re-encoded and no clip travels once per window.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

from service import segments
from service.avmedia import AVMediaError, keyframes, probe_clip
from service.config import Settings
from service.media import MediaError, MediaLoader, first_failure
from service.mediastore import THUMB_SIDE, MediaStore

__all__ = ["Clip", "ClipRef", "fetch_clips", "store_clips"]


@dataclass(frozen=True)
class ClipRef:
    """One document's clip as the request gives it."""

    ref: str
    kind: str
    """``audio`` or ``video``."""
    field: str
    """Where errors point: ``documents[3].video``."""


@dataclass
class Clip:
    """A checked clip, its windows and (video) their previews; ``stored`` once in the media store."""

    source: ClipRef
    data: bytes
    ext: str
    duration: float
    windows: list[segments.Window]
    previews: dict[float, bytes]
    stored: str | None = None
    """``media://<sha256>.<ext>``"""


async def fetch_clips(refs: Sequence[ClipRef], loader: MediaLoader, settings: Settings) -> list[Clip]:
    """Fetch and check every clip and cut it into windows, concurrently; the first refusal by position."""

    async def one(ref: ClipRef) -> Clip:
        data = await loader.fetch_av(ref.ref, ref.field, ref.kind)
        try:
            return await loader.run_decode(True, lambda: _check(ref, data, settings))
        except MediaError as e:
            raise loader.refuse(e, ref.field) from None

    return await first_failure([one(r) for r in refs])


def _check(ref: ClipRef, data: bytes, settings: Settings) -> Clip:
    probe = probe_clip(data, settings, ref.kind, ref.field)
    if probe.duration is None:
        raise AVMediaError(
            "no_duration",
            f"the {ref.kind} declares no duration, so it cannot be cut into segments (remux it, e.g. ffmpeg -c copy)",
            ref.field,
        )
    wins = segments.windows(probe.duration, settings.segment_seconds, settings.segment_overlap_s)
    if len(wins) > settings.max_segments_per_document:
        raise AVMediaError(
            "too_many_segments",
            f"{probe.duration:.1f} s makes {len(wins)} segments, over max_segments_per_document="
            f"{settings.max_segments_per_document}",
            ref.field,
        )
    previews: dict[float, bytes] = {}
    if ref.kind == "video":
        for w, frame in zip(wins, keyframes(data, settings, [w.t0 for w in wins], ref.field), strict=True):
            if frame is not None:
                previews[w.t0] = _jpeg(frame)
    return Clip(ref, data, probe.ext, probe.duration, wins, previews)


def _jpeg(frame: object) -> bytes:
    img = frame.copy()  # type: ignore[attr-defined]
    img.thumbnail((THUMB_SIDE, THUMB_SIDE))
    out = io.BytesIO()
    img.convert("RGB").save(out, "JPEG", quality=80)
    return out.getvalue()


def store_clips(media: MediaStore, clips: Sequence[Clip]) -> None:
    """Store every clip with its previews (blocking: a worker thread)."""
    for clip in clips:
        clip.stored = media.put_clip(clip.data, clip.ext, clip.previews)
