"""Render an evaluation report (the ``dict`` from :func:`~mmsearch_client.eval.runner.run_eval`) as tables.

Tables use rich when it is installed and the output is a terminal, else plain aligned text.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from mmsearch_client._progress import rich_available

__all__ = ["load_report", "print_comparison", "print_report"]

_MODE_LABEL = {"rerank_off": "off", "rerank_on": "on"}
"""Runs of the server's default mode are labelled by rerank; runs per retrieval mode by their name."""


def _reranked_run(name: str, run: dict[str, Any]) -> bool:
    return bool(run.get("rerank", name == "rerank_on"))


_METRIC_LABEL = {"recall@1": "R@1", "recall@5": "R@5", "recall@10": "R@10", "ndcg@10": "nDCG@10", "mrr@10": "MRR@10"}


class Printer:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.rich = rich_available() and self.stream.isatty()

    def line(self, text: str = "") -> None:
        print(text, file=self.stream)

    def table(self, title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 2) -> None:
        """``left``: how many leading columns are labels (left-aligned); the rest are numbers."""
        if self.rich:
            from rich.console import Console
            from rich.table import Table

            table = Table(title=title, title_justify="left")
            for i, h in enumerate(headers):
                table.add_column(h, justify="left" if i < left else "right", no_wrap=i < left)
            for row in rows:
                table.add_row(*row)
            Console(file=self.stream).print(table)
            return
        self.line(title)
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

        def fmt(cells: Sequence[str]) -> str:
            return "  ".join(
                c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        self.line("  " + fmt(headers))
        self.line("  " + "  ".join("-" * w for w in widths))
        for row in rows:
            self.line("  " + fmt(row))
        self.line()


def _num(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _scopes(run: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "overall", run["overall"]
    for pair, agg in run.get("by_pair", {}).items():
        yield pair, agg
    for group, agg in run.get("by_group", {}).items():
        yield f"group:{group}", agg


def _header(p: Printer, report: dict[str, Any]) -> None:
    ds, server, params = report["dataset"], report["server"], report["params"]
    model = server.get("embedder", {}).get("model", "?")
    line = (
        f"mmsearch eval: {ds['name']} ({ds['corpus']} documents, {ds['queries']} queries, {ds['judged_queries']} judged"
    )
    if (ds.get("evaluated_documents"), ds.get("evaluated_queries")) != (ds["corpus"], ds["judged_queries"]):
        line += f"; evaluated {ds.get('evaluated_documents')} documents, {ds.get('evaluated_queries')} queries"
    p.line(line + ")")
    p.line(f"server: {server['url']}  embedder: {model}  index: {server.get('index') or '?'}")
    kept = "kept" if report.get("collection_kept") else "documents deleted after the run"
    p.line(f"collection: {params['collection']} ({kept})  top_k={params['top_k']}  candidates={params['candidates']}")
    if report.get("warning"):
        bar = "!" * (len(report["warning"]) + 8)
        p.line(bar)
        p.line(f"!!! {report['warning']} !!!")
        p.line(bar)
    pairs = report.get("modality_pairs") or {}
    if pairs.get("evaluated"):
        p.line(f"modality pairs evaluated: {', '.join(pairs['evaluated'])}")
    for pair, why in (pairs.get("skipped") or {}).items():
        p.line(f"modality pair skipped: {pair} ({why})")
    p.line()


def print_report(report: dict[str, Any], stream: TextIO | None = None) -> None:
    """The header (with the tiny-model warning), quality, latency and score-distribution tables, then notes."""
    p = Printer(stream)
    _header(p, report)
    metrics: list[str] = report["metrics"]
    runs: dict[str, dict[str, Any]] = report["runs"]
    p.table(
        "Retrieval quality by query -> relevant-document modality (and query group)",
        ["scope", "run", "queries", *(_METRIC_LABEL.get(m, m) for m in metrics)],
        _quality_rows(runs, metrics),
    )
    p.table(
        "Latency per stage (ms; server timings_ms, 'client' = round trip)",
        ["stage", "run", "n", "p50", "p95", "p99", "mean"],
        _latency_rows(runs),
    )
    p.table(
        "Score distribution of retrieved documents by query -> document modality (relevant | non-relevant)",
        ["pair", "score", "rel n", "rel min", "rel med", "rel max", "non n", "non min", "non med", "non max"],
        _score_rows(runs),
    )
    for note in [*_run_notes(runs), *_dataset_notes(report)]:
        p.line(f"note: {note}")
    if report.get("warning"):
        p.line(f"!!! {report['warning']} !!!")


def _quality_rows(runs: dict[str, dict[str, Any]], metrics: list[str]) -> list[list[str]]:
    return [
        [scope, _MODE_LABEL.get(mode, mode), str(agg["queries"]), *(_num(agg["metrics"].get(m)) for m in metrics)]
        for mode, run in runs.items()
        for scope, agg in _scopes(run)
    ]


LATENCY_COLUMNS = ("p50", "p95", "p99", "mean")


def _latency_rows(runs: dict[str, dict[str, Any]]) -> list[list[str]]:
    return [
        [
            stage,
            _MODE_LABEL.get(mode, mode),
            str(lat["n"]),
            *(_num(lat.get(k), 1) for k in ("p50", "p95", "p99", "mean")),
        ]
        for mode, run in runs.items()
        for stage, lat in run["latency_ms"].items()
    ]


def _score_kinds(mode: str, run: dict[str, Any], several_runs: bool) -> list[str]:
    """The score kinds a run's table shows: rerank scores of a reranked run; retrieval scores unless another run of
    the same mode (rerank off) shows them."""
    reranked = _reranked_run(mode, run)
    return [
        k
        for k in run["scores"]
        if (k != "rerank" or reranked) and (k != "retrieval" or not (reranked and several_runs))
    ]


def _score_rows(runs: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for mode, run in runs.items():
        for kind in _score_kinds(mode, run, len(runs) > 1):
            for pair, sides in run["scores"][kind].items():
                rel, non = sides["relevant"], sides["non_relevant"]
                cells = [
                    str(s["n"]) if k == "n" else _num(s[k], 4)
                    for s in (rel, non)
                    for k in ("n", "min", "median", "max")
                ]
                rows.append([pair, kind, *cells])
    return rows


def _run_notes(runs: dict[str, dict[str, Any]]) -> list[str]:
    notes = []
    for mode, run in runs.items():
        if run["errors"]:
            notes.append(f"{mode}: {run['errors']} queries failed and are excluded: {run['error_samples'][0]}")
        if _reranked_run(mode, run) and run.get("reranked", 0) < run["overall"]["queries"]:
            notes.append(f"{mode}: only {run.get('reranked', 0)} answers came back reranked")
    return notes


def _dataset_notes(report: dict[str, Any]) -> list[str]:
    notes = []
    if report["dataset"].get("unjudged_queries"):
        n = report["dataset"]["unjudged_queries"]
        notes.append(f"{n} queries have no relevant judgement: not run, excluded from the averages")
    skipped = report.get("skipped") or {}
    for kind in ("documents", "queries"):
        for modality, n in (skipped.get(kind) or {}).items():
            notes.append(f"skipped {n} {modality} {kind}: the embedder supports {', '.join(skipped['supported'])}")
    if skipped.get("queries_left_unjudged"):
        n = skipped["queries_left_unjudged"]
        notes.append(f"{n} queries not run: every relevant document of theirs was skipped")
    ingest = report.get("ingest", {})
    if ingest.get("failed"):
        notes.append(f"ingest: {ingest['failed']} documents failed: {ingest['failures'][:1]}")
    return notes


def _diff(a: Any, b: Any, digits: int = 3) -> str:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return "-"
    return f"{a - b:+.{digits}f}"


def _triple(
    key: list[str], a: dict[str, Any], b: dict[str, Any], fields: Sequence[str], digits: int, count: str | None = None
) -> list[list[str]]:
    """Rows A, B and A-B for one scope: ``fields`` of ``a`` and ``b`` (missing values show as '-')."""
    rows = []
    for run, src in (("A", a), ("B", b)):
        head = [str(src.get(count, "-"))] if count else []
        rows.append([*key, run, *head, *(_num(src.get(f), digits) for f in fields)])
    head = [_diff(a.get(count), b.get(count), 0)] if count else []
    rows.append([*key, "A-B", *head, *(_diff(a.get(f), b.get(f), digits) for f in fields)])
    return rows


def print_comparison(
    a: dict[str, Any], b: dict[str, Any], labels: tuple[str, str] = ("A", "B"), stream: TextIO | None = None
) -> None:
    """Two reports side by side: for every scope a row for A, one for B and one for the difference A - B."""
    p = Printer(stream)
    p.line(f"comparing A = {labels[0]}  with  B = {labels[1]}")
    for name, r in zip("AB", (a, b), strict=True):
        model = r["server"].get("embedder", {}).get("model", "?")
        p.line(f"  {name}: {r['dataset']['name']} on {r['server']['url']}, embedder {model}, {r.get('created', '?')}")
        if r.get("warning"):
            p.line(f"  !!! {name}: {r['warning']} !!!")
    p.line()
    metrics = [m for m in a["metrics"] if m in b["metrics"]]
    rows: list[list[str]] = []
    for mode, run_a in a["runs"].items():
        run_b = b["runs"].get(mode)
        if run_b is None:
            continue
        scopes_b = dict(_scopes(run_b))
        for scope, agg_a in _scopes(run_a):
            agg_b = scopes_b.get(scope, {"metrics": {}})
            rows += _triple(
                [scope, _MODE_LABEL.get(mode, mode)],
                {**agg_a["metrics"], "queries": agg_a["queries"]},
                {**agg_b["metrics"], "queries": agg_b.get("queries")},
                metrics,
                3,
                count="queries",
            )
    p.table(
        "Retrieval quality, A vs B",
        ["scope", "mode", "run", "queries", *(_METRIC_LABEL.get(m, m) for m in metrics)],
        rows,
        left=3,
    )
    rows = []
    for mode, run_a in a["runs"].items():
        run_b = b["runs"].get(mode)
        if run_b is None:
            continue
        for stage, lat_a in run_a["latency_ms"].items():
            lat_b = run_b["latency_ms"].get(stage, {})
            rows += _triple([stage, _MODE_LABEL.get(mode, mode)], lat_a, lat_b, ("p50", "p95", "p99"), 1)
    p.table("Latency (ms), A vs B", ["stage", "mode", "run", "p50", "p95", "p99"], rows, left=3)


def load_report(path: str | Path) -> dict[str, Any]:
    """Read a report written with ``--json`` (checks that it is one)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not a JSON report: {e}") from None
    if not isinstance(data, dict) or "runs" not in data or "version" not in data:
        raise ValueError(f"{p}: not an mmsearch eval report (written by `mmsearch eval --json`)")
    return data
