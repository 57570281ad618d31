"""Choose hybrid fusion by measurement: replay fusions on a server's own vector and keyword candidate lists.

    .venv/bin/python -m bench.hybrid_fusion /tmp/screens --url http://127.0.0.1:3000 --collection screens_lite \\
        --collect --json bench/results/hybrid_fusion-screens-lite.json

``--collect`` asks the server, for every text query of the dataset (``mmsearch eval --make-screens``), for its 50
best ``vector`` and 50 best ``keyword`` candidates (rerank off; the collection must hold the dataset, e.g. from
``mmsearch eval --keep``) and reads every candidate's ``text`` and ``ocr_text`` with ``/get``; the lists are saved
next to the JSON (``*.lists.json``) so later runs replay without a server. Each fusion is then applied by
``service.fusion.fuse`` itself, exactly as hybrid search applies it, and scored with the eval's metrics (R@1,
nDCG@10) per query group. Image queries are left out (their text is read on the server).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from mmsearch_client.eval.dataset import load_dataset
from mmsearch_client.eval.metrics import ndcg_at_k, recall_at_k

from service.fusion import fuse
from service.keywords import coverage, term_set

DEPTH = 50
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("rrf k=60, keyword weight 1", {"fusion": "rrf", "keyword_weight": 1.0}),
    ("rrf k=60, keyword weight 0.5", {"fusion": "rrf", "keyword_weight": 0.5}),
    ("coverage w=2 linear, no floor", {"keyword_weight": 2.0, "coverage_power": 1, "coverage_floor": 0.0}),
    ("coverage w=2 squared, no floor", {"keyword_weight": 2.0, "coverage_power": 2, "coverage_floor": 0.0}),
    ("coverage w=1 cubed, no floor", {"keyword_weight": 1.0, "coverage_power": 3, "coverage_floor": 0.0}),
    ("coverage w=3 squared, no floor", {"keyword_weight": 3.0, "coverage_power": 2, "coverage_floor": 0.0}),
    *[
        (f"coverage w=2 squared, floor {f}", {"keyword_weight": 2.0, "coverage_power": 2, "coverage_floor": f})
        for f in (0.3, 0.5, 0.6, 0.75)
    ],
]


def collect(url: str, collection: str, queries: dict[str, str]) -> dict[str, Any]:
    """Each query's vector and keyword candidates (id, score) and every candidate's text + OCR text."""
    lists: dict[str, dict[str, list[tuple[str, float]]]] = {}
    with httpx.Client(base_url=url, timeout=300) as client:
        for qid, text in queries.items():
            lists[qid] = {}
            for mode in ("vector", "keyword"):
                body = {"collection": collection, "query": text, "top_k": DEPTH, "candidates": DEPTH}
                resp = client.post("/search", json={**body, "mode": mode, "rerank": False})
                resp.raise_for_status()
                lists[qid][mode] = [(h["id"], h["retrieval_score"]) for h in resp.json()["hits"]]
        ids = sorted({d for q in lists.values() for side in q.values() for d, _ in side})
        docs = client.post("/get", json={"collection": collection, "ids": ids}).raise_for_status().json()
    texts = {d["id"]: [d.get("text"), d.get("ocr_text")] for d in docs["documents"]}
    return {"lists": lists, "texts": texts}


def replay(data: dict[str, Any], queries: dict[str, str], groups: dict[str, str], qrels: dict[str, Any]) -> Any:
    """R@1 and nDCG@10 per group for vector-only, keyword-only and every fusion of ``VARIANTS``."""
    doc_terms = {d: term_set(t) for d, t in data["texts"].items()}
    rankings: dict[str, dict[str, list[str]]] = {"vector only": {}, "keyword only": {}}
    for label, _ in VARIANTS:
        rankings[label] = {}
    for qid, lists in data["lists"].items():
        vector = [(d, s) for d, s in lists["vector"]]
        keyword = [(d, s) for d, s in lists["keyword"]]
        rankings["vector only"][qid] = [d for d, _ in vector]
        rankings["keyword only"][qid] = [d for d, _ in keyword]
        q_terms = term_set([queries[qid]])
        for label, kw in VARIANTS:
            share = {d: coverage(q_terms, doc_terms.get(d, set())) for d, _ in [*vector, *keyword]}
            fused = fuse(vector, keyword, coverage=share.__getitem__, **kw)
            rankings[label][qid] = [f.id for f in fused]
    table: dict[str, dict[str, dict[str, float]]] = {}
    for label, by_query in rankings.items():
        for group in sorted(set(groups.values())):
            qids = [q for q in by_query if groups[q] == group]
            r1 = [recall_at_k(by_query[q], qrels[q], 1) or 0.0 for q in qids]
            nd = [ndcg_at_k(by_query[q], qrels[q], 10) or 0.0 for q in qids]
            table.setdefault(label, {})[group] = {
                "queries": len(qids),
                "r@1": sum(r1) / len(qids),
                "ndcg@10": sum(nd) / len(qids),
            }
    return table


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--url", default="http://127.0.0.1:3000")
    ap.add_argument("--collection", required=True)
    ap.add_argument("--collect", action="store_true", help="fetch the candidate lists from the server first")
    ap.add_argument("--json", type=Path, default=Path("hybrid_fusion.json"))
    args = ap.parse_args(argv)
    ds = load_dataset(args.dataset)
    queries = {q.id: q.text for q in ds.queries.values() if q.text and not q.image}
    groups = {q: str(ds.queries[q].metadata.get("group", "all")) for q in queries}
    qrels = {q: ds.qrels.get(q, {}) for q in queries}
    lists_path = args.json.with_suffix(".lists.json")
    if args.collect or not lists_path.exists():
        lists_path.write_text(json.dumps(collect(args.url, args.collection, queries)) + "\n")
    table = replay(json.loads(lists_path.read_text()), queries, groups, qrels)
    names = sorted({g for row in table.values() for g in row})
    print(f"{'fusion':34s} " + " ".join(f"{g + ' R@1 / nDCG@10':>26s}" for g in names))
    for label, row in table.items():
        print(f"{label:34s} " + " ".join(f"{row[g]['r@1']:>15.3f} / {row[g]['ndcg@10']:.4f}" for g in names))
    args.json.write_text(json.dumps({"depth": DEPTH, "table": table}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
