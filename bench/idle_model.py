"""What an idle second model costs the first: /encode throughput of one model with and without an idle neighbour.

    .venv/bin/python -m bench.idle_model           # 16 clients, 5 rounds x 2 setups x 10 s (~3 min)
    .venv/bin/python -m bench.idle_model --tiny    # smoke size: 4 clients, 1 round x 2 setups x 1 s after 0.3 s

Two Embedder bentos run side by side from ``MMSEARCH_MODELS`` files (issue #23): ``alone`` serves the tiny CLIP
(``clip``), ``with-idle`` serves the same CLIP plus the tiny text embedder (``wiki``), which gets no request. Rounds
alternate between the two (A B, then B A, ...), so both see the same background noise and a trend cancels;
only one is loaded at a time.
Each phase is a closed loop of ``--clients`` clients sending one-text ``input_type=query`` requests to ``clip``
(``bench.common.closed_loop``). Figures: requests/s and latency per round, and ``ratio`` = median requests/s with the
idle model / median alone (goal >= 0.95: an idle model costs memory, not throughput).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
    write_results,
)

GOAL_RATIO_MIN = 0.95
SETUPS = ("alone", "with-idle")


def _models_file(root: Path, setup: str) -> Path:
    from bench.common import tiny_dir
    from service.tiny import ensure_tiny_models, ensure_tiny_text_embedder

    clip = ensure_tiny_models(tiny_dir()).clip
    body = f"embedders:\n  clip: {{source: {clip}, default: true}}\n"
    if setup == "with-idle":
        body += f"  wiki: {{source: {ensure_tiny_text_embedder(tiny_dir())}}}\n"
    path = root / f"{setup}.yaml"
    path.write_text(body)
    return path


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = base_parser(__doc__ or "")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=10.0, help="measured window of each phase")
    p.add_argument("--warmup", type=float, default=2.0, help="minimum warm-up of each phase, s")
    args = p.parse_args(argv)
    if args.tiny:
        args.clients, args.rounds, args.seconds, args.warmup = 4, 1, 1.0, 0.3
    bodies = [
        json_bytes({"inputs": [f"where is the revenue chart {i}"], "input_type": "query", "model": "clip"})
        for i in range(64)
    ]
    started = time.monotonic()
    results: dict[str, Any] = {**run_header(args), "goal": {"ratio_min": GOAL_RATIO_MIN}}
    rounds: dict[str, list[dict[str, Any]]] = {s: [] for s in SETUPS}
    with tempfile.TemporaryDirectory(prefix="mmsearch-idle-model-") as tmp:
        root = Path(tmp)
        specs = [
            ("service.embedder:Embedder", bench_env(root / s, MMSEARCH_MODELS=str(_models_file(root, s))))
            for s in SETUPS
        ]
        with bentos(specs, root) as servers:
            load = HostLoad().start()
            for k in range(args.rounds):
                for setup, server in alternating(list(zip(SETUPS, servers, strict=True)), k):
                    res = closed_loop(
                        f"{server.url}/encode",
                        bodies,
                        concurrency=args.clients,
                        duration_s=args.seconds,
                        min_warmup_s=args.warmup,
                    )
                    rounds[setup].append(res.summary())
            results["host_load"] = load.stop()
    results["setups"] = {
        s: {"median_rps": statistics.median(r["rps"] for r in rounds[s]), "rounds": rounds[s]} for s in SETUPS
    }
    alone, idle = (results["setups"][s]["median_rps"] for s in SETUPS)
    ratio = idle / alone if alone else float("nan")
    errors = sum(r["errors"] for s in SETUPS for r in rounds[s])
    results["ratio"] = round(ratio, 3)
    results["goal"]["met"] = bool(ratio >= GOAL_RATIO_MIN and errors == 0)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    print_table(
        f"clip /encode, {args.clients} clients, {args.rounds} rounds x {args.seconds:g} s (medians)",
        ["setup", "req/s", "p50 ms", "p99 ms", "errors"],
        [
            [s, results["setups"][s]["median_rps"]]
            + [statistics.median(r[k] for r in rounds[s]) for k in ("p50_ms", "p99_ms")]
            + [sum(r["errors"] for r in rounds[s])]
            for s in SETUPS
        ],
    )
    print(f"ratio with an idle second model / alone: {ratio:.3f} (goal >= {GOAL_RATIO_MIN})")
    write_results(args.out, "idle_model" + ("-tiny" if args.tiny else ""), results)
    return results


if __name__ == "__main__":
    main()
