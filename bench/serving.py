"""Serving efficiency: the Embedder and Reranker services vs the same model called in-process.

    .venv/bin/python -m bench.serving                 # ViT-B/32-shaped CLIP + small VLM reranker, CPU (~9 min)
    .venv/bin/python -m bench.serving --tiny          # smoke size (tiny models, seconds)
    .venv/bin/python -m bench.serving --tiny --embedder-url URL --reranker-url URL   # services already running
    .venv/bin/python -m bench.serving --model qwen3vl-2b --device cuda --dtype bfloat16   # see bench/gpu.sh

For each modality (text, image; reranker: text->text and text->image pairs):

1. raw: the model in this process (loaded by ``service.models`` with the same settings and thread count as the
   service), ``encode_query`` / ``predict`` exactly as the service's batch function calls it, at batch 1/8/32;
2. service: a real ``bentoml serve service.embedder:Embedder`` (``service.reranker:Reranker``) on loopback, with
   1/8/32/64 closed-loop clients each sending ONE input per request (images inline as data URIs, or
   ``--image-source url`` from a local static server); the batch sizes the model saw are scraped from /metrics;
3. paired rounds: raw at batch 32 and the service at 64 clients in alternating 8 s windows (x2), so that both see
   the same background load on a shared machine.

Ratio = service inputs/s / raw inputs/s at batch 32, from the paired rounds (the sweep's ratios are reported too).
Service throughput is ``clients / mean cycle time`` (Little's law; see ``bench.common.LoadResult``). Goal on CPU:
ratio >= 0.95 at 32 clients (``--paired-concurrency``).

Threads: by default (``--threads auto``) both sides run at their own defaults: the service with
``MMSEARCH_TORCH_THREADS=auto`` (``service.cpus``), the raw model with torch's own thread count, untouched.
``--threads N`` gives both N threads. The load client runs on the same machine.
"""

from __future__ import annotations

import functools
import gc
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import data, models
from bench.common import (
    HostLoad,
    StaticProcess,
    base_parser,
    bench_env,
    bentos,
    closed_loop,
    foreign_processes,
    histogram_delta,
    json_bytes,
    latency_summary,
    machine_info,
    print_table,
    scrape_batch_histogram,
    write_results,
)

POOL = 64  # distinct inputs per workload


@dataclass
class Workload:
    """One measured stream: what the model gets in-process, and the request bodies the service gets."""

    service: str  # "embedder" | "reranker"
    name: str  # e.g. "text", "image", "text->image"
    route: str
    model_inputs: list[Any]
    bodies: list[bytes]


def _check_ok(payload: bytes) -> None:
    if not payload.startswith(b"{"):
        raise ValueError(f"unexpected body {payload[:80]!r}")


def embed_workloads(modalities: Sequence[str], image_source: str, static_url: str | None) -> list[Workload]:
    out = []
    if "text" in modalities:
        ts = data.texts(POOL)
        out.append(
            Workload(
                "embedder",
                "text",
                "/encode",
                [{"text": t} for t in ts],
                [json_bytes({"inputs": [t], "input_type": "query"}) for t in ts],
            )
        )
    if "image" in modalities:
        pngs, refs = _image_pool(image_source, static_url)
        out.append(
            Workload(
                "embedder",
                "image",
                "/encode",
                [_decode(p) for p in pngs],
                [json_bytes({"inputs": [{"image": r}], "input_type": "query"}) for r in refs],
            )
        )
    return out


@functools.cache
def _pngs() -> tuple[bytes, ...]:
    """The benchmark PNGs (~80 KB photo-like images: ~1.3 CPU-s to make, so the Embedder's and the Reranker's
    workloads share one pool)."""
    return tuple(data.encode(data.photo_like(i)) for i in range(POOL))


def _image_pool(image_source: str, static_url: str | None) -> tuple[list[bytes], list[str]]:
    """The benchmark PNGs and how requests refer to them (static-server URLs or inline data URIs)."""
    pngs = list(_pngs())
    if image_source == "url":
        return pngs, [f"{static_url}/img{i}.png" for i in range(POOL)]
    return pngs, [data.data_uri(p) for p in pngs]


def rerank_workloads(modalities: Sequence[str], image_source: str, static_url: str | None) -> list[Workload]:
    query = "a red car parked near the river at night"
    out = []
    if "text" in modalities:
        docs = [f"{a}. {b}" for a, b in zip(data.texts(POOL, seed=1), data.texts(POOL, seed=2), strict=True)]
        out.append(
            Workload(
                "reranker",
                "text->text",
                "/rerank",
                [({"text": query}, {"text": d}) for d in docs],
                [json_bytes({"query": query, "documents": [d]}) for d in docs],
            )
        )
    if "image" in modalities:
        pngs, refs = _image_pool(image_source, static_url)
        out.append(
            Workload(
                "reranker",
                "text->image",
                "/rerank",
                [({"text": query}, _decode(p)) for p in pngs],
                [json_bytes({"query": query, "documents": [{"image": r}]}) for r in refs],
            )
        )
    return out


