"""Serving efficiency for video (issue #21): the Embedder's ``/encode`` of video clips vs in-process encode of the
same decoded arrays.

    nice -n 10 .venv/bin/python -m bench.av_serving              # tiny video embedder, ~4 min on 2 vCPUs
    nice -n 10 .venv/bin/python -m bench.av_serving --tiny       # smoke size (seconds)
    .venv/bin/python -m bench.av_serving --embedder-url URL      # an Embedder already serving the same model

Model: the tiny seeded Qwen2-VL video embedder (``service.tiny.build_tiny_video_embedder``; random weights: the
figures measure serving, not retrieval). Clips: ``--clips`` H.264 MP4s made with PyAV (``bench.support.avclips``,
moving content, each a different colour period), sent inline as data URIs, one clip per request.

1. raw, decode excluded: the model in this process (loaded as the service loads it, ``bench.serving.load_raw``),
   ``encode_query`` on the arrays ``service.avmedia`` decodes from the same bytes with the model's own sampling
   (``AVTarget``), at batch 1/8/32 (``bench.serving.measure_raw``);
2. service: a real ``bentoml serve service.embedder:Embedder`` on loopback, 1/8/32 closed-loop clients; the
   service always decodes (its figures include fetching the data URI, planning, decoding and the model);
3. paired rounds: raw at batch 32 and the service at 32 clients in alternating windows (``bench.serving``);
4. raw, decode included: ``VideoSpec.decode`` + ``encode_query`` per batch of 32, paired with the service the same way.

``ratio`` (the issue's figure) = service clips/s at 32 clients / raw clips/s at batch 32 on the same decoded arrays
(decode excluded: the service does strictly more work); ``ratio_decode_included`` compares equal work. A parity
check encodes one clip both ways (``parity_max_abs_diff``: the arrays are the same).
"""

from __future__ import annotations

import base64
import gc
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import serving
from bench.common import base_parser, bentos, json_bytes, print_table, run_header, tiny_dir, write_results
from bench.support import avclips


def make_clips(n: int, seconds: float, size: tuple[int, int]) -> list[bytes]:
    """``n`` H.264 MP4 clips of moving colours, 10 fps, each with its own colour period (distinct bytes)."""
    return [avclips.video(seconds, size=size, rate=10, colour_s=0.4 + 0.05 * i, content="moving") for i in range(n)]


def decoder(model: Any) -> Callable[[bytes], Any]:
    """Bytes to the sentence-transformers input the Embedder builds: decoded under the default media policy with
    the model's own frame sampling (``AVTarget.of``), as ``ModelInput.to_st`` gives it."""
    from service.avload import AVTarget
    from service.avmedia import VideoSpec
    from service.config import Settings
    from service.inputs import ModelInput

    settings, target = Settings(), AVTarget.of(model)

    def decode(data: bytes) -> Any:
        video = VideoSpec(fps=target.video_fps, max_frames=target.video_max_frames).decode(data, settings)
        return ModelInput(video=video).to_st()

    return decode


def parity(url: str, run: Callable[[list[Any]], Any], clip: bytes, decoded: Any) -> float:
    """Max abs difference of the served and the in-process (unit) vector of one clip."""
    body = {"inputs": [{"video": _data_uri(clip)}], "input_type": "query"}
    served = np.asarray(httpx.post(f"{url}/encode", json=body, timeout=120).json()["embeddings"][0])
    local = np.asarray(run([decoded])[0], dtype=np.float64)
    return float(np.abs(served - local / np.linalg.norm(local)).max())


def _data_uri(clip: bytes) -> str:
    return "data:video/mp4;base64," + base64.b64encode(clip).decode()


def measure(url: str, path: Path, clips: list[bytes], args: Any) -> dict[str, Any]:
    """Every measurement against the Embedder at ``url`` serving ``path``."""
    run = serving.load_raw("embedder", path, args)
    try:
        decode = decoder(run.model)  # type: ignore[attr-defined]
        decoded = [decode(c) for c in clips]
        bodies = [json_bytes({"inputs": [{"video": _data_uri(c)}], "input_type": "query"}) for c in clips]
        excluded = serving.Workload("embedder", "video", "/encode", decoded, bodies)
        included = serving.Workload("embedder", "video+decode", "/encode", clips, bodies)
        out: dict[str, Any] = {
            "parity_max_abs_diff": parity(url, run, clips[0], decoded[0]),
            "frames_per_clip": list(np.shape(decoded[0]["video"]["array"])),
            "decode_excluded": serving.measure_workload(run, url, excluded, args),
        }
        with_decode = _with_decode(run, decode)
        big = max(args.batches)
        out["decode_included"] = {
            "raw": [serving.measure_raw(with_decode, clips, big, args.raw_duration, args.raw_min_calls)],
            "paired": serving.paired_rounds(with_decode, url, included, big, args) if args.rounds else None,
        }
        return out
    finally:
        del run
        gc.collect()


def _with_decode(run: Callable[[list[Any]], Any], decode: Callable[[bytes], Any]) -> Callable[[list[Any]], Any]:
    return lambda batch: run([decode(c) for c in batch])


