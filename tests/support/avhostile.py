"""The hostile audio/video set of issue #21, generated with PyAV (nothing binary is committed).

Each ``Case`` is one file, the decoder it is handed to (``audio`` or ``video``), the settings it runs under (the
defaults unless a case needs a small limit to show a mechanism) and the refusal expected: reason code and status.
``write``/``read`` move the set through a directory, for the memory test's subprocess.
"""

from __future__ import annotations

import fractions
import io
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from bench.support import avclips
from service.avmedia import Audio, AudioSpec, Video, VideoSpec
from service.config import Settings

MIB = 1024 * 1024


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "audio" or "video"
    data: bytes
    reason: str
    status: int
    settings: dict[str, Any] = field(default_factory=dict)


def decode(case: Case) -> Audio | Video:
    """Hand the case's bytes to its decoder, under its settings."""
    settings = Settings(**case.settings)
    if case.kind == "audio":
        return AudioSpec(rate=16_000).decode(case.data, settings)
    return VideoSpec().decode(case.data, settings)


# --- byte surgery ------------------------------------------------------------------------------------------


def flip(data: bytes, at: float = 0.5, n: int = 512) -> bytes:
    """``data`` with ``n`` bytes inverted from ``at`` (a share of its length)."""
    out = bytearray(data)
    i = int(len(out) * at)
    for k in range(i, min(i + n, len(out))):
        out[k] ^= 0xFF
    return bytes(out)


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def mkv_duration(data: bytes, seconds: float) -> bytes:
    """A Matroska file whose Segment Info ``Duration`` (ms, 8-byte float) says ``seconds``."""
    i = data.index(b"\x44\x89\x88")  # element id 0x4489, size 8
    return data[: i + 3] + struct.pack(">d", seconds * 1000) + data[i + 11 :]


def flac_total_samples(data: bytes, samples: int) -> bytes:
    """A FLAC file whose STREAMINFO declares ``samples`` (per channel; 36 bits, no checksum covers it)."""
    at = 8 + 10  # "fLaC", block header, then 10 bytes before the 8 holding rate/channels/bits/total
    word = int.from_bytes(data[at : at + 8], "big")
    word = (word & ~((1 << 36) - 1)) | samples
    return data[:at] + word.to_bytes(8, "big") + data[at + 8 :]


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One random damage: cut at a random point, overwrite a few random bytes, or insert random bytes."""
    out = bytearray(data)
    op = rng.integers(0, 3)
    if op == 0:
        return bytes(out[: rng.integers(0, len(out))])
    if op == 1:
        for _ in range(rng.integers(1, 20)):
            out[rng.integers(0, len(out))] = rng.integers(0, 256)
        return bytes(out)
    i = rng.integers(0, len(out))
    return bytes(out[:i] + rng.bytes(int(rng.integers(1, 200))) + out[i:])


def mp4_durations(data: bytes, seconds: int) -> bytes:
    """An MP4 (version-0 boxes) whose ``mvhd`` and ``mdhd`` durations say ``seconds`` (the sample tables do not)."""
    out = bytearray(data)
    for box in (b"mvhd", b"mdhd"):
        i = out.index(box)
        timescale = struct.unpack(">I", out[i + 16 : i + 20])[0]
        out[i + 20 : i + 24] = struct.pack(">I", timescale * seconds)
    return bytes(out)


def image(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 20, 20)).save(buf, fmt)
    return buf.getvalue()


def low_rate_audio(samples: int = 4096) -> bytes:
    """8-bit PCM at 1 Hz in Matroska: a few KB that upsampled to 16 kHz would be ``samples`` x 16,000 floats."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        stream = out.add_stream("pcm_u8", rate=1, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.full((1, samples), 128, dtype=np.uint8), format="u8", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 1, 0, fractions.Fraction(1, 1)
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()


def noisy_h264(seconds: float = 3.0) -> bytes:
    """Random-pixel H.264: every byte of it matters, so flipped bytes are seen by the decoder."""
    return avclips.video(seconds, size=(128, 96), content="noise")


