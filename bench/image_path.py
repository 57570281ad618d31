"""Image path: ``service.media.MediaLoader`` fetch + decode throughput, URL from a local HTTP server vs inline.

    .venv/bin/python -m bench.image_path           # 50 KB / 500 KB / 5 MB, PNG and JPEG (~2 min)
    .venv/bin/python -m bench.image_path --tiny    # 50 KB PNG only (seconds)

For each image (photo-like content sized to about 50 KB, 500 KB and 5 MB) the loader is driven by 1 and 8
concurrent tasks for a fixed time:

* ``url``: ``http://127.0.0.1:<port>/...`` from a static server in another process (keep-alive HTTP/1.1), with
  the loader's full policy (address vetting and pinning, streaming byte cap, decode in a worker thread);
* ``inline``: the same bytes as a ``data:image/...;base64,`` URI (strict base64 decode, then the same decode);
* ``decode``: ``decode_bytes`` on the raw bytes: the floor both paths share.

Inline data URIs also cost JSON parsing of the request body in a service, which this benchmark leaves out.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import data
from bench.common import (
    HostLoad,
    StaticProcess,
    base_parser,
    latency_summary,
    print_table,
    run_header,
    write_results,
)

SIZES = {"50KB": 50_000, "500KB": 500_000, "5MB": 5_000_000}


def settings() -> Any:
    from service.config import Settings

    return Settings(
        fetch_allow=("127.0.0.1/32",),
        max_image_bytes=64 * 1024 * 1024,
        max_image_pixels=100_000_000,
        fetch_deadline_s=60,
        fetch_read_timeout_s=30,
    )


async def _drive(loader: Any, refs: list[str], concurrency: int, duration: float, mode: str) -> dict[str, Any]:
    lat: list[float] = []
    stop = time.perf_counter() + duration
    nbytes = 0

    async def one(i: int) -> None:
        nonlocal nbytes
        k = i
        while time.perf_counter() < stop or not lat:
            ref = refs[k % len(refs)]
            k += concurrency
            t0 = time.perf_counter()
            if mode == "decode":
                img = await asyncio.to_thread(loader.decode_bytes, ref, "image")
            else:
                img = await loader.load(ref, "image")
            lat.append((time.perf_counter() - t0) * 1000)
            if img.size[0] < 1:
                raise RuntimeError("empty image")

    load = HostLoad().start()
    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - t0
    return {
        "images": len(lat),
        "images_per_s": round(len(lat) / elapsed, 2),
        **latency_summary(lat),
        "host": load.stop(),
    }


def run_point(loader: Any, refs: list[Any], concurrency: int, duration: float, mode: str) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        await loader.load(refs[0], "image") if mode != "decode" else None  # connect / warm
        try:
            return await _drive(loader, refs, concurrency, duration, mode)
        finally:
            await loader.aclose()

    return asyncio.run(go())


def parse_args(argv: Sequence[str] | None) -> Any:
    p = base_parser("MediaLoader fetch+decode throughput: local HTTP URLs vs inline data URIs.")
    p.add_argument("--sizes", default=None, help="comma list of 50KB,500KB,5MB")
    p.add_argument("--formats", default=None, help="PNG,JPEG")
    p.add_argument("--concurrency", default=None, help="default 1,8")
    p.add_argument("--duration", type=float, default=None, help="seconds per point (default 4)")
    args = p.parse_args(argv)
    args.sizes = (args.sizes or ("50KB" if args.tiny else "50KB,500KB,5MB")).split(",")
    args.formats = (args.formats or ("PNG" if args.tiny else "PNG,JPEG")).upper().split(",")
    args.concurrency = [int(x) for x in (args.concurrency or ("1,4" if args.tiny else "1,8")).split(",")]
    args.duration = args.duration or (0.3 if args.tiny else 4.0)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from service.media import MediaLoader

    started = time.monotonic()
    results: dict[str, Any] = {
        **run_header(args),
        "images": {},
        "points": [],
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="mmsearch-images-") as tmp:
        root = Path(tmp)
        files: dict[tuple[str, str], list[bytes]] = {}
        for fmt in args.formats:
            for label in args.sizes:
                ext = "jpg" if fmt == "JPEG" else "png"
                blobs = []
                for seed in range(4):  # a few distinct images per size
                    blob, dims = data.image_of_bytes(SIZES[label], fmt, seed=seed)
                    (root / f"{label}-{seed}.{ext}").write_bytes(blob)
                    blobs.append(blob)
                files[(fmt, label)] = blobs
                results["images"][f"{fmt}/{label}"] = {"bytes": [len(b) for b in blobs], "pixels": list(dims)}
        with StaticProcess(root) as static:
            for (fmt, label), blobs in files.items():
                ext = "jpg" if fmt == "JPEG" else "png"
                refs_by_mode: dict[str, list[Any]] = {
                    "url": [f"{static.url}/{label}-{s}.{ext}" for s in range(len(blobs))],
                    "inline": [data.data_uri(b, fmt) for b in blobs],
                    "decode": blobs,
                }
                mean_bytes = sum(len(b) for b in blobs) / len(blobs)
                for mode, refs in refs_by_mode.items():
                    for c in args.concurrency:
                        r = run_point(MediaLoader(settings()), refs, c, args.duration, mode)
                        r.update(format=fmt, size=label, mode=mode, concurrency=c)
                        r["mb_per_s"] = round(r["images_per_s"] * mean_bytes / 1e6, 1)
                        results["points"].append(r)
                        rows.append([fmt, label, mode, c, r["images_per_s"], r["mb_per_s"], r["p50_ms"], r["p99_ms"]])
                        print(f"  {fmt} {label:5s} {mode:6s} c={c}: {r['images_per_s']} img/s, p50 {r['p50_ms']} ms",
                              flush=True)  # fmt: skip
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    print_table(
        "MediaLoader fetch + decode (url: local HTTP server; inline: data URI; decode: bytes only)",
        ["format", "size", "mode", "tasks", "img/s", "MB/s", "p50 ms", "p99 ms"],
        rows,
    )
    write_results(args.out, "image_path" + ("-tiny" if args.tiny else ""), results)
    return results


if __name__ == "__main__":
    main()