def _decode(png: bytes) -> Any:
    import io

    from PIL import Image

    return Image.open(io.BytesIO(png)).convert("RGB")


# ----------------------------------------------------------------------------------------------- raw


def _settings(kind: str, model_path: Path, args: Any) -> Any:
    from service.config import Settings

    key = "embedder_model" if kind == "embedder" else "reranker_model"
    return Settings(
        profile="default",
        device=args.device,
        dtype=args.dtype,
        torch_threads=args.threads,
        **{key: str(model_path)},
    )


def load_raw(kind: str, model_path: Path, args: Any) -> Callable[[list[Any]], Any]:
    """The model loaded as the service loads it, called like sentence-transformers is called in-process
    (``encode_query`` / ``predict`` on the whole batch). ``--threads auto``: torch keeps its own thread count."""
    import torch

    from service.models import load_embedder, load_reranker

    own_threads = torch.get_num_threads()
    if kind == "embedder":
        model = load_embedder(_settings(kind, model_path, args)).model  # type: ignore[attr-defined]

        def run(batch: list[Any]) -> Any:
            with torch.inference_mode():
                return model.encode_query(
                    batch,
                    batch_size=len(batch),
                    convert_to_numpy=True,
                    normalize_embeddings=False,
                    show_progress_bar=False,
                )

    else:
        model = load_reranker(_settings(kind, model_path, args)).model  # type: ignore[attr-defined]

        def run(batch: list[Any]) -> Any:
            with torch.inference_mode():
                return model.predict(batch, batch_size=len(batch), convert_to_numpy=True, show_progress_bar=False)

    if args.threads == "auto":
        torch.set_num_threads(own_threads)  # the raw side at torch's defaults, not the service's plan
    run.model = model  # type: ignore[attr-defined]
    return run


def measure_raw(
    run: Callable[[list[Any]], Any], inputs: list[Any], batch: int, duration: float, min_calls: int = 3
) -> dict[str, Any]:
    """Call ``run`` on consecutive batches of ``inputs`` for ``duration`` s (at least ``min_calls`` calls after 1
    warm-up)."""
    k = 0

    def next_batch() -> list[Any]:
        nonlocal k
        out = [inputs[(k + i) % len(inputs)] for i in range(batch)]
        k += batch
        return out

    run(next_batch())  # warm-up
    lat: list[float] = []
    load = HostLoad().start()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < duration or len(lat) < min_calls:
        b = next_batch()
        s = time.perf_counter()
        run(b)
        lat.append((time.perf_counter() - s) * 1000)
    elapsed = time.perf_counter() - t0
    return {
        "batch": batch,
        "calls": len(lat),
        "items_per_s": round(len(lat) * batch / elapsed, 3),
        "call_latency": latency_summary(lat),
        "host": load.stop(),
    }


# ----------------------------------------------------------------------------------------------- service


def measure_service(
    base_url: str, w: Workload, concurrencies: Sequence[int], duration: float, min_warmup: float
) -> list[dict[str, Any]]:
    points = []
    for c in concurrencies:
        before = scrape_batch_histogram(base_url)
        load = HostLoad().start()
        res = closed_loop(
            base_url + w.route, w.bodies, concurrency=c, duration_s=duration, min_warmup_s=min_warmup, check=_check_ok
        )
        host = load.stop()
        batches = histogram_delta(before, scrape_batch_histogram(base_url))
        point = {**res.summary(), "host": host, "model_batches": batches}
        points.append(point)
        mean_batch = "/".join(str(b["mean_batch_size"]) for b in batches.values()) or "-"
        print(
            f"  {w.service} {w.name:12s} c={c:3d}: {res.items_per_s:8.2f} inputs/s  p50 {point['p50_ms']:8.1f} ms"
            f"  p99 {point['p99_ms']:8.1f} ms  errors {res.errors}  mean batch {mean_batch}"
            f"  foreign cpu {host['foreign_cpu_frac']:.2f}",
            flush=True,
        )
    return points


# ----------------------------------------------------------------------------------------------- main


