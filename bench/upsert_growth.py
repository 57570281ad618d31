"""Upsert latency while a collection grows past the ANN threshold (issue #13.7).

    .venv/bin/python -m bench.upsert_growth                 # LanceDB, 0 -> 100,000 documents, 1,000 per upsert
    .venv/bin/python -m bench.upsert_growth --inline        # the old behaviour: maintenance inside each upsert
    .venv/bin/python -m bench.upsert_growth --tiny          # 0 -> 3,000 documents, 300 per upsert, threshold 1,500

Upserts of documents with caller-supplied embeddings (dimension 512, as ViT-B/32; a short text each) through the
index layer that Search uses (``service.index.factory.open_index``, ``MMSEARCH_ANN_THRESHOLD``'s default 50,000),
one after the other, so the time measured is the index's alone (no model, no HTTP). Maintenance (the ANN build once
past the threshold, compaction, folding new rows into the indexes) runs on the index's background thread; with
``--inline`` the same pass runs in the caller right after each upsert, which is what the upsert itself did before.

Reported: the upsert latency distribution (median, p90, p99, max), p99 / median (goal <= 3), when the ANN index
appeared, and a search check after the end (the top hit of a stored vector is that document).
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import HostLoad, base_parser, latency_summary, print_table, run_header, write_results

GOAL = 3.0
DIM = 512


def _vector_index_built(index: Any, name: str) -> bool:
    return any(list(i.columns) == ["vector"] for i in index._table(name).list_indices())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = base_parser(__doc__ or "")
    p.add_argument("--docs", type=int, default=None, help="final collection size (default 100000)")
    p.add_argument("--batch", type=int, default=None, help="documents per upsert (default 1000)")
    p.add_argument("--threshold", type=int, default=None, help="ANN threshold (default 50000)")
    p.add_argument("--inline", action="store_true", help="run each maintenance pass inside the upsert call")
    p.add_argument("--workdir", default=None, help="where the index is written (default: system temp)")
    args = p.parse_args(argv)
    total = args.docs or (3_000 if args.tiny else 100_000)
    batch = args.batch or (300 if args.tiny else 1_000)
    threshold = args.threshold or (1_500 if args.tiny else 50_000)

    from service.index import IndexRecord
    from service.index.factory import open_index
    from service.index.lance import LanceIndex

    rng = np.random.default_rng(0)
    results: dict[str, Any] = {
        **run_header(args),
        "backend": "lancedb",
        "docs": total,
        "batch": batch,
        "dimension": DIM,
        "ann_threshold": threshold,
        "maintenance": "inline (in the upsert call)" if args.inline else "background thread",
    }
    latencies: list[float] = []
    built_after: int | None = None
    probes: list[tuple[int, np.ndarray]] = []
    with tempfile.TemporaryDirectory(prefix="mmsearch-growth-", dir=args.workdir) as tmp:
        index = open_index(str(Path(tmp) / "index"), ann_threshold=threshold)
        assert isinstance(index, LanceIndex)
        index.ensure_collection("grow", DIM, "caller")
        stop = threading.Event()
        built_at: list[float] = []

        def watch() -> None:  # when did the index appear (in upserts done), without touching the writers
            while not stop.wait(0.2):
                if _vector_index_built(index, "grow"):
                    built_at.append(time.monotonic())
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        load = HostLoad().start()
        done_at: list[float] = []
        started = time.monotonic()
        for start in range(0, total, batch):
            vectors = rng.standard_normal((min(batch, total - start), DIM)).astype(np.float32)
            docs = [
                IndexRecord(f"d{start + i}", f"document {start + i}", None, {"n": start + i}, v.tolist())
                for i, v in enumerate(vectors)
            ]
            probes.append((start, vectors[0]))
            t0 = time.perf_counter()
            index.upsert("grow", docs)
            if args.inline:
                index._maintain("grow", index._maintenance_every, 0)
            latencies.append((time.perf_counter() - t0) * 1000)
            done_at.append(time.monotonic())
        ingest_s = time.monotonic() - started
        index.wait_for_maintenance(3600)
        stop.set()
        watcher.join()
        results["host_load"] = load.stop()
        if built_at:
            built_after = sum(1 for t in done_at if t <= built_at[0])
        elif _vector_index_built(index, "grow"):
            built_after = len(done_at)  # built after the last upsert (seen only once the thread was idle)
        found = sum(index.search("grow", v.tolist(), 1)[0].id == f"d{i}" for i, v in probes)
        results["ann_index_built"] = _vector_index_built(index, "grow")
        results["count"] = index.get_collection("grow").count
        index.close()
    summary = latency_summary(latencies)
    median, p99 = summary["p50_ms"], summary["p99_ms"]
    ratio = round(p99 / median, 2)
    crossing = threshold // batch  # the upsert that takes the collection past the threshold (0-based)
    results.update(
        upserts=len(latencies),
        ingest_s=round(ingest_s, 1),
        latency_ms=summary,
        p99_over_median=ratio,
        crossing_upsert_ms=round(latencies[crossing], 1) if crossing < len(latencies) else None,
        slowest_upserts=[{"upsert": int(i), "ms": round(latencies[i], 1)} for i in np.argsort(latencies)[::-1][:5]],
        index_seen_after_upserts=built_after,
        self_match_top1=f"{found}/{len(probes)}",
        latencies_ms=[round(x, 1) for x in latencies],
    )
    results["goal"] = {"p99_over_median_max": GOAL, "p99_over_median": ratio, "met": ratio <= GOAL}
    print_table(
        f"{len(latencies)} upserts of {batch} documents, 0 -> {total} (ANN threshold {threshold}; "
        f"maintenance: {results['maintenance']})",
        ["median ms", "p90 ms", "p99 ms", "max ms", "p99/median", "crossing upsert ms", "index seen after"],
        [[median, summary["p90_ms"], p99, summary["max_ms"], ratio,
          results["crossing_upsert_ms"], built_after]],
    )  # fmt: skip
    print(f"p99/median {ratio} (goal <= {GOAL}): {results['goal']['met']}; top-1 self-match {found}/{len(probes)}")
    name = "upsert_growth" + ("-inline" if args.inline else "") + ("-tiny" if args.tiny else "")
    write_results(args.out, name, results)
    return results


if __name__ == "__main__":
    main()
