"""Decode audio and video bytes into arrays, under the media policy (issue #21; served through ``service.avload``).

The caller fetches the bytes (``service.media`` keeps the fetch path); this module only decodes, with PyAV (FFmpeg
inside its wheel), and never hands PyAV a path or a URL: it reads from ``io.BytesIO``. Every refusal is an
``AVMediaError`` (a ``service.media.MediaError``) with a reason code, a 4xx status and a message naming the limit
(``Settings`` fields, ``MMSEARCH_*`` variables) and its value.

Defences, in order: a byte cap; the container probed from the bytes and opened only by an allowed demuxer (FFmpeg's
``format_whitelist``: a playlist, concat script or image never reaches a demuxer that could open other files); the
demuxer stops creating streams one past ``max_av_streams``; decoders refuse frames above ``max_video_source_pixels``
even while FFmpeg probes the stream; then, from the headers and before any sample is decoded: stream count, codec
allowlist, declared duration, sample rate (both ways: a very low one would be upsampled many-fold) and channels,
frame size and the planned output (samples, or frames x pixels) against its budget. While decoding: strict error
detection (a corrupt packet is an error, not a concealed frame), the duration again from the decoded timestamps
(headers lie), the output budgets again (an audio frame's resampled size before the resampler allocates it), at most
``max_video_source_fps`` decoded frames per second of video, and a wall-time deadline checked between packets and
frames (PyAV's open/read timeouts too). A stream that ends well before its declared duration is refused as
truncated.

Not refused, by design or by what FFmpeg reports: damage a demuxer resyncs past (a FLAC frame, an Ogg page with a
bad CRC) is dropped; a cut WAV or Ogg file declares no length FFmpeg keeps, so it decodes as the shorter file it is;
a stream running past a short declared duration is decoded (within the duration, frame and output caps). The
whole container's bytes are in memory (``max_*_bytes``); the output is built in a list and stacked once (peak:
twice ``max_video_pixels`` x 3 bytes, or twice ``max_audio_samples`` x 4 bytes).

Video frames are sampled at ``video_fps`` (lowered for a long video so that ``max_video_frames`` span its declared
duration, as qwen-vl-utils does; a video that declares no duration, such as a live capture, is thinned instead:
every other frame dropped and the rate halved each time the frames fill the cap) and scaled down to fit
``video_frame_pixels`` (aspect kept); frames above ``max_video_source_pixels`` are refused rather than scaled, since
decoding them is the cost to avoid.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import av
import av.error
import numpy as np

from service.config import Settings
from service.media import MediaError

__all__ = [
    "AVMediaError",
    "Audio",
    "AudioSpec",
    "Probe",
    "Video",
    "VideoSpec",
    "keyframes",
    "probe_clip",
]

_STATUS: dict[str, int] = {
    "too_large": 413,
    "too_long": 413,
    "too_many_streams": 413,
    "too_many_channels": 413,
    "sample_rate_too_high": 413,
    "sample_rate_too_low": 422,
    "frame_rate_too_high": 413,
    "too_many_samples": 413,
    "too_many_pixels": 413,
    "too_many_frames": 413,
    "decode_too_slow": 413,
    "container_not_allowed": 415,
    "codec_not_allowed": 415,
    "undecodable": 422,
    "no_audio_stream": 422,
    "no_video_stream": 422,
    "corrupt": 422,
    "truncated": 422,
    "bad_window": 422,
    "no_duration": 422,
    "too_many_segments": 413,
}

# Decoder options: report damage instead of concealing it (FFmpeg's err_detect flags).
_STRICT = "crccheck+bitstream+buffer+explode"
# A decoded stream may end this much before its declared duration (share of it, or seconds) and not be "truncated".
_TRUNCATION_SLACK = (0.1, 0.5)
_EPS_S = 1e-3  # timestamp rounding when matching frames to sampling times
PLAN_SLACK_S = 0.5
"""A stream may run this much past its declared duration within its plan (muxers round durations)."""
T = TypeVar("T")


class AVMediaError(MediaError):
    """A refused audio or video item: ``reason``, ``message`` and ``field`` as ``MediaError``, 4xx ``status``."""

    def __init__(self, reason: str, message: str, field: str | None = None) -> None:
        super().__init__(reason, message, field)
        self.status = _STATUS.get(reason, 400)


@dataclass(frozen=True)
class Audio:
    """Decoded audio: float32 ``samples`` of shape ``(n,)`` (mono) or ``(channels, n)``, at ``rate`` Hz."""

    samples: np.ndarray
    rate: int

    @property
    def duration_s(self) -> float:
        return float(self.samples.shape[-1] / self.rate)


@dataclass(frozen=True)
class Video:
    """Sampled frames, uint8 RGB ``(T, H, W, 3)``, each taken at ``timestamps[i]`` s from the stream's start."""

    frames: np.ndarray
    timestamps: np.ndarray
    fps: float
    """The sampling rate used (``video_fps``, or lower for a long video)."""
    source_size: tuple[int, int]
    """(width, height) as coded."""


