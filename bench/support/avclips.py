"""Audio and video clips made in memory with PyAV, for the decoding tests and ``bench.av_decode`` (no fixtures).

Video: solid-colour frames whose colour changes at known times (``COLOURS``, one per ``colour_s`` seconds), so a
decoded frame's colour says when it was shown. Audio: a sine tone of a known frequency.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import av
import numpy as np

# Distinct, saturated colours: each survives lossy coding and YUV 4:2:0 well enough to be told apart.
COLOURS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 25),
    (25, 200, 25),
    (25, 25, 230),
    (230, 230, 25),
    (25, 230, 230),
    (230, 25, 230),
    (240, 240, 240),
    (20, 20, 20),
)


def colour_at(t: float, colour_s: float) -> tuple[int, int, int]:
    """The colour shown at ``t`` seconds in a ``video(...)`` clip."""
    return COLOURS[int(t / colour_s + 1e-6) % len(COLOURS)]


def video(
    seconds: float = 4.0,
    *,
    fmt: str = "mp4",
    codec: str = "libx264",
    size: tuple[int, int] = (64, 48),
    rate: int = 10,
    colour_s: float = 1.0,
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
    content: str = "solid",
    seekable: bool = True,
) -> bytes:
    """``seconds`` at ``rate`` fps of ``content``: ``solid`` colours changing every ``colour_s`` s, ``noise``
    (random pixels: every byte matters to the decoder) or ``moving`` (a gradient sliding over the colours: a
    bitrate closer to real footage, for benchmarks). ``seekable=False`` writes as a live capture does: the
    muxer cannot go back to fill in the duration."""
    w, h = size
    buf: io.BytesIO | _Unseekable = io.BytesIO() if seekable else _Unseekable()
    rng = np.random.default_rng(0)
    with av.open(buf, "w", format=fmt, options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=rate, options=options or {})
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        for i in range(round(seconds * rate)):
            img = _picture(content, i / rate, colour_s, (h, w), rng)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


class _Unseekable(io.BytesIO):
    """A write-only stream the muxer cannot seek in (a pipe, a socket)."""

    def seekable(self) -> bool:
        return False


def _picture(content: str, t: float, colour_s: float, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    if content == "noise":
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = colour_at(t, colour_s)
    if content == "moving":
        ramp = (np.arange(w)[None, :] + np.arange(h)[:, None] + int(t * 120)) % 256
        img[..., 0] = ramp.astype(np.uint8)
    return img


def tone(seconds: float, rate: int, freqs: Sequence[float]) -> np.ndarray:
    """Sines at amplitude 0.5, one row (channel) per frequency: float32 ``(len(freqs), n)``."""
    t = np.arange(round(seconds * rate)) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * f * t) for f in freqs]).astype(np.float32)


_LAYOUTS = {1: "mono", 2: "stereo", 16: "hexadecagonal"}


def audio(
    seconds: float = 2.0,
    *,
    fmt: str = "wav",
    codec: str = "pcm_s16le",
    rate: int = 16_000,
    freq: float | Sequence[float] = 440.0,
    channels: int = 1,
    streams: int = 1,
) -> bytes:
    """A sine of ``freq`` Hz (or one per channel) in ``streams`` identical streams of ``channels`` channels."""
    layout = _LAYOUTS[channels]
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        outs = [out.add_stream(codec, rate=rate, layout=layout) for _ in range(streams)]
        samples = tone(seconds, rate, [freq] * channels if isinstance(freq, int | float) else freq)
        for stream in outs:
            _encode_audio(out, stream, samples, rate, layout)
    return buf.getvalue()


def _encode_audio(
    out: av.container.OutputContainer, stream: av.AudioStream, x: np.ndarray, rate: int, layout: str
) -> None:
    step = 1024
    for i in range(0, x.shape[1], step):
        packed = np.ascontiguousarray(x[:, i : i + step].T).reshape(1, -1)  # packed: >8 planes trip PyAV
        frame = av.AudioFrame.from_ndarray(packed, format="flt", layout=layout)
        frame.sample_rate, frame.pts = rate, i
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    """The strongest frequency of a mono signal."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def mean_colours(frames: np.ndarray) -> Sequence[tuple[int, int, int]]:
    """Each frame's mean RGB, rounded."""
    return [tuple(round(float(c)) for c in f.reshape(-1, 3).mean(axis=0)) for f in frames]  # type: ignore[misc]
