"""The ``mmsearch eval`` subcommand.

mmsearch eval --make-synthetic ./evalset                 # write the synthetic set
mmsearch eval --make-screens ./screens                   # write the screenshot set (OCR, keyword, hybrid)
mmsearch eval ./evalset --json run.json                  # ingest, run every query with rerank off and on
mmsearch eval ./screens --modes vector,keyword,hybrid --rerank off   # one run per retrieval mode
mmsearch eval ./evalset --compare baseline.json          # ... and compare with an earlier run
mmsearch eval ./evalset --balance off,auto --gap 1.0   # balanced retrieval off/on, on a constructed gap
mmsearch eval run.json --compare baseline.json           # compare two saved runs (no server needed)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mmsearch_client._client import Client
from mmsearch_client.eval.dataset import DatasetError, load_dataset
from mmsearch_client.eval.report import load_report, print_comparison, print_report
from mmsearch_client.eval.runner import RETRIEVAL_MODES, EvalOptions, fresh_collection, run_eval, run_specs

__all__ = ["add_eval_parser", "cmd_eval"]


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return n


def _modes(value: str) -> list[str]:
    modes = [m.strip() for m in value.split(",") if m.strip()]
    bad = [m for m in modes if m not in RETRIEVAL_MODES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"use a comma-separated list of {', '.join(RETRIEVAL_MODES)}")
    return modes


def _rerank(value: str) -> list[bool]:
    flags = {"off": False, "on": True}
    out = [flags.get(v.strip()) for v in value.split(",") if v.strip()]
    if not out or any(f is None for f in out):
        raise argparse.ArgumentTypeError("use off, on or off,on")
    return [bool(f) for f in out]


def _balance(value: str) -> list[str]:
    out = [v.strip() for v in value.split(",") if v.strip()]
    if not out or any(v not in ("off", "auto") for v in out):
        raise argparse.ArgumentTypeError("use off, auto or off,auto")
    return out


def add_eval_parser(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register ``eval`` on the CLI's subparsers (``common`` carries --url/--api-key/--timeout)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "eval",
        parents=[common],
        help="measure retrieval quality and latency on a labelled dataset",
        description="Ingest DATASET's corpus into a fresh collection, run every judged query with rerank off and "
        "on, and report recall@1/5/10, nDCG@10, MRR@10 (overall, per query->document modality, per query "
        "group), latency percentiles per stage and score distributions. DATASET is a directory with "
        "corpus.jsonl, queries.jsonl and qrels.tsv, or a report saved with --json (printed again, or compared).",
    )
    p.add_argument("dataset", nargs="?", metavar="DATASET")
    p.add_argument("--collection", "-c", help="collection to ingest into (default: a fresh eval_<random>)")
    p.add_argument("--candidates", type=_positive, default=50, help="shortlist size before reranking (50)")
    p.add_argument("--top-k", "-k", type=_positive, default=10, help="hits per query (10; metrics go to @10)")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON ('-': to stdout, no tables)")
    p.add_argument("--compare", metavar="REPORT", help="a report from --json to show side by side, with deltas")
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep what the run ingested (default: drop the collection it created, or delete its documents from "
        "an existing --collection)",
    )
    p.add_argument("--concurrency", type=_positive, default=1, help="queries in flight (1: undisturbed latency)")
    p.add_argument("--batch-size", type=_positive, default=32, help="documents per upsert request (32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--modes",
        type=_modes,
        help="retrieval modes to run, e.g. vector,keyword,hybrid (default: the server's default mode)",
    )
    p.add_argument("--rerank", type=_rerank, default=[False, True], help="off, on or off,on (default: off,on)")
    p.add_argument(
        "--balance",
        type=_balance,
        default=[],
        help="off, auto or off,auto: run each pass with balanced retrieval off and/or on (default: the server's)",
    )
    p.add_argument(
        "--gap",
        type=float,
        default=None,
        metavar="OFFSET",
        help="construct a modality gap: embed the corpus through the server, shift every image document's vector "
        "by OFFSET (1.0: as long as the vector), store those embeddings",
    )
    p.add_argument("--make-synthetic", metavar="DIR", help="write the synthetic screenshot set to DIR and exit")
    p.add_argument(
        "--make-screens",
        metavar="DIR",
        help="write the screenshot set with real text (dashboards, receipts, ...; quote, paraphrase and degraded "
        "queries) to DIR and exit",
    )
    p.add_argument("--distractors", type=int, default=None, help="distractor texts of --make-screens (320)")
    p.add_argument("--seed", type=int, default=0, help="seed of --make-synthetic / --make-screens (0)")
    p.set_defaults(func=cmd_eval)
    return p


def _write_set(args: argparse.Namespace) -> int:
    """``--make-screens`` / ``--make-synthetic``: write a dataset and say what it holds."""
    try:
        if args.make_screens:
            from mmsearch_client.eval.screens import DEFAULT_DISTRACTORS, write_screens

            distractors = DEFAULT_DISTRACTORS if args.distractors is None else args.distractors
            out = write_screens(args.make_screens, seed=args.seed, distractors=distractors)
        else:
            from mmsearch_client.eval.synthetic import write_synthetic

            out = write_synthetic(args.make_synthetic, seed=args.seed)
    except RuntimeError as e:  # Pillow missing
        print(f"mmsearch eval: {e}", file=sys.stderr)
        return 1
    groups = ", ".join(f"{n} {g}" for g, n in out.groups.items())
    print(f"wrote {out.corpus} corpus items and {out.queries} queries ({groups}) to {out.root}")
    return 0


def cmd_eval(client: Client, args: argparse.Namespace) -> int:
    if args.make_screens or args.make_synthetic:
        return _write_set(args)
    if not args.dataset:
        print("mmsearch eval: give a DATASET directory (or --make-synthetic DIR)", file=sys.stderr)
        return 2
    source = Path(args.dataset)
    if source.is_file() and source.suffix == ".json":
        report = load_report(source)
    else:
        try:
            ds = load_dataset(source)
        except DatasetError as e:
            print(f"mmsearch eval: {e}", file=sys.stderr)
            return 1
        opts = EvalOptions(
            collection=args.collection or fresh_collection(),
            top_k=args.top_k,
            candidates=args.candidates,
            keep=args.keep,
            concurrency=args.concurrency,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            runs=run_specs(args.modes, args.rerank, args.balance),
            gap=args.gap,
        )
        report = run_eval(client, ds, opts)
    if args.json and args.json != "-":
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.json == "-":
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
        if args.json:
            print(f"report written to {args.json}")
    if args.compare:
        print(file=sys.stdout if args.json != "-" else sys.stderr)
        print_comparison(
            report,
            load_report(args.compare),
            labels=(str(source), str(args.compare)),
            stream=sys.stdout if args.json != "-" else sys.stderr,
        )
    return 0