# --- shared: open, probe, check ------------------------------------------------------------------------------


class _Deadline:
    """The per-item wall-time budget (monotonic clock)."""

    def __init__(self, seconds: float, field: str | None) -> None:
        self.seconds = seconds
        self.field = field
        self._end = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self._end:
            raise self.error()

    def error(self) -> AVMediaError:
        return AVMediaError(
            "decode_too_slow", f"decoding took longer than av_decode_timeout_s={self.seconds:g} s", self.field
        )


@dataclass(frozen=True)
class _Policy:
    """What one kind of item (audio or video) admits."""

    kind: str
    max_bytes: int
    containers: tuple[str, ...]
    codecs: tuple[str, ...]


def _policy(settings: Settings, kind: str) -> _Policy:
    if kind == "audio":
        return _Policy("audio", settings.max_audio_bytes, settings.audio_containers, settings.audio_codecs)
    return _Policy("video", settings.max_video_bytes, settings.video_containers, settings.video_codecs)


def _open(data: bytes, settings: Settings, policy: _Policy, deadline: _Deadline) -> Any:
    """The container read from ``data`` by an allowed demuxer, or the refusal (bytes, format, undecodable)."""
    field = deadline.field
    if len(data) > policy.max_bytes:
        raise AVMediaError(
            "too_large", f"{policy.kind} is {len(data)} bytes, over max_{policy.kind}_bytes={policy.max_bytes}", field
        )
    if not data:
        raise AVMediaError("undecodable", f"{policy.kind} is empty (0 bytes)", field)
    options = {
        "format_whitelist": ",".join(policy.containers),
        "max_streams": str(settings.max_av_streams + 1),
        "max_pixels": str(settings.max_video_source_pixels),  # decoders opened while probing refuse larger frames
    }
    timeout = settings.av_decode_timeout_s
    try:
        return av.open(io.BytesIO(data), mode="r", options=options, timeout=(timeout, timeout))
    except av.error.ArgumentError:
        allowed = ", ".join(policy.containers)
        raise AVMediaError(
            "container_not_allowed",
            f"not in a container allowed for {policy.kind} ({policy.kind}_containers: {allowed})",
            field,
        ) from None
    except av.error.ExitError:
        raise deadline.error() from None
    except (av.error.FFmpegError, ValueError, OSError):
        raise AVMediaError("undecodable", f"not a readable {policy.kind} file", field) from None


def _check_container(container: Any, settings: Settings, policy: _Policy, field: str | None) -> None:
    """The demuxer FFmpeg chose is allowed (again, by name) and the container has few enough streams."""
    names = set(container.format.name.split(","))
    if not names & set(policy.containers):
        raise AVMediaError(
            "container_not_allowed", f"{container.format.name} is not in {policy.kind}_containers", field
        )
    if len(container.streams) > settings.max_av_streams:
        raise AVMediaError("too_many_streams", f"more than max_av_streams={settings.max_av_streams} streams", field)


def _codec_name(stream: Any) -> str:
    ctx = stream.codec_context
    return str(ctx.codec.canonical_name) if ctx is not None and ctx.codec is not None else "unknown"


def _check_codec(stream: Any, policy: _Policy, field: str | None) -> None:
    name = _codec_name(stream)
    if name not in policy.codecs:
        raise AVMediaError(
            "codec_not_allowed",
            f"{policy.kind} codec {name} is not in {policy.kind}_codecs ({', '.join(policy.codecs)})",
            field,
        )