def service_env(workdir: Path, kind: str, model_path: Path, args: Any, tiny: bool) -> dict[str, str]:
    key = "MMSEARCH_EMBEDDER_MODEL" if kind == "embedder" else "MMSEARCH_RERANKER_MODEL"
    env = bench_env(
        workdir,
        **{
            key: str(model_path),
            "MMSEARCH_PROFILE": "tiny" if tiny else "default",
            "MMSEARCH_TORCH_THREADS": str(args.threads),
            "OMP_NUM_THREADS": str(args.threads),
            "MMSEARCH_DEVICE": args.device,
            "MMSEARCH_DTYPE": args.dtype,
            "MMSEARCH_MAX_BATCH_SIZE": str(args.max_batch_size),
            "MMSEARCH_MAX_IMAGE_BYTES": str(20 * 1024 * 1024),
        },
    )
    if args.threads == "auto":
        env.pop("OMP_NUM_THREADS")  # the service's defaults: MMSEARCH_TORCH_THREADS=auto sets torch's threads
    return env


def _print_raw(kind: str, name: str, r: dict[str, Any], label: str = "raw") -> None:
    print(
        f"  {kind} {name:12s} {label} b={r['batch']:3d}: {r['items_per_s']:8.2f} inputs/s"
        f"  call p50 {r['call_latency']['p50_ms']:8.1f} ms  foreign cpu {r['host']['foreign_cpu_frac']:.2f}",
        flush=True,
    )


def paired_rounds(run: Callable[[list[Any]], Any], url: str, w: Workload, batch: int, args: Any) -> dict[str, Any]:
    """Alternate raw (batch ``batch``) and service (``args.paired_concurrency`` clients) windows.

    On a shared machine the load from other jobs drifts by tens of percent within minutes; alternating short
    windows exposes raw and service to the same drift. Ratio = sum of service inputs/s / sum of raw inputs/s.
    """
    rounds = []
    for _ in range(args.rounds):
        raw = measure_raw(run, w.model_inputs, batch, args.paired_duration, args.raw_min_calls)
        load = HostLoad().start()
        svc = closed_loop(
            url + w.route,
            w.bodies,
            concurrency=args.paired_concurrency,
            duration_s=args.paired_duration,
            min_warmup_s=args.min_warmup,
            check=_check_ok,
        )
        rounds.append(
            {
                "raw_items_per_s": raw["items_per_s"],
                "raw_host": raw["host"],
                "service": {**svc.summary(), "host": load.stop()},
                "ratio": round(svc.items_per_s / raw["items_per_s"], 3),
            }
        )
        print(
            f"  {w.service} {w.name:12s} paired: raw b={batch} {raw['items_per_s']:8.2f} | service"
            f" c={args.paired_concurrency} {svc.items_per_s:8.2f} inputs/s -> ratio {rounds[-1]['ratio']:.3f}",
            flush=True,
        )
    raw_sum = sum(r["raw_items_per_s"] for r in rounds)
    svc_sum = sum(r["service"]["items_per_s"] for r in rounds)
    return {
        "batch": batch,
        "concurrency": args.paired_concurrency,
        "rounds": rounds,
        "ratio": round(svc_sum / raw_sum, 3),
        "ratio_min": min(r["ratio"] for r in rounds),
        "ratio_max": max(r["ratio"] for r in rounds),
    }


def finish(res: dict[str, Any], big: int) -> None:
    """Ratios (sweep: vs raw at the largest batch; paired: alternating windows) and the batching gain."""
    baseline = next(r for r in res["raw"] if r["batch"] == big)["items_per_s"]
    res["raw_baseline_items_per_s"] = baseline
    res["raw_baseline_batch"] = big
    for p in res["service"]:
        p["ratio_vs_raw"] = round(p["items_per_s"] / baseline, 3)
    best = max(res["service"], key=lambda p: p["ratio_vs_raw"])
    res["best_sweep_ratio"], res["best_sweep_ratio_concurrency"] = best["ratio_vs_raw"], best["concurrency"]
    res["ratio"] = res["paired"]["ratio"] if res.get("paired") else best["ratio_vs_raw"]
    c1 = next((p for p in res["service"] if p["concurrency"] == 1), None)
    c32 = next((p for p in res["service"] if p["concurrency"] == 32), None)
    if c1 and c32 and c1["items_per_s"]:
        res["batching_gain_32_vs_1"] = round(c32["items_per_s"] / c1["items_per_s"], 3)