# --- the set -------------------------------------------------------------------------------------------------


def _cases() -> list[tuple[str, str, Callable[[], bytes], str, dict[str, Any]]]:
    short = {"max_av_duration_s": 5}
    v, a = "video", "audio"
    return [
        ("zero_length", v, lambda: b"", "undecodable", {}),
        ("random_bytes", v, lambda: np.random.default_rng(1).bytes(64 * 1024), "undecodable", {}),
        ("text_as_video", v, lambda: b"just some text, saved as clip.mp4\n" * 100, "undecodable", {}),
        ("png_as_video", v, lambda: image("PNG"), "container_not_allowed", {}),
        ("jpeg_as_audio", a, lambda: image("JPEG"), "container_not_allowed", {}),
        ("gif_as_video", v, lambda: image("GIF"), "container_not_allowed", {}),
        ("ffconcat_local_file", v, lambda: b"ffconcat version 1.0\nfile '/etc/passwd'\n", "container_not_allowed", {}),
        ("hls_local_file", a, lambda: b"#EXTM3U\n#EXTINF:10,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n", "undecodable", {}),
        ("wav_as_video", v, lambda: avclips.audio(1.0), "container_not_allowed", {}),
        ("avi_container", v, lambda: avclips.video(1.0, fmt="avi", codec="mpeg4"), "container_not_allowed", {}),
        (
            "mjpeg_codec",
            v,
            lambda: avclips.video(1.0, fmt="matroska", codec="mjpeg", pix_fmt="yuvj420p"),
            "codec_not_allowed",
            {},
        ),
        ("png_frames_in_mp4", v, lambda: avclips.video(1.0, codec="png", pix_fmt="rgb24"), "codec_not_allowed", {}),
        ("mulaw_codec", a, lambda: avclips.audio(1.0, codec="pcm_mulaw", rate=8000), "codec_not_allowed", {}),
        ("mp4_truncated", v, lambda: half(avclips.video(4.0)), "undecodable", {}),
        (
            "fragmented_mp4_truncated",
            v,
            lambda: half(avclips.video(4.0, container_options={"movflags": "frag_keyframe+empty_moov"})),
            "corrupt",
            {},
        ),
        ("webm_truncated", v, lambda: half(avclips.video(4.0, fmt="webm", codec="libvpx-vp9")), "truncated", {}),
        (
            "mp3_truncated",
            a,
            lambda: half(avclips.audio(4.0, fmt="mp3", codec="libmp3lame", rate=44_100)),
            "truncated",
            {},
        ),
        ("flac_truncated", a, lambda: half(avclips.audio(4.0, fmt="flac", codec="flac")), "corrupt", {}),
        ("aac_truncated", a, lambda: half(avclips.audio(4.0, fmt="mp4", codec="aac")), "undecodable", {}),
        (
            "flac_declares_10_hours",
            a,
            lambda: flac_total_samples(avclips.audio(1.0, fmt="flac", codec="flac"), 16_000 * 36_000),
            "too_long",
            {},
        ),
        (
            "mkv_declares_5_hours",
            v,
            lambda: mkv_duration(avclips.video(2.0, fmt="matroska"), 5 * 3600.0),
            "too_long",
            {},
        ),
        (
            "mkv_declares_1s_runs_20s",
            v,
            lambda: mkv_duration(avclips.video(20.0, fmt="matroska", rate=2), 1.0),
            "too_long",
            short,
        ),
        (
            "flac_declares_1s_runs_20s",
            a,
            lambda: flac_total_samples(avclips.audio(20.0, fmt="flac", codec="flac"), 16_000),
            "too_long",
            short,
        ),
        (
            "mkv_declares_1s_many_frames",
            v,
            lambda: mkv_duration(avclips.video(20.0, fmt="matroska", rate=2), 1.0),
            "too_many_frames",
            {"max_video_frames": 8},
        ),
        (
            "frames_8k",
            v,
            lambda: avclips.video(0.1, size=(7680, 4320), options={"preset": "ultrafast"}),
            "too_many_pixels",
            {},
        ),
        ("streams_50", a, lambda: avclips.audio(0.1, fmt="matroska", rate=8000, streams=50), "too_many_streams", {}),
        (
            "streams_1000",
            a,
            lambda: avclips.audio(0.05, fmt="matroska", rate=8000, streams=1000),
            "too_many_streams",
            {},
        ),
        ("channels_16", a, lambda: avclips.audio(0.5, channels=16), "too_many_channels", {}),
        ("rate_384k", a, lambda: avclips.audio(0.2, rate=384_000), "sample_rate_too_high", {}),
        ("rate_1hz", a, lambda: mkv_duration(low_rate_audio(), 0.001), "sample_rate_too_low", {}),
        (  # the rate floor lifted: the resampled size is refused before the resampler allocates it
            "rate_1hz_upsampled",
            a,
            lambda: mkv_duration(low_rate_audio(), 0.001),
            "too_many_samples",
            {"min_audio_sample_rate": 1},
        ),
        ("fps_1000", v, lambda: avclips.video(2.0, size=(32, 32), rate=1000), "frame_rate_too_high", {}),
        ("corrupt_h264", v, lambda: flip(noisy_h264()), "corrupt", {}),
        ("corrupt_mp3", a, lambda: flip(avclips.audio(3.0, fmt="mp3", codec="libmp3lame", rate=44_100)), "corrupt", {}),
        ("corrupt_aac", a, lambda: flip(avclips.audio(3.0, fmt="mp4", codec="aac")), "corrupt", {}),
        ("corrupt_flac", a, lambda: flip(avclips.audio(3.0, fmt="flac", codec="flac"), at=0.3, n=64), "corrupt", {}),
        ("audio_only_as_video", v, lambda: avclips.audio(1.0, fmt="mp4", codec="aac"), "no_video_stream", {}),
        ("video_only_as_audio", a, lambda: avclips.video(1.0), "no_audio_stream", {}),
        ("too_many_bytes", a, lambda: bytes(25 * MIB + 1), "too_large", {}),
    ]