def _declared_duration(container: Any, stream: Any) -> float | None:
    """Seconds the stream's header declares (the container's when the stream is its only one), if any (> 0)."""
    seconds = None
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None and len(container.streams) == 1:
        seconds = float(container.duration / av.time_base)
    if seconds is None or math.isnan(seconds) or seconds <= 0:
        return None  # nonsense is no declaration: the decoded timestamps are checked all the same
    return seconds


def _check_duration(seconds: float | None, settings: Settings, field: str | None, decoded: bool = False) -> None:
    if seconds is not None and seconds > settings.max_av_duration_s:
        what = "decodes past" if decoded else "declares"
        raise AVMediaError(
            "too_long", f"stream {what} {seconds:.1f} s, over max_av_duration_s={settings.max_av_duration_s:g}", field
        )


def _check_complete(end_s: float, declared: float | None, field: str | None) -> None:
    """Refuse a stream whose decoded content stops well before its declared duration."""
    if declared is None:
        return
    share, seconds = _TRUNCATION_SLACK
    if end_s + max(share * declared, seconds) < declared:
        raise AVMediaError(
            "truncated", f"stream declares {declared:.2f} s but its data ends at {end_s:.2f} s (truncated)", field
        )


def _prepare(stream: Any, settings: Settings) -> None:
    """Strict decoding, bounded frame size, the configured thread count."""
    ctx = stream.codec_context
    ctx.options = {"err_detect": _STRICT, "max_pixels": str(settings.max_video_source_pixels)}
    ctx.thread_count = settings.av_decode_threads
    if settings.av_decode_threads != 1:
        ctx.thread_type = "AUTO"


@dataclass(frozen=True)
class _Opened:
    """An open container, the stream to decode (its header checked) and what the header declares."""

    container: Any
    stream: Any
    declared: float | None
    deadline: _Deadline

    def feed(self, settings: Settings, add: Callable[[Any], None], seek_s: float = 0.0) -> None:
        """Decode the stream (others are skipped undecoded), handing each frame to ``add`` until it raises
        ``_Enough``; from the keyframe at or before ``seek_s`` s when that is positive (a window).

        Damage (an FFmpeg error, a frame flagged corrupt, a frame the resampler or scaler cannot take) is
        ``corrupt``; the deadline is checked between packets and frames."""
        if not self.stream.codec_context.is_open:
            _prepare(self.stream, settings)
        field = self.deadline.field
        try:
            if seek_s > 0:
                self._seek(seek_s)
            for packet in self.container.demux(self.stream):
                self.deadline.check()
                for frame in packet.decode():
                    self.deadline.check()
                    if frame.is_corrupt:
                        raise AVMediaError("corrupt", "a frame is damaged (corrupt packet)", field)
                    add(frame)
        except _Enough:
            return
        except av.error.ExitError:
            raise self.deadline.error() from None
        except (av.error.FFmpegError, ValueError) as e:
            raise AVMediaError("corrupt", f"decoding failed: {type(e).__name__}", field) from None

    def _seek(self, seconds: float) -> None:
        """Position the demuxer at the last keyframe at or before ``seconds`` s from the stream's start: a window
        costs its own length plus at most one group of pictures, not everything before it."""
        stream = self.stream
        if stream.time_base is None:
            return
        start = stream.start_time or 0
        self.container.seek(start + int(seconds / stream.time_base), stream=stream, backward=True, any_frame=False)


class _Enough(Exception):
    """A sink has every frame of its window: decoding stops."""


@contextlib.contextmanager
def _opened(data: bytes, settings: Settings, kind: str, field: str | None) -> Iterator[_Opened]:
    """Open ``data``, pick the stream and check it (bytes, container, streams, codec, header fields, duration)."""
    deadline = _Deadline(settings.av_decode_timeout_s, field)
    policy = _policy(settings, kind)
    with _open(data, settings, policy, deadline) as container:
        _check_container(container, settings, policy, field)
        stream = (_audio_stream if kind == "audio" else _video_stream)(container, settings, policy, field)
        declared = _declared_duration(container, stream)
        _check_duration(declared, settings, field)
        yield _Opened(container, stream, declared, deadline)