def summarize(res: dict[str, Any], args: Any) -> dict[str, Any]:
    """The headline figures: clips/s of each side at 32 (batch or clients) and both ratios."""
    excl, incl = res["decode_excluded"], res["decode_included"]
    c = args.paired_concurrency
    service = next((p for p in excl["service"] if p["concurrency"] == c), excl["service"][-1])
    raw_incl = incl["raw"][0]["items_per_s"]
    ratio_incl = incl["paired"]["ratio"] if incl["paired"] else round(service["items_per_s"] / raw_incl, 3)
    return {
        "clients": c,
        "batch": max(args.batches),
        "service_clips_per_s": service["items_per_s"],
        "raw_decode_excluded_clips_per_s": excl["raw_baseline_items_per_s"],
        "raw_decode_included_clips_per_s": raw_incl,
        "ratio": excl["ratio"],
        "ratio_decode_included": ratio_incl,
        "service_p50_ms": service["p50_ms"],
        "service_p99_ms": service["p99_ms"],
    }


def _rows(res: dict[str, Any]) -> list[list[Any]]:
    excl = res["decode_excluded"]
    rows = [[f"raw b={r['batch']} (decode excluded)", r["items_per_s"], r["call_latency"]["p50_ms"], ""]
            for r in excl["raw"]]  # fmt: skip
    rows += [[f"raw b={r['batch']} (decode included)", r["items_per_s"], r["call_latency"]["p50_ms"], ""]
             for r in res["decode_included"]["raw"]]  # fmt: skip
    rows += [[f"service c={p['concurrency']}", p["items_per_s"], p["p50_ms"], p["ratio_vs_raw"]]
             for p in excl["service"]]  # fmt: skip
    return rows


def parse_args(argv: Sequence[str] | None) -> Any:
    p = base_parser("Serving efficiency for video: the Embedder vs in-process encode of the same decoded arrays.")
    p.add_argument("--embedder-url", default=None, help="an Embedder serving --model (instead of starting one)")
    p.add_argument(
        "--raw-wait-policy",
        choices=["service", "default"],
        default="service",
        help="OpenMP wait policy in process: the service's (PASSIVE, RESULTS 11.3) or OpenMP's own (spinning)",
    )
    p.add_argument("--model", type=Path, default=None, help="video embedder directory (default: the tiny one)")
    p.add_argument("--clips", type=int, default=None, help="distinct clips (default 32; --tiny 4)")
    p.add_argument("--seconds", type=float, default=None, help="clip length, s (default 4; --tiny 1)")
    p.add_argument("--size", default=None, help="clip frame WxH (default 160x120; --tiny 64x48)")
    p.add_argument("--batches", default=None, help="raw batch sizes (default 1,8,32; --tiny 1,8)")
    p.add_argument("--concurrency", default=None, help="service clients (default 1,8,32; --tiny 1,8)")
    serving.add_timing_args(p)
    args = p.parse_args(argv)
    t = args.tiny
    args.clips = args.clips or (4 if t else 32)
    args.seconds = args.seconds or (1.0 if t else 4.0)
    args.size = tuple(int(x) for x in (args.size or ("64x48" if t else "160x120")).split("x"))
    args.batches = [int(x) for x in (args.batches or ("1,8" if t else "1,8,32")).split(",")]
    args.concurrency = [int(x) for x in (args.concurrency or ("1,8" if t else "1,8,32")).split(",")]
    serving.timing_defaults(args)
    args.paired_concurrency = max(args.concurrency)
    args.device, args.dtype, args.max_batch_size = "cpu", "auto", 32  # what bench.serving's helpers read
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from service.cpus import quiet_thread_pools

    # the raw side as the service runs torch: idle OpenMP threads sleep (too late where torch is loaded already)
    wait_policy_applied = args.raw_wait_policy == "service" and quiet_thread_pools()
    from service.tiny import ensure_tiny_av_models

    path = args.model or ensure_tiny_av_models(tiny_dir()).video_embedder
    clips = make_clips(args.clips, args.seconds, args.size)
    results: dict[str, Any] = {**run_header(args), "model_path": str(path), "loadavg_start": os.getloadavg()}
    results["raw_omp_wait_policy"] = {"value": os.environ.get("OMP_WAIT_POLICY"), "applied": wait_policy_applied}
    results["clip_bytes_mean"] = round(sum(map(len, clips)) / len(clips))
    started = time.monotonic()
    if args.embedder_url:
        results.update(measure(args.embedder_url.rstrip("/"), path, clips, args))
    else:
        with tempfile.TemporaryDirectory(prefix="mmsearch-bench-") as tmp:
            env = serving.service_env(Path(tmp) / "embedder", "embedder", path, args, args.tiny)
            with bentos([("service.embedder:Embedder", env)], Path(tmp)) as (server,):
                results["server_ready_s"] = server.ready_s
                results.update(measure(server.url, path, clips, args))
    results["summary"] = summarize(results, args)
    results["loadavg_end"] = os.getloadavg()
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    size = "x".join(map(str, args.size))
    print_table(
        f"Video serving efficiency ({args.clips} clips of {args.seconds:g} s {size}, frames "
        f"{results['frames_per_clip']}, threads={args.threads})",
        ["mode", "clips/s", "p50 ms", "ratio vs raw b=32 (decode excluded)"],
        _rows(results),
    )
    print(json.dumps(results["summary"], indent=1))
    write_results(args.out, "av_serving" + ("-tiny" if args.tiny else ""), results)
    return results


if __name__ == "__main__":
    main()
