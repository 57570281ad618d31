"""What balanced retrieval costs (issue #22): one search's retrieval, balanced vs a single raw query.

    .venv/bin/python -m bench.gap_latency            # 100k documents (half text, half image), 384-d, ~2 min
    .venv/bin/python -m bench.gap_latency --tiny     # 2k documents (seconds)
    .venv/bin/python -m bench.gap_latency --backends milvus-server   # the Milvus server at 100k (~10 min)

In-process through ``service.retrieval.retrieve`` on the index backends themselves (no HTTP, no model: those
costs are the same with balance on or off): ``raw`` is one top-50 by cosine (``balance: "off"``); ``balanced``
draws top-50 per modality and fuses them (z-scores from the collection statistics, minimum share 0.2), as
``/search`` does with ``balance: "auto"``; the statistics are measured once per collection (cached by the
service), and their cost is reported apart. Backends: LanceDB exact (in-memory matrix: one matrix product for
every modality), LanceDB with its ANN index (one filtered search per modality, concurrently), Milvus Lite
(FLAT; one filtered search per modality) and, with ``--backends milvus-server``, the real Milvus standalone server
(started here; HNSW past the threshold, as Search swaps it; one filtered search per modality).

Goal: balanced p50 <= 2x the raw p50 at 100k documents.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import base_parser, latency_summary, print_table, run_header, write_results
from service import balance
from service.index import IndexRecord
from service.index.base import VectorIndex
from service.index.factory import open_index
from service.retrieval import Balance, Query, retrieve

K = 50
MIN_SHARE = 0.2
GOAL = 2.0
BACKENDS = ("lancedb", "lancedb-ann", "milvus", "milvus-server")
ANN_BACKENDS = ("lancedb-ann", "milvus-server")  # past the threshold: Search swaps in its ANN index


def corpus(n: int, dim: int, gap: float, rng: np.random.Generator) -> list[IndexRecord]:
    """Half text, half image documents; the image vectors carry a constant offset."""
    offset = rng.standard_normal(dim).astype(np.float32)
    offset *= gap / np.linalg.norm(offset)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[n // 2 :] += offset
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        IndexRecord(
            id=f"d{i}",
            text=f"text {i}" if i < n // 2 else None,
            image=None if i < n // 2 else f"media://{i:064x}.png",
            metadata={"n": i},
            embedding=v.tolist(),
        )
        for i, v in enumerate(vectors)
    ]


def measure(index: VectorIndex, name: str, queries: np.ndarray, rounds: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    stats = {}
    for m in ("text", "image", "text+image", ""):
        count, sample = index.modality_sample(name, m, balance.SAMPLE_SIZE)
        stats[m] = balance.GroupStats(count, balance.sample_rows(sample, balance.SAMPLE_SIZE))
    stats_ms = (time.perf_counter() - t0) * 1000
    drawn = {m: s for m, s in stats.items() if s.count}
    raw_ms: list[float] = []
    bal_ms: list[float] = []
    for _ in range(rounds):
        for q in queries:
            query = Query(None, q.tolist())
            t = time.perf_counter()
            retrieve(index, name, "vector", query, K)
            raw_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            how = Balance(tuple(drawn), balance.zscore_scorers(q, drawn), MIN_SHARE)
            got = retrieve(index, name, "vector", query, K, balance=how)
            bal_ms.append((time.perf_counter() - t) * 1000)
            assert len(got) == K
    raw, bal = latency_summary(raw_ms), latency_summary(bal_ms)
    return {"raw": raw, "balanced": bal, "ratio_p50": round(bal["p50_ms"] / raw["p50_ms"], 2), "stats_ms": stats_ms}


def _uri(backend: str, tmp: Path, servers: contextlib.ExitStack) -> str:
    """The index URI of a backend; ``milvus-server`` starts a Milvus standalone server (stopped on exit)."""
    if backend == "milvus-server":
        from bench.support.milvus_server import MilvusServer

        server = MilvusServer(tmp / "milvus-server").start()
        servers.callback(server.stop)
        return server.uri
    if backend not in BACKENDS:
        raise SystemExit(f"--backends: unknown backend {backend!r} (one of {', '.join(BACKENDS)})")
    return str(tmp / ("m.db" if backend == "milvus" else backend))


def _index_kind(index: VectorIndex) -> str:
    """What the collection is searched with: the Milvus index type, LanceDB's ANN index or its exact path."""
    client = getattr(index, "_client", None)
    if client is not None:
        return str(client.describe_index("gap", "vector")["index_type"])
    vector_index = index._vector_index(index._table("gap"))  # type: ignore[attr-defined]
    return str(vector_index.index_type) if vector_index is not None else "exact"


def main(argv: Sequence[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--docs", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=30)
    p.add_argument("--backends", default="lancedb,lancedb-ann,milvus")
    args = p.parse_args(argv)
    n = 2000 if args.tiny else args.docs
    queries = 5 if args.tiny else args.queries
    rng = np.random.default_rng(0)
    docs = corpus(n, args.dim, 1.0, rng)
    qs = rng.standard_normal((queries, args.dim)).astype(np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gap_latency") as tmp, contextlib.ExitStack() as servers:
        for backend in args.backends.split(","):
            uri = _uri(backend, Path(tmp), servers)
            ann = n // 2 if backend in ANN_BACKENDS else n * 10
            with open_index(uri, ann_threshold=ann) as index:
                index.ensure_collection("gap", args.dim, "bench")
                for i in range(0, n, 5000):
                    index.upsert("gap", docs[i : i + 5000])
                if backend in ANN_BACKENDS and not index.wait_for_maintenance(900):  # type: ignore[attr-defined]
                    raise SystemExit(f"{backend}: the ANN index was not built within 900 s")
                retrieve(index, "gap", "vector", Query(None, qs[0].tolist()), K)  # warm caches
                results[backend] = {**measure(index, "gap", qs, 1 if args.tiny else 2), "index": _index_kind(index)}
            print(f"{backend}: {results[backend]['ratio_p50']}x ({results[backend]['index']})", flush=True)
    rows = [
        [b, r["raw"]["p50_ms"], r["balanced"]["p50_ms"], r["raw"]["p90_ms"], r["balanced"]["p90_ms"], r["ratio_p50"]]
        for b, r in results.items()
    ]
    print_table(
        f"retrieval of {K} candidates at {n} documents (half text, half image), ms",
        ["backend", "raw p50", "balanced p50", "raw p90", "balanced p90", "ratio p50"],
        rows,
    )
    goal = {b: {"ratio_p50": r["ratio_p50"], "met": r["ratio_p50"] <= GOAL} for b, r in results.items()}
    name = "gap_latency-tiny" if args.tiny else "gap_latency"
    write_results(args.out, name, {**run_header(args), "docs": n, "results": results, "goal": goal})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