@dataclass(frozen=True, kw_only=True)
class _Spec:
    """What an item is decoded to (``AudioSpec``, ``VideoSpec``): ``decode`` decodes it, ``plan`` reads from its
    headers alone, with every header check of ``decode``, the most output ``decode`` may keep."""

    field: str | None = None
    """The request field a refusal names (``inputs[2].video``)."""
    window: tuple[float, float] | None = None
    """``(t0, t1)`` s: only that time range of the stream (decoded from the packet or keyframe at or before ``t0``:
    ``_Opened._seek``)."""
    limit: ClassVar[str]
    """The ``Settings`` field that caps ``decode``'s output: decode under a value of it equal to the plan to hold
    the decoder to the plan."""


# --- audio ---------------------------------------------------------------------------------------------------


def _audio_stream(container: Any, settings: Settings, policy: _Policy, field: str | None) -> Any:
    """The first audio stream, its codec, sample rate and channels checked."""
    if not container.streams.audio:
        raise AVMediaError("no_audio_stream", "the file has no audio stream", field)
    stream = container.streams.audio[0]
    _check_codec(stream, policy, field)  # first: a stream FFmpeg has no decoder for has no codec context
    rate, channels = stream.codec_context.sample_rate, stream.codec_context.channels
    if not rate or not channels:
        raise AVMediaError("undecodable", "the audio stream declares no sample rate or channels", field)
    _check_rate(rate, settings, field)
    if channels > settings.max_audio_channels:
        raise AVMediaError(
            "too_many_channels", f"{channels} channels, over max_audio_channels={settings.max_audio_channels}", field
        )
    return stream


def _check_rate(rate: int, settings: Settings, field: str | None) -> None:
    """A source sample rate within [min_audio_sample_rate, max_audio_sample_rate]: a very low one would be
    upsampled many-fold (1 Hz to 16 kHz: every source sample becomes 16,000) before any budget sees the output."""
    if rate > settings.max_audio_sample_rate:
        raise AVMediaError(
            "sample_rate_too_high",
            f"sample rate {rate} Hz, over max_audio_sample_rate={settings.max_audio_sample_rate}",
            field,
        )
    if rate < settings.min_audio_sample_rate:
        raise AVMediaError(
            "sample_rate_too_low",
            f"sample rate {rate} Hz, under min_audio_sample_rate={settings.min_audio_sample_rate}",
            field,
        )


def _samples_error(n: int, settings: Settings, field: str | None, planned: bool) -> AVMediaError:
    what = "would decode to" if planned else "decodes to more than"
    return AVMediaError(
        "too_many_samples", f"audio {what} {n} samples, over max_audio_samples={settings.max_audio_samples}", field
    )


