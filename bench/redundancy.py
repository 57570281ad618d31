"""Choose the lite profile's redundancy penalty (and check balanced retrieval) by measurement, in process.

    mmsearch eval --make-screens /tmp/screens                      # seed 0 (and --seed 1 for a second draw)
    nice -n 10 .venv/bin/python -m bench.redundancy /tmp/screens --json bench/results/redundancy-screens.json

Every page is read by RapidOCR as the lite ingest reads it (``service.ocr.OcrEngine``, full resolution; cached
next to the JSON as ``*.ocr.json``) and every document and text query is embedded by the lite embedder
(bge-small-en-v1.5, ``service.models.load_embedder``). The documents go into real LanceDB collections (all 320
distractors, and the pages with 52 of them); each text query then runs through ``service.retrieval.retrieve``, the
server's own retrieval code, in ``vector`` and ``hybrid`` mode (keyword: LanceDB's BM25; fusion: the server's),
with balanced retrieval off or on (zscore on the collection's per-modality statistics, as ``/search`` does) and
each redundancy penalty of the grid. Reports R@1 and nDCG@10 per query group (quote, paraphrase).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from mmsearch_client.eval.dataset import Dataset, load_dataset
from mmsearch_client.eval.metrics import ndcg_at_k, recall_at_k
from PIL import Image

from service import balance as bal
from service.config import Settings
from service.index.base import IndexRecord, VectorIndex, keyword_text
from service.index.factory import open_index
from service.models import load_embedder
from service.redundancy import Redundancy
from service.retrieval import Balance, Query, retrieve

WEIGHTS = (0.0, 0.1, 0.25, 0.5)
NEIGHBOURS = (3, 5, 10)
DEPTH = 50


def read_pages(ds: Dataset, cache: Path) -> dict[str, str]:
    """Each page's OCR text (RapidOCR as the Reader runs it), cached."""
    if cache.exists():
        return dict(json.loads(cache.read_text()))
    from service.ocr import OcrEngine

    engine = OcrEngine(threads=1)
    out = {}
    for d, item in ds.corpus.items():
        if item.image:
            with Image.open(item.image) as img:
                out[d] = engine.read(img.convert("RGB")).text
    cache.write_text(json.dumps(out) + "\n")
    return out


def balance_for(index: VectorIndex, collection: str, qvec: np.ndarray) -> Balance:
    stats = {}
    for m in ("text", "image"):
        count, sample = index.modality_sample(collection, m, bal.SAMPLE_SIZE)
        stats[m] = bal.GroupStats(count, bal.sample_rows(sample, bal.SAMPLE_SIZE))
    return Balance(tuple(stats), bal.zscore_scorers(qvec, stats), Settings().balance_min_share)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--json", type=Path, default=Path("redundancy.json"))
    args = ap.parse_args(argv)
    ds = load_dataset(args.dataset)
    ocr = read_pages(ds, args.json.with_suffix(".ocr.json"))
    texts = {d: keyword_text(item.text, ocr.get(d)) or "" for d, item in ds.corpus.items()}
    queries = {q: item.text for q, item in ds.queries.items() if item.text and not item.image}
    groups = {q: ds.queries[q].group or "all" for q in queries}

    embedder = load_embedder(Settings(profile="lite", torch_threads=1))
    lane_d, lane_q = ("document", "text"), ("query", "text")
    cpu = time.process_time()
    dvec = {d: embedder.run(lane_d, embedder.prepare(lane_d, [t]))[0] for d, t in texts.items()}
    doc_cpu = (time.process_time() - cpu) / len(dvec)
    cpu = time.process_time()
    qvec = {q: embedder.run(lane_q, embedder.prepare(lane_q, [t]))[0] for q, t in queries.items()}
    query_cpu = (time.process_time() - cpu) / len(qvec)

    pages = [d for d, item in ds.corpus.items() if item.image]
    distractors = [d for d, item in ds.corpus.items() if not item.image]
    sets = {f"{len(distractors)} distractors": pages + distractors}
    sets["52 distractors"] = pages + random.Random(52).sample(distractors, min(52, len(distractors)))
    table: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, open_index(str(Path(tmp) / "index")) as index:
        for label, members in sets.items():
            coll = "c" + str(len(members))
            index.ensure_collection(coll, int(embedder.dimension), str(embedder.name))
            records = []
            for d in members:
                item = ds.corpus[d]
                image = item.image and Path(item.image).name  # stored as a reference: only its presence matters
                records.append(IndexRecord(d, item.text, image, {}, dvec[d].tolist(), ocr_text=ocr.get(d)))
            index.upsert(coll, records)
            for balanced in (False, True):
                for weight in WEIGHTS:
                    for k in NEIGHBOURS if weight else (0,):
                        spent = 0.0
                        row: dict[str, Any] = {}
                        for mode in ("vector", "hybrid"):
                            ranked: dict[str, list[str]] = {}
                            for q, text in queries.items():
                                how = balance_for(index, coll, qvec[q]) if balanced else None
                                red = Redundancy(weight, k) if weight else None
                                t0 = time.process_time()
                                found = retrieve(index, coll, mode, Query(text, qvec[q].tolist()), DEPTH, None,
                                                 balance=how, redundancy=red)  # fmt: skip
                                spent += time.process_time() - t0
                                ranked[q] = [c.hit.id for c in found]
                            row[mode] = score(ranked, groups, ds)
                        name = f"{label}, balance {'auto' if balanced else 'off'}, " + (
                            f"penalty {weight} x {k} neighbours" if weight else "no penalty"
                        )
                        row["retrieve_cpu_ms"] = 1000 * spent / (2 * len(queries))
                        table[name] = row
                        print_row(name, row)
    args.json.write_text(
        json.dumps({"embed_cpu_ms": {"document": 1000 * doc_cpu, "query": 1000 * query_cpu}, "table": table}, indent=2)
        + "\n"
    )
    print(f"embedding CPU per document {1000 * doc_cpu:.1f} ms, per query {1000 * query_cpu:.1f} ms", file=sys.stderr)
    return 0


def score(ranked: dict[str, list[str]], groups: dict[str, str], ds: Dataset) -> dict[str, dict[str, float]]:
    out = {}
    for group in sorted(set(groups.values())):
        qids = [q for q in ranked if groups[q] == group]
        r1 = [recall_at_k(ranked[q], ds.qrels[q], 1) or 0.0 for q in qids]
        nd = [ndcg_at_k(ranked[q], ds.qrels[q], 10) or 0.0 for q in qids]
        out[group] = {"r@1": sum(r1) / len(qids), "ndcg@10": sum(nd) / len(qids)}
    return out


def print_row(name: str, row: dict[str, Any]) -> None:
    cells = [
        f"{mode} {g} {row[mode][g]['r@1']:.3f}/{row[mode][g]['ndcg@10']:.3f}"
        for mode in ("vector", "hybrid")
        for g in row[mode]
    ]
    print(f"{name:58s} " + "  ".join(cells) + f"  ({row['retrieve_cpu_ms']:.1f} ms CPU)", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
