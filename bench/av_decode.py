"""Audio/video decode throughput of ``service.avmedia`` (issue #21), in process, on clips made with PyAV.

    nice -n 10 .venv/bin/python -m bench.av_decode            # ~1-2 min on 2 vCPUs
    nice -n 10 .venv/bin/python -m bench.av_decode --tiny     # smoke size (seconds)

Each clip shape is generated once (not timed), then decoded ``--repeats`` times from bytes exactly as the services
will: video sampled at ``MMSEARCH_VIDEO_FPS`` (2) and scaled to ``MMSEARCH_VIDEO_FRAME_PIXELS``, audio resampled to
16 kHz mono. Video runs with ``MMSEARCH_AV_DECODE_THREADS=1`` (the default: items decode side by side) and ``0``
(FFmpeg picks). Reports clips/s and media seconds decoded per wall second; the host's load is recorded per shape.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.common import HostLoad, base_parser, print_table, run_header, write_results
from bench.support import avclips


@dataclass(frozen=True)
class Shape:
    name: str
    kind: str  # "audio" or "video"
    seconds: float
    make: Callable[[float], bytes]


def _video(size: tuple[int, int], codec: str = "libx264", fmt: str = "mp4") -> Callable[[float], bytes]:
    return lambda s: avclips.video(s, fmt=fmt, codec=codec, size=size, rate=30, content="moving")


def _audio(fmt: str, codec: str, rate: int, channels: int = 1) -> Callable[[float], bytes]:
    return lambda s: avclips.audio(s, fmt=fmt, codec=codec, rate=rate, channels=channels)


def shapes(tiny: bool) -> list[Shape]:
    if tiny:
        return [
            Shape("video h264 320x180 30fps", "video", 1.0, _video((320, 180))),
            Shape("audio mp3 44.1k stereo", "audio", 2.0, _audio("mp3", "libmp3lame", 44_100, 2)),
        ]
    return [
        Shape("video h264 640x360 30fps", "video", 10.0, _video((640, 360))),
        Shape("video h264 1280x720 30fps", "video", 10.0, _video((1280, 720))),
        Shape("video vp9 640x360 30fps", "video", 10.0, _video((640, 360), "libvpx-vp9", "webm")),
        Shape("audio wav 16k mono", "audio", 60.0, _audio("wav", "pcm_s16le", 16_000)),
        Shape("audio flac 44.1k mono", "audio", 60.0, _audio("flac", "flac", 44_100)),
        Shape("audio mp3 44.1k stereo", "audio", 60.0, _audio("mp3", "libmp3lame", 44_100, 2)),
        Shape("audio opus 48k mono", "audio", 60.0, _audio("ogg", "libopus", 48_000)),
    ]


def measure(shape: Shape, data: bytes, threads: int, repeats: int) -> dict[str, Any]:
    """Decode ``data`` ``repeats`` times; throughput and what one decode returned."""
    from service.avmedia import AudioSpec, VideoSpec
    from service.config import Settings

    settings = Settings(av_decode_threads=threads)
    load = HostLoad().start()
    spec = AudioSpec(rate=16_000) if shape.kind == "audio" else VideoSpec()
    t0 = time.perf_counter()
    for _ in range(repeats):
        out: Any = spec.decode(data, settings)
    elapsed = time.perf_counter() - t0
    result = {
        "shape": shape.name,
        "threads": threads,
        "bytes": len(data),
        "media_s": shape.seconds,
        "repeats": repeats,
        "clips_per_s": round(repeats / elapsed, 2),
        "media_s_per_s": round(repeats * shape.seconds / elapsed, 1),
        "ms_per_clip": round(elapsed / repeats * 1000, 1),
        "host": load.stop(),
    }
    if shape.kind == "video":
        result["frames_out"] = list(out.frames.shape)
    else:
        result["samples_out"] = list(out.samples.shape)
    return result


def _row(r: dict[str, Any]) -> list[Any]:
    out = "x".join(map(str, r.get("frames_out") or r["samples_out"]))
    return [r["shape"], r["threads"], r["bytes"], r["clips_per_s"], r["media_s_per_s"], r["ms_per_clip"], out,
            r["host"]["loadavg_1m"]]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = base_parser(__doc__ or "")
    p.add_argument("--repeats", type=int, default=None, help="decodes per shape (default 5; --tiny 1)")
    args = p.parse_args(argv)
    args.repeats = args.repeats or (1 if args.tiny else 5)
    results: dict[str, Any] = {**run_header(args), "points": []}
    for shape in shapes(args.tiny):
        data = shape.make(shape.seconds)
        for threads in (1, 0) if shape.kind == "video" else (1,):
            results["points"].append(measure(shape, data, threads, args.repeats))
            print(f"  {shape.name} threads={threads}: {results['points'][-1]['clips_per_s']} clips/s", flush=True)
    title = "service.avmedia decode (video: 2 fps sampled, scaled to 602,112 px; audio: 16 kHz mono float32)"
    headers = ["clip", "threads", "bytes", "clips/s", "media s/s", "ms/clip", "output", "load 1m"]
    print_table(title, headers, [_row(r) for r in results["points"]])
    write_results(args.out, "av_decode" + ("-tiny" if args.tiny else ""), results)
    return results


if __name__ == "__main__":
    main()