class _AudioSink:
    """Resampled chunks in the requested channels, the sample budget and decoded duration enforced as they arrive.

    Mono is the mean of the source channels (as librosa and torchaudio mix down), not FFmpeg's -3 dB downmix;
    stereo from mono repeats the channel; more than two channels go to stereo by FFmpeg's standard downmix.
    """

    def __init__(
        self,
        stream: Any,
        settings: Settings,
        rate: int,
        channels: int,
        field: str | None,
        window: tuple[float, float] | None = None,
    ) -> None:
        self.settings, self.rate, self.channels, self.field = settings, rate, channels, field
        source = stream.codec_context.layout
        layout = "stereo" if channels == 2 and source.nb_channels > 1 else source
        self.resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        self.chunks: list[np.ndarray] = []
        self.n = 0
        self.window = window
        self.start = _start_time(stream) or 0.0
        self.first: float | None = None
        """Seconds (from the stream's start) of the first sample kept: a window is cut from there."""

    def add(self, frame: Any) -> None:
        if frame is not None and self.window is not None and not self._in_window(frame):
            return
        if frame is not None:  # None flushes the resampler
            _check_rate(frame.sample_rate, self.settings, self.field)  # a stream may change rate mid-way
            coming = self.n + math.ceil(frame.samples * self.rate / frame.sample_rate)
            if coming * self.channels > self.settings.max_audio_samples:  # before the resampler allocates it
                raise _samples_error(coming * self.channels, self.settings, self.field, planned=False)
        for out in self.resampler.resample(frame):
            self._keep(out.to_ndarray())

    def _in_window(self, frame: Any) -> bool:
        """Whether a frame reaches into the window (``_Enough`` once frames start past its end)."""
        assert self.window is not None
        t0, t1 = self.window
        t = float(frame.time - self.start) if frame.time is not None else None
        if t is None:
            raise AVMediaError("corrupt", "an audio frame has no timestamp", self.field)
        if t >= t1:
            raise _Enough
        if t + frame.samples / frame.sample_rate <= t0:
            return False
        if self.first is None:
            self.first = t
        return True

    def _keep(self, chunk: np.ndarray) -> None:
        if self.channels == 1 and chunk.shape[0] > 1:
            chunk = chunk.mean(axis=0, keepdims=True)
        elif self.channels == 2 and chunk.shape[0] == 1:
            chunk = np.repeat(chunk, 2, axis=0)
        self.n += chunk.shape[-1]
        if self.n * self.channels > self.settings.max_audio_samples:
            raise _samples_error(self.n * self.channels, self.settings, self.field, planned=False)
        _check_duration(self.n / self.rate, self.settings, self.field, decoded=True)
        self.chunks.append(chunk)

    def finish(self) -> np.ndarray:
        try:
            self.add(None)  # what the resampler still holds
        except (av.error.FFmpegError, ValueError):
            raise AVMediaError("corrupt", "resampling failed", self.field) from None
        if not self.chunks:
            raise AVMediaError("undecodable", "no audio could be decoded", self.field)
        out = np.concatenate(self.chunks, axis=-1).astype(np.float32, copy=False)
        self.chunks.clear()
        if self.window is not None:
            t0, t1 = self.window
            skip = max(0, round((t0 - (self.first or 0.0)) * self.rate))
            out = out[..., skip : skip + round((t1 - t0) * self.rate)]
        return out[0] if self.channels == 1 else out

    def end_s(self, n: int) -> float:
        """Where ``n`` kept samples end, in seconds from the stream's start."""
        return (self.window[0] if self.window is not None else 0.0) + n / self.rate


@dataclass(frozen=True, kw_only=True)
class AudioSpec(_Spec):
    """The first audio stream as float32 samples at ``rate`` Hz, mono (1) or stereo (2) ``channels``."""

    rate: int
    channels: int = 1
    limit: ClassVar[str] = "max_audio_samples"

    def decode(self, data: bytes, settings: Settings) -> Audio:
        """The samples of ``data`` (of the window, when given)."""
        with self._headers(data, settings) as (item, window, _):
            sink = _AudioSink(item.stream, settings, self.rate, self.channels, self.field, window)
            item.feed(settings, sink.add, window[0] if window else 0.0)
            samples = sink.finish()
        _check_complete(sink.end_s(samples.shape[-1]), _window_end(item.declared, window), self.field)
        return Audio(samples, self.rate)

    def plan(self, data: bytes, settings: Settings) -> int:
        """The most samples (all channels) ``decode`` may keep: the declared duration plus ``PLAN_SLACK_S`` at
        ``rate``, or ``max_audio_samples`` when none is declared."""
        with self._headers(data, settings) as (_, window, declared):
            if declared is None:
                return settings.max_audio_samples
            slack = PLAN_SLACK_S * (2 if window else 1)  # a window also keeps the frame that straddles its start
            return min(math.ceil((declared + slack) * self.rate) * self.channels, settings.max_audio_samples)

    @contextlib.contextmanager
    def _headers(
        self, data: bytes, settings: Settings
    ) -> Iterator[tuple[_Opened, tuple[float, float] | None, float | None]]:
        """``data`` opened and its headers checked; the window checked (``_check_window``) and the declared seconds
        to keep (the window's, when given; None: none declared), refused with ``too_many_samples`` when they cannot
        fit ``max_audio_samples`` at ``rate`` and ``channels``."""
        if self.channels not in (1, 2) or self.rate <= 0:
            raise ValueError("channels must be 1 or 2 and rate positive")
        window = _check_window(self.window, self.field)
        with _opened(data, settings, "audio", self.field) as item:
            span = _located(lambda: _span(item.declared, window), self.field)
            n = None if span is None else span * self.rate * self.channels
            if n is not None and n > settings.max_audio_samples:
                raise _samples_error(math.ceil(n), settings, self.field, planned=True)
            yield item, window, span


