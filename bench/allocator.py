"""What glibc's mmap threshold costs a model thread: the Embedder as shipped vs with the threshold fixed at 1 MiB.

    .venv/bin/python -m bench.allocator           # ViT-B/32-shaped CLIP, 32 clients, 3 rounds x 2 setups x 2 workloads
    .venv/bin/python -m bench.allocator --tiny    # smoke size: tiny CLIP, 4 clients, 1 round x 1 s after 0.3 s

Two Embedder bentos run side by side at their defaults (``MMSEARCH_TORCH_THREADS=auto``): ``shipped`` leaves glibc's
dynamic mmap threshold alone (``service.memory``); ``mmap-1MiB`` fixes it at 1 MiB with glibc's own tunable
(``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1048576``), which is what mmsearch did with ``mallopt`` until
bench/RESULTS.md 11.0a found the cost: every activation of 1 MiB or more is then a fresh mapping, page-faulted in
again at every batch. Rounds alternate the two (A B, then B A, ...), so both see the same background noise.
Each phase is a closed loop of ``--clients`` one-input ``/encode`` clients (texts, then images); per phase the
worker's CPU (user and system) and minor page faults are read from ``/proc`` (the bento's process tree) before and
after the phase, warm-up included, and divided by the requests served in the measured window.
``ratio`` per workload = median inputs/s shipped / median inputs/s with the threshold fixed.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import data, models
from bench.common import (
    HostLoad,
    alternating,
    base_parser,
    bench_env,
    bentos,
    closed_loop,
    json_bytes,
    print_table,
    run_header,
    tree_usage,
    write_results,
)

SETUPS = {"shipped": "", "mmap-1MiB": "glibc.malloc.mmap_threshold=1048576"}
WORKLOADS = ("text", "image")


def bodies(workload: str, n: int = 64) -> list[bytes]:
    if workload == "text":
        inputs: list[Any] = data.texts(n)
    else:
        inputs = [{"image": data.data_uri(data.encode(data.photo_like(i)))} for i in range(n)]
    return [json_bytes({"inputs": [x], "input_type": "document"}) for x in inputs]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = base_parser(__doc__ or "")
    p.add_argument("--model", default="vitb32", help="embedder (bench.models)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=30.0, help="measured window of each phase")
    p.add_argument("--warmup", type=float, default=4.0, help="minimum warm-up of each phase, s")
    args = p.parse_args(argv)
    if args.tiny:
        args.clients, args.rounds, args.seconds, args.warmup = 4, 1, 1.0, 0.3
    model = "" if args.tiny else str(models.embedder_path(args.model))
    started = time.monotonic()
    results: dict[str, Any] = {**run_header(args), "setups": SETUPS, "model": args.model if model else "tiny"}
    rounds: dict[str, dict[str, list[dict[str, Any]]]] = {w: {s: [] for s in SETUPS} for w in WORKLOADS}
    with tempfile.TemporaryDirectory(prefix="mmsearch-allocator-") as tmp:
        root = Path(tmp)
        specs = []
        for setup, tunables in SETUPS.items():
            extra = {"MMSEARCH_PROFILE": "default", "MMSEARCH_EMBEDDER_MODEL": model} if model else {}
            if tunables:
                extra["GLIBC_TUNABLES"] = tunables
            env = bench_env(
                root / setup, MMSEARCH_TORCH_THREADS="auto", MMSEARCH_MAX_IMAGE_BYTES=str(20 << 20), **extra
            )
            env.pop("OMP_NUM_THREADS")  # the service's defaults: MMSEARCH_TORCH_THREADS=auto sets torch's threads
            specs.append(("service.embedder:Embedder", env))
        with bentos(specs, root) as servers:
            load = HostLoad().start()
            for workload in WORKLOADS:
                load_bodies = bodies(workload)
                for k in range(args.rounds):
                    for setup, server in alternating(list(zip(SETUPS, servers, strict=True)), k):
                        before = tree_usage(server.proc.pid)
                        res = closed_loop(
                            f"{server.url}/encode",
                            load_bodies,
                            concurrency=args.clients,
                            duration_s=args.seconds,
                            min_warmup_s=args.warmup,
                        )
                        after = tree_usage(server.proc.pid)
                        served = max(res.ok, 1)
                        rounds[workload][setup].append(
                            {
                                **res.summary(),
                                "user_cpu_s": round(after.user_s - before.user_s, 2),
                                "system_cpu_s": round(after.system_s - before.system_s, 2),
                                "minor_faults_per_input": round((after.minor_faults - before.minor_faults) / served),
                            }
                        )
            results["host_load"] = load.stop()
    results["workloads"] = {}
    table = []
    for workload in WORKLOADS:
        per: dict[str, Any] = {}
        for setup in SETUPS:
            rs = rounds[workload][setup]
            per[setup] = {
                "median_items_per_s": statistics.median(r["items_per_s"] for r in rs),
                "system_cpu_frac": round(
                    sum(r["system_cpu_s"] for r in rs)
                    / max(sum(r["user_cpu_s"] + r["system_cpu_s"] for r in rs), 1e-9),
                    3,
                ),
                "median_minor_faults_per_input": statistics.median(r["minor_faults_per_input"] for r in rs),
                "rounds": rs,
            }
            table.append(
                [
                    workload,
                    setup,
                    per[setup]["median_items_per_s"],
                    per[setup]["system_cpu_frac"],
                    per[setup]["median_minor_faults_per_input"],
                    sum(r["errors"] for r in rs),
                ]
            )
        shipped, fixed = (per[s]["median_items_per_s"] for s in SETUPS)
        per["ratio"] = round(shipped / fixed, 3) if fixed else float("nan")
        per["round_ratios"] = [
            round(a["items_per_s"] / b["items_per_s"], 3) if b["items_per_s"] else float("nan")
            for a, b in zip(*(rounds[workload][s] for s in SETUPS), strict=True)
        ]
        results["workloads"][workload] = per
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    print_table(
        f"Embedder /encode, {args.clients} one-input clients, {args.rounds} rounds x {args.seconds:g} s (medians)",
        ["workload", "setup", "inputs/s", "system CPU", "minor faults/input", "errors"],
        table,
    )
    for workload in WORKLOADS:
        w = results["workloads"][workload]
        print(f"{workload}: shipped / mmap-1MiB = {w['ratio']:.3f} (rounds {w['round_ratios']})")
    write_results(args.out, "allocator" + ("-tiny" if args.tiny else ""), results)
    return results


if __name__ == "__main__":
    main()
