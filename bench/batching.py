"""Batching gain: Embedder throughput at 32 concurrent clients vs 1, with the batch sizes the model received.

    .venv/bin/python -m bench.batching                  # ViT-B/32-shaped CLIP, text and image (~3 min)
    .venv/bin/python -m bench.batching --tiny           # tiny CLIP (seconds)
    .venv/bin/python -m bench.batching --from-json bench/results/serving-vitb32.json   # report only

The measurement is ``bench.serving``'s (a real Embedder bento, closed-loop clients sending one input each,
``mmsearch_model_batch_size_bucket`` scraped from ``/metrics`` before and after each point), run at 1 and 32
clients without the reranker. ``--from-json`` re-reports the batching figures of an earlier serving run, which
measures the same points. Gain = inputs/s at 32 clients / inputs/s at 1 client.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import base_parser, print_table, write_results


def report(serving: dict[str, Any]) -> dict[str, Any]:
    """Batching gain and batch-size histograms per workload, from a ``bench.serving`` result."""
    out: dict[str, Any] = {}
    rows = []
    for kind in ("embedder", "reranker"):
        for name, res in serving.get(kind, {}).get("workloads", {}).items():
            points = {p["concurrency"]: p for p in res["service"]}
            if 1 not in points or 32 not in points:
                continue
            one, many = points[1], points[32]
            gain = round(many["items_per_s"] / one["items_per_s"], 3) if one["items_per_s"] else float("nan")
            out[f"{kind}/{name}"] = {
                "gain_32_vs_1": gain,
                "c1": {k: one[k] for k in ("items_per_s", "p50_ms", "p99_ms")} | {"batches": one["model_batches"]},
                "c32": {k: many[k] for k in ("items_per_s", "p50_ms", "p99_ms")} | {"batches": many["model_batches"]},
                "raw_batch_gain": _raw_gain(res),
            }
            for c, p in ((1, one), (32, many)):
                for lane, b in p["model_batches"].items():
                    hist = " ".join(f"{k}:{v}" for k, v in b["histogram"].items())
                    rows.append([f"{kind}/{name}", c, p["items_per_s"], p["p50_ms"], p["p99_ms"], lane,
                                 b["mean_batch_size"], hist, gain if c == 32 else ""])  # fmt: skip
    print_table(
        "Batching gain (closed-loop clients, one input per request; batch sizes from /metrics)",
        ["workload", "clients", "inputs/s", "p50 ms", "p99 ms", "lane", "mean batch", "batch-size histogram", "gain"],
        rows,
    )
    return out


def _raw_gain(res: dict[str, Any]) -> float | None:
    """What batching buys the model itself: raw inputs/s at the largest batch / at batch 1."""
    raw = {r["batch"]: r["items_per_s"] for r in res["raw"]}
    if 1 not in raw or len(raw) < 2:
        return None
    return round(raw[max(raw)] / raw[1], 3)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = base_parser("Batching gain at 32 vs 1 concurrent clients, with /metrics batch-size histograms.")
    p.add_argument("--from-json", type=Path, default=None, help="report from an earlier bench.serving result")
    p.add_argument("--model", default=None)
    p.add_argument("--modalities", default="text,image")
    p.add_argument("--threads", type=int, default=1)
    args, rest = p.parse_known_args(argv)
    if args.from_json is not None:
        serving = json.loads(args.from_json.read_text())
        source = str(args.from_json)
    else:
        from bench import serving as serving_bench

        argv2 = [
            *(["--tiny"] if args.tiny else []),
            *(["--model", args.model] if args.model else []),
            "--reranker", "none",
            "--modalities", args.modalities,
            "--threads", str(args.threads),
            "--concurrency", "1,32",
            "--batches", "1,32",
            "--out", str(args.out),
            "--name", "batching-serving-run" + ("-tiny" if args.tiny else ""),
            *rest,
        ]  # fmt: skip
        serving = serving_bench.main(argv2)
        source = "bench.serving " + " ".join(argv2)
    result = {
        "machine": serving.get("machine"),
        "settings": {"source": source, **(serving.get("settings") or {})},
        "batching": report(serving),
    }
    name = "batching-" + str((serving.get("settings") or {}).get("model", "unknown"))
    if args.tiny:
        name += "-tiny" if not name.endswith("tiny") else ""
    write_results(args.out, name, result)
    return result


if __name__ == "__main__":
    main()