def _check_window(window: tuple[float, float] | None, field: str | None) -> tuple[float, float] | None:
    if window is None:
        return None
    t0, t1 = (float(t) for t in window)
    if not (math.isfinite(t0) and math.isfinite(t1) and 0 <= t0 < t1):
        raise AVMediaError("bad_window", f"the time range must satisfy 0 <= t0 < t1 (got {t0:g}, {t1:g})", field)
    return t0, t1


def _span(declared: float | None, window: tuple[float, float] | None) -> float | None:
    """Seconds to decode: the declared duration, or the window (within the declared duration)."""
    if window is None:
        return declared
    t0, t1 = window
    if declared is not None and t0 >= declared:
        raise AVMediaError("bad_window", f"the time range starts at {t0:g} s, past the end ({declared:.3f} s)")
    return (min(t1, declared) if declared is not None else t1) - t0


def _located(fn: Callable[[], T], field: str | None) -> T:
    try:
        return fn()
    except AVMediaError as e:
        e.field = field
        raise


def _window_end(declared: float | None, window: tuple[float, float] | None) -> float | None:
    """Where the decoded data should end: the declared end, or the window's end within it."""
    if window is None or declared is None:
        return declared
    return min(declared, window[1])


# --- video ---------------------------------------------------------------------------------------------------


def _video_stream(container: Any, settings: Settings, policy: _Policy, field: str | None) -> Any:
    """The first video stream that is not a cover picture, its codec and coded size checked."""
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not streams:
        raise AVMediaError("no_video_stream", "the file has no video stream", field)
    stream = streams[0]
    _check_codec(stream, policy, field)
    w, h = stream.codec_context.width, stream.codec_context.height
    if not w or not h:
        raise AVMediaError("undecodable", "the video stream declares no frame size", field)
    _check_source_pixels(w, h, settings, field)
    return stream


def _check_source_pixels(w: int, h: int, settings: Settings, field: str | None) -> None:
    if w * h > settings.max_video_source_pixels:
        raise AVMediaError(
            "too_many_pixels",
            f"frames of {w}x{h} = {w * h} pixels, over max_video_source_pixels={settings.max_video_source_pixels}",
            field,
        )


def _scaled(w: int, h: int, limit: int) -> tuple[int, int]:
    """(w, h) scaled down, aspect kept, to at most ``limit`` pixels (unchanged if within it)."""
    if w * h <= limit:
        return w, h
    f = math.sqrt(limit / (w * h))
    return max(1, int(w * f)), max(1, int(h * f))


@dataclass(frozen=True)
class _Plan:
    fps: float
    max_frames: int
    size: tuple[int, int]
    """(width, height) of the sampled frames."""
    planned: int = 1
    """Sampling times before the declared end (1 when no duration is declared)."""


def _plan(
    stream: Any, declared: float | None, settings: Settings, fps: float, max_frames: int, field: str | None
) -> _Plan:
    """Sampling rate and output size; refuses when the declared duration's frames would exceed the pixel budget.
    ``declared``: the seconds to sample (a window's, for a window)."""
    w, h = _scaled(stream.codec_context.width, stream.codec_context.height, settings.video_frame_pixels)
    if declared:
        fps = min(fps, max(max_frames - 1, 1) / declared)
    planned = min(max_frames, max(1, math.ceil((declared or 0) * fps - _EPS_S)))  # sampling times before the end
    need = planned * w * h
    if need > settings.max_video_pixels:
        raise AVMediaError(
            "too_many_pixels",
            f"{planned} frames of {w}x{h} need {need} pixels, over max_video_pixels={settings.max_video_pixels}",
            field,
        )
    return _Plan(fps, max_frames, (w, h), planned)