def run_all(kinds: dict[str, tuple[Path, list[Workload]]], args: Any, workdir: Path) -> dict[str, Any]:
    """Start every service, then per service: load its model in this process too, and per workload measure the
    raw sweep, the service sweep and the paired rounds. An idle server or an idle in-process model costs only
    memory, so each measurement has the CPU to itself (apart from other jobs on the machine)."""
    targets = {"embedder": "service.embedder:Embedder", "reranker": "service.reranker:Reranker"}
    given = {"embedder": args.embedder_url, "reranker": args.reranker_url}
    specs = [
        (targets[k], service_env(workdir / k, k, p, args, args.tiny)) for k, (p, _) in kinds.items() if not given[k]
    ]
    out: dict[str, Any] = {}
    with bentos(specs, workdir) as servers:
        started = iter(servers)
        for kind, (path, workloads) in kinds.items():
            server = None if given[kind] else next(started)
            url = given[kind].rstrip("/") if given[kind] else server.url
            ready_s = server.ready_s if server is not None else None
            out[kind] = {
                "model_path": str(path),
                "server_ready_s": ready_s,
                "url_given": server is None,
                "workloads": {},
            }
            run = load_raw(kind, path, args)
            try:
                for w in workloads:
                    out[kind]["workloads"][w.name] = measure_workload(run, url, w, args)
            finally:
                del run
                gc.collect()
                _empty_cuda()
    return out


def measure_workload(run: Callable[[list[Any]], Any], url: str, w: Workload, args: Any) -> dict[str, Any]:
    """One workload: the raw sweep (``args.batches``), the service sweep (``args.concurrency``) against the service
    at ``url``, the paired rounds (``args.rounds``), and the ratios (``finish``)."""
    big = max(args.batches)
    res: dict[str, Any] = {"raw": []}
    for b in args.batches:
        res["raw"].append(measure_raw(run, w.model_inputs, b, args.raw_duration, args.raw_min_calls))
        _print_raw(w.service, w.name, res["raw"][-1])
    res["service"] = measure_service(url, w, args.concurrency, args.duration, args.min_warmup)
    if args.rounds:
        res["paired"] = paired_rounds(run, url, w, big, args)
    finish(res, big)
    return res