STATUS = {  # the status each refusal must carry (issue #21: 413 too large, 415 not allowed, 422 unreadable)
    **dict.fromkeys(("undecodable", "corrupt", "truncated", "no_audio_stream", "no_video_stream"), 422),
    "sample_rate_too_low": 422,
    "frame_rate_too_high": 413,
    **dict.fromkeys(("container_not_allowed", "codec_not_allowed"), 415),
    **dict.fromkeys(("too_large", "too_long", "too_many_frames", "too_many_pixels", "too_many_streams"), 413),
    **dict.fromkeys(("too_many_channels", "sample_rate_too_high", "too_many_samples", "decode_too_slow"), 413),
}


def names() -> list[str]:
    """The cases' names, without generating them (for test parametrisation)."""
    return [c[0] for c in _cases()]


def build(*, default_settings_only: bool = False) -> list[Case]:
    """Generate every case (a few seconds, most of it the 8K frame and the 1000 streams); ``default_settings_only``:
    those refused under the default settings (what a server started with them must refuse)."""
    return [
        Case(name, kind, make(), reason, STATUS[reason], s)
        for name, kind, make, reason, s in _cases()
        if not (default_settings_only and s)
    ]


def write(cases: list[Case], folder: Path) -> None:
    manifest = []
    for case in cases:
        (folder / case.name).write_bytes(case.data)
        manifest.append(
            {
                "name": case.name,
                "kind": case.kind,
                "reason": case.reason,
                "status": case.status,
                "settings": case.settings,
            }
        )
    (folder / "manifest.json").write_text(json.dumps(manifest))


def read(folder: Path) -> list[Case]:
    return [
        Case(m["name"], m["kind"], (folder / m["name"]).read_bytes(), m["reason"], m["status"], m["settings"])
        for m in json.loads((folder / "manifest.json").read_text())
    ]