class _FrameSink:
    """Frames taken at the sampling times, with the frame cap, pixel budget and duration enforced as they come."""

    def __init__(
        self,
        plan: _Plan,
        settings: Settings,
        start: float | None,
        field: str | None,
        *,
        thin: bool = False,
        window: tuple[float, float] | None = None,
    ) -> None:
        self.plan, self.settings, self.start, self.field = plan, settings, start, field
        self.fps = plan.fps
        self.thin = thin
        """No declared duration: when the frame cap is reached, keep every other frame and halve the rate."""
        self.frames: list[np.ndarray] = []
        self.times: list[float] = []
        self.t0, self.t1 = window if window is not None else (0.0, math.inf)
        self.next_t = self.t0
        self.end = 0.0
        self.decoded = 0

    def add(self, frame: Any) -> None:
        _check_source_pixels(frame.width, frame.height, self.settings, self.field)
        t = self._time(frame)
        if t + _EPS_S >= self.t1:
            raise _Enough
        _check_duration(t, self.settings, self.field, decoded=True)
        self.decoded += 1
        if self.decoded > (t + 1.0) * self.settings.max_video_source_fps:  # decoding work stays duration x fps
            raise AVMediaError(
                "frame_rate_too_high",
                f"{self.decoded} frames in the first {t:.3g} s, over max_video_source_fps="
                f"{self.settings.max_video_source_fps:g}",
                self.field,
            )
        shown = frame.duration * frame.time_base if frame.duration and frame.time_base else 0
        self.end = max(self.end, t + float(shown))
        if t + _EPS_S < self.next_t:
            return
        if self.thin and len(self.frames) >= self.plan.max_frames:
            self._halve()
            if t + _EPS_S < self.next_t:
                return
        self._take(frame, t)
        # the next sampling time after t (the window's times are t0 + k / fps)
        self.next_t = self.t0 + (math.floor((t - self.t0 + _EPS_S) * self.fps) + 1) / self.fps

    def _halve(self) -> None:
        """Keep the frames at the sampling times of half the rate (every other one)."""
        self.fps /= 2
        self.frames, self.times = self.frames[::2], self.times[::2]  # taken at k/fps: the even k are k'/(fps/2)
        self.next_t = (math.floor((self.times[-1] + _EPS_S) * self.fps) + 1) / self.fps

    def _time(self, frame: Any) -> float:
        t = frame.time
        if t is None:
            raise AVMediaError("corrupt", "a frame has no timestamp", self.field)
        if self.start is None:
            self.start = t
        return max(0.0, float(t - self.start))

    def _take(self, frame: Any, t: float) -> None:
        w, h = self.plan.size
        if len(self.frames) >= self.plan.max_frames:
            raise AVMediaError(
                "too_many_frames",
                f"more than max_video_frames={self.plan.max_frames} frames at {self.fps:.3g} fps: "
                "the stream runs past its declared duration",
                self.field,
            )
        if (len(self.frames) + 1) * w * h > self.settings.max_video_pixels:
            raise AVMediaError(
                "too_many_pixels",
                f"sampled frames exceed max_video_pixels={self.settings.max_video_pixels}",
                self.field,
            )
        self.frames.append(frame.reformat(width=w, height=h, format="rgb24").to_ndarray())
        self.times.append(t)


def _start_time(stream: Any) -> float | None:
    if stream.start_time is None or stream.time_base is None:
        return None
    return float(stream.start_time * stream.time_base)