def _empty_cuda() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def summary_rows(results: dict[str, Any]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for kind in ("embedder", "reranker"):
        for name, res in results.get(kind, {}).get("workloads", {}).items():
            for r in res["raw"]:
                rows.append(
                    [
                        kind,
                        name,
                        f"raw b={r['batch']}",
                        r["items_per_s"],
                        r["call_latency"]["p50_ms"],
                        r["call_latency"]["p99_ms"],
                        "",
                        "",
                        "",
                    ]
                )
            for p in res["service"]:
                mean = "/".join(str(b["mean_batch_size"]) for b in p["model_batches"].values())
                rows.append(
                    [
                        kind,
                        name,
                        f"service c={p['concurrency']}",
                        p["items_per_s"],
                        p["p50_ms"],
                        p["p99_ms"],
                        p["ratio_vs_raw"],
                        mean,
                        p["errors"],
                    ]
                )
            if res.get("paired"):
                pr = res["paired"]
                rows.append(
                    [kind, name, f"paired b={pr['batch']}/c={pr['concurrency']} x{len(pr['rounds'])}", "", "", "",
                     f"{pr['ratio']} [{pr['ratio_min']}-{pr['ratio_max']}]", "", ""]
                )  # fmt: skip
    return rows


def parse_args(argv: Sequence[str] | None) -> Any:
    p = base_parser("Serving efficiency: Embedder/Reranker services vs raw in-process encode.")
    p.add_argument("--model", default=None, choices=["vitb32", "tiny", "qwen3vl-2b", "qwen3vl-tiny"])
    p.add_argument("--reranker", default=None, choices=["small", "tiny", "none"])
    p.add_argument("--modalities", default="text,image")
    p.add_argument("--batches", default=None, help="raw batch sizes (default 1,8,32)")
    p.add_argument("--concurrency", default=None, help="service clients (default 1,8,32,64)")
    add_timing_args(p)
    p.add_argument("--image-source", choices=["inline", "url"], default="inline")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument("--max-batch-size", type=int, default=32, help="MMSEARCH_MAX_BATCH_SIZE")
    p.add_argument("--paired-concurrency", type=int, default=None, help="service clients in the paired rounds (32)")
    p.add_argument("--name", default=None, help="result file name (default serving-<model>)")
    p.add_argument("--embedder-url", default=None, help="an Embedder already serving --model (none started)")
    p.add_argument("--reranker-url", default=None, help="a Reranker already serving --reranker (none started)")
    args = p.parse_args(argv)
    t = args.tiny
    args.model = args.model or ("tiny" if t else "vitb32")
    args.reranker = args.reranker or ("tiny" if t else "small")
    args.batches = [int(x) for x in (args.batches or ("1,8" if t else "1,8,32")).split(",")]
    args.concurrency = [int(x) for x in (args.concurrency or ("1,32" if t else "1,8,32,64")).split(",")]
    timing_defaults(args)
    args.paired_concurrency = args.paired_concurrency or (max(args.concurrency) if t else 32)
    args.modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    args.name = args.name or f"serving-{args.model}" + ("-tiny" if t and args.model != "tiny" else "")
    return args


def add_timing_args(p: Any) -> None:
    """The measurement options this harness shares with ``bench.av_serving`` (defaults: ``timing_defaults``)."""
    p.add_argument("--threads", default="auto", help="torch threads: auto (both sides at their defaults) or N (both)")
    p.add_argument("--duration", type=float, default=None, help="measured window per service point, s")
    p.add_argument("--raw-duration", type=float, default=None, help="measured time per raw batch size, s")
    p.add_argument("--min-warmup", type=float, default=None)
    p.add_argument("--rounds", type=int, default=None, help="paired raw/service rounds (default 2; 0: none)")
    p.add_argument("--paired-duration", type=float, default=None, help="seconds per paired window (default 8)")


def timing_defaults(args: Any) -> None:
    """Fill in ``add_timing_args``' options: full size, or the smoke size with ``args.tiny`` (its figures mean
    nothing: the shortest windows that still measure every point once; ``bench/gpu.sh --dry-run`` runs it with a
    model whose raw call takes seconds, hence one raw call after the warm-up instead of three)."""
    t = args.tiny
    args.duration = args.duration or (0.2 if t else 10.0)
    args.raw_duration = args.raw_duration or (0.1 if t else 8.0)
    args.raw_min_calls = 1 if t else 3
    args.rounds = args.rounds if args.rounds is not None else (1 if t else 2)
    args.paired_duration = args.paired_duration or (0.1 if t else 8.0)
    args.threads = args.threads if args.threads == "auto" else int(args.threads)
    args.min_warmup = args.min_warmup if args.min_warmup is not None else (0.1 if t else 3.0)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch

    if args.threads != "auto":
        torch.set_num_threads(args.threads)
    info = machine_info()
    info["torch_threads_raw"] = torch.get_num_threads()
    busy = foreign_processes()
    started = time.monotonic()
    emb_path = models.embedder_path(args.model)
    rr_path = None if args.reranker == "none" else models.reranker_path(args.reranker)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results: dict[str, Any] = {"machine": info, "settings": settings, "foreign_processes_at_start": busy}
    with tempfile.TemporaryDirectory(prefix="mmsearch-bench-") as tmp:
        workdir = Path(tmp)
        static = None
        if args.image_source == "url":
            data.write_images(workdir / "images", POOL)
            static = StaticProcess(workdir / "images").__enter__()
        try:
            url = static.url if static else None
            kinds: dict[str, tuple[Path, list[Workload]]] = {
                "embedder": (emb_path, embed_workloads(args.modalities, args.image_source, url))
            }
            if rr_path is not None:
                kinds["reranker"] = (rr_path, rerank_workloads(args.modalities, args.image_source, url))
            print(f"embedder {args.model}, reranker {args.reranker}, threads={args.threads}, device={args.device}")
            results.update(run_all(kinds, args, workdir))
        finally:
            if static is not None:
                static.__exit__()
    results["goal"] = {"ratio_min": 0.95, **_goal(results)}
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    print_table(
        f"Serving efficiency ({args.model} / {args.reranker}, threads={args.threads}, device={args.device})",
        ["service", "workload", "mode", "inputs/s", "p50 ms", "p99 ms", "ratio", "mean batch", "errors"],
        summary_rows(results),
    )
    print(json.dumps(results["goal"], indent=1))
    write_results(args.out, args.name, results)
    return results


def _goal(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("embedder", "reranker"):
        for name, res in results.get(kind, {}).get("workloads", {}).items():
            out[f"{kind}/{name}"] = {
                "ratio": res["ratio"],
                "paired": {k: res["paired"][k] for k in ("ratio_min", "ratio_max", "concurrency")}
                if res.get("paired")
                else None,
                "best_sweep_ratio": res["best_sweep_ratio"],
                "best_sweep_at_concurrency": res["best_sweep_ratio_concurrency"],
                "sweep_ratio_c32": next((p["ratio_vs_raw"] for p in res["service"] if p["concurrency"] == 32), None),
                "sweep_ratio_c64": next((p["ratio_vs_raw"] for p in res["service"] if p["concurrency"] == 64), None),
                "met": res["ratio"] >= 0.95,
            }
    return out


if __name__ == "__main__":
    main()