@dataclass(frozen=True, kw_only=True)
class VideoSpec(_Spec):
    """The first video stream as frames sampled at ``fps``, at most ``max_frames`` of them (a model processor's:
    they default to, and are capped by, ``video_fps`` and ``max_video_frames``); a window is sampled from ``t0``."""

    fps: float | None = None
    max_frames: int | None = None
    limit: ClassVar[str] = "max_video_pixels"

    def decode(self, data: bytes, settings: Settings) -> Video:
        """The sampled frames of ``data`` (of the window, when given)."""
        with self._headers(data, settings) as (item, window, span, plan):
            stream = item.stream
            sink = _FrameSink(plan, settings, _start_time(stream), self.field, thin=span is None, window=window)
            item.feed(settings, sink.add, window[0] if window else 0.0)
            size = (stream.codec_context.width, stream.codec_context.height)
        if not sink.frames:
            raise AVMediaError("undecodable", "no video frame could be decoded", self.field)
        _check_complete(sink.end, _window_end(item.declared, window), self.field)
        return Video(np.stack(sink.frames), np.asarray(sink.times, dtype=np.float64), sink.fps, size)

    def plan(self, data: bytes, settings: Settings) -> int:
        """The most pixels (frames x width x height) ``decode`` may keep: the frames sampled before the declared end
        plus one, or the frame cap when no duration is declared; at most ``max_video_pixels``."""
        with self._headers(data, settings) as (_, _, declared, plan):
            w, h = plan.size
            frames = plan.max_frames if declared is None else min(plan.max_frames, plan.planned + 1)
            return min(frames * w * h, settings.max_video_pixels)

    @contextlib.contextmanager
    def _headers(
        self, data: bytes, settings: Settings
    ) -> Iterator[tuple[_Opened, tuple[float, float] | None, float | None, _Plan]]:
        """``data`` opened and its headers checked; the window checked (``_check_window``), the declared seconds to
        sample (the window's, when given; None: none declared) and the sampling plan (``_plan``: refused when its
        frames cannot fit ``max_video_pixels``)."""
        fps, max_frames = _sampling(settings, self.fps, self.max_frames)
        window = _check_window(self.window, self.field)
        with _opened(data, settings, "video", self.field) as item:
            span = _located(lambda: _span(item.declared, window), self.field)
            yield item, window, span, _plan(item.stream, span, settings, fps, max_frames, self.field)


def _sampling(settings: Settings, fps: float | None, max_frames: int | None) -> tuple[float, int]:
    """The sampling rate and frame cap in force: a model processor's, capped by ``video_fps``/``max_video_frames``."""
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise ValueError("fps must be positive and finite")
    if max_frames is not None and max_frames < 1:
        raise ValueError("max_frames must be at least 1")
    return min(fps or settings.video_fps, settings.video_fps), min(
        max_frames or settings.max_video_frames, settings.max_video_frames
    )


# --- ingest: a clip's length and its keyframes (Search, service.avingest) -------------------------------------


@dataclass(frozen=True)
class Probe:
    """What a clip's headers say: its declared ``duration`` (s, None if none) and the file extension its container
    and codec are stored under (``service.mediastore.AV_CONTENT_TYPES``)."""

    duration: float | None
    ext: str


_WEB_CODECS = {"vp8", "vp9", "av1", "opus", "vorbis"}


def probe_clip(data: bytes, settings: Settings, kind: str, field: str | None = None) -> Probe:
    """Read a clip's headers with every header check of ``decode_*`` (nothing decoded)."""
    with _opened(data, settings, kind, field) as item:
        names = set(item.container.format.name.split(","))
        codec = _codec_name(item.stream)
        return Probe(item.declared, _extension(names, codec, kind))


def _extension(names: set[str], codec: str, kind: str) -> str:
    for name, ext in (("wav", "wav"), ("flac", "flac"), ("mp3", "mp3"), ("ogg", "ogg")):
        if name in names:
            return ext
    if "matroska" in names or "webm" in names:
        return "webm" if codec in _WEB_CODECS else "mkv"
    if kind == "audio":
        return "m4a"
    return "mov" if names == {"mov"} else "mp4"


def keyframes(data: bytes, settings: Settings, times: list[float], field: str | None = None) -> list[Any]:
    """The first frame at or after each of ``times`` (s), as PIL images scaled to ``video_frame_pixels`` at most
    (None where none could be decoded): a video segment's thumbnail. One seek per time, under the item's
    decoding deadline."""
    out: list[Any] = []
    with _opened(data, settings, "video", field) as item:
        stream = item.stream
        w, h = _scaled(stream.codec_context.width, stream.codec_context.height, settings.video_frame_pixels)
        start = _start_time(stream) or 0.0
        for t in times:
            found: list[Any] = []

            def first(frame: Any, t: float = t, found: list[Any] = found) -> None:
                if frame.time is not None and frame.time - start + _EPS_S >= t:
                    found.append(frame.reformat(width=w, height=h, format="rgb24").to_image())
                    raise _Enough

            item.feed(settings, first, t)
            out.append(found[0] if found else None)
    return out
