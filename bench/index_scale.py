"""Index scale: ingest rate, query latency and recall@10 per backend, through ``service.index.open_index``.

    .venv/bin/python -m bench.index_scale                          # 100k x 512-d, LanceDB + Milvus Lite
    .venv/bin/python -m bench.index_scale --sizes 1000000 --backends lancedb --no-ann --queries 30 --name index_scale-1m
                                                                   # 1M: LanceDB exact only (~3 min; see RESULTS.md)
    .venv/bin/python -m bench.index_scale --tiny                   # 2k vectors (seconds)
    .venv/bin/python -m bench.index_scale --backends milvus-server --name index_scale-milvus-server
                                                                   # the real Milvus server (started here), FLAT + HNSW

For each backend and size: upsert N unit vectors (512-d; ``--data clustered``: a mixture around 1000 centres,
the default, closer to real embeddings than ``--data gaussian``, the hardest case for ANN) in chunks; then Q
queries from the same distribution, each searched

* by exact numpy brute force over the same vectors, in this process (the baseline and the ground truth);
* by the index in exact mode (``ann_threshold`` above N: LanceDB flat scan, Milvus FLAT);
* by the ANN index (LanceDB: IVF_HNSW_SQ, refine x4; Milvus server: HNSW M=16, efConstruction=200, ef=200), built
  by reopening the index with ``ann_threshold`` below N and upserting one document, which is what the Search
  service does when a collection crosses the threshold. Milvus Lite stays FLAT at any size by design (see
  ``service/index/milvus.py``).

``milvus-server`` starts the real Milvus standalone server (``bench/support/milvus_server.py``, the settings the
tests use) in the work directory for the run and stops it afterwards.

Goals: exact search within 1.5x of numpy brute force (p50); ANN recall@10 >= 0.95.
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench import data
from bench.common import (
    HostLoad,
    base_parser,
    latency_summary,
    print_table,
    run_header,
    write_results,
)

DIM = 512
K = 10
COLLECTION = "scale"
EXACT_GOAL = 1.5
RECALL_GOAL = 0.95


def _docs(vecs: np.ndarray, start: int) -> list[Any]:
    from service.index import IndexRecord

    return [
        IndexRecord(id=f"d{start + i}", text=None, image=None, metadata={}, embedding=row)
        for i, row in enumerate(vecs.tolist())
    ]


def _uri(backend: str, root: Path) -> str:
    if backend == "milvus-server":
        from bench.support.milvus_server import MilvusServer

        server = MilvusServer(root / "milvus-server")
        _SERVERS[str(root)] = server.start()
        return server.uri
    return str(root / "milvus.db") if backend == "milvus" else str(root / "lance")


_SERVERS: dict[str, Any] = {}
_URIS: dict[str, str] = {}


def _index_uri(backend: str, root: Path) -> str:
    """One URI per run directory (the server is started once, by the first caller)."""
    if str(root) not in _URIS:
        _URIS[str(root)] = _uri(backend, root)
    return _URIS[str(root)]


def ingest(backend: str, root: Path, vecs: np.ndarray, chunk: int) -> dict[str, Any]:
    from service.index.factory import open_index

    n = len(vecs)
    load = HostLoad().start()
    t0 = time.perf_counter()
    with open_index(_index_uri(backend, root), ann_threshold=n + 1) as index:
        index.ensure_collection(COLLECTION, DIM, "bench-random")
        for start in range(0, n, chunk):
            index.upsert(COLLECTION, _docs(vecs[start : start + chunk], start))
        count = index.get_collection(COLLECTION).count
    elapsed = time.perf_counter() - t0
    if count != n:
        raise RuntimeError(f"{backend}: {count} rows after ingesting {n}")
    return {"seconds": round(elapsed, 2), "vectors_per_s": round(n / elapsed, 1), "chunk": chunk, "host": load.stop()}


def brute_force(vecs: np.ndarray, queries: np.ndarray) -> tuple[list[list[str]], dict[str, Any]]:
    """Exact top-K by numpy (one query at a time, like the index is called), with latencies."""
    ids, lat = [], []
    for q in queries:
        t0 = time.perf_counter()
        scores = vecs @ q
        top = np.argpartition(-scores, K)[:K]
        top = top[np.argsort(-scores[top])]
        lat.append((time.perf_counter() - t0) * 1000)
        ids.append([f"d{i}" for i in top])
    return ids, latency_summary(lat)


def search(index: Any, queries: np.ndarray, truth: list[list[str]], warmup: int = 3) -> dict[str, Any]:
    for q in queries[:warmup]:
        index.search(COLLECTION, q.tolist(), K)
    lat, recalls = [], []
    load = HostLoad().start()
    for q, exact in zip(queries, truth, strict=True):
        t0 = time.perf_counter()
        hits = index.search(COLLECTION, q.tolist(), K)
        lat.append((time.perf_counter() - t0) * 1000)
        recalls.append(len({h.id for h in hits} & set(exact)) / K)
    return {
        "latency": latency_summary(lat),
        "recall_at_10": round(float(np.mean(recalls)), 4),
        "recall_at_10_min": round(float(np.min(recalls)), 2),
        "host": load.stop(),
    }


def run_backend(backend: str, n: int, vecs: np.ndarray, queries: np.ndarray, truth: Any, args: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix=f"mmsearch-index-{backend}-", dir=args.workdir) as tmp:
        root = Path(tmp)
        try:
            _measure(backend, root, n, vecs, queries, truth, args, out)
        finally:
            server = _SERVERS.pop(str(root), None)
            _URIS.pop(str(root), None)
            if server is not None:
                out["server_rss_mb"] = server.rss_mb()
                server.stop()
        out["disk_mb"] = round(sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 2**20, 1)
    gc.collect()
    return out


def _measure(
    backend: str, root: Path, n: int, vecs: np.ndarray, queries: np.ndarray, truth: Any, args: Any, out: dict[str, Any]
) -> None:
    from service.index import IndexRecord
    from service.index.factory import open_index

    out["ingest"] = ingest(backend, root, vecs, args.chunk)
    print(f"  {backend} {n}: ingest {out['ingest']['vectors_per_s']} vectors/s", flush=True)
    with open_index(_index_uri(backend, root), ann_threshold=n + 1) as index:
        out["exact"] = search(index, queries, truth)
    print(
        f"  {backend} {n}: exact p50 {out['exact']['latency']['p50_ms']} ms, recall@10 {out['exact']['recall_at_10']}",
        flush=True,
    )
    if backend in ("lancedb", "milvus-server") and not args.no_ann:
        with open_index(_index_uri(backend, root), ann_threshold=max(1, n // 2)) as index:
            t0 = time.perf_counter()
            again = IndexRecord(id="d0", text=None, image=None, metadata={}, embedding=vecs[0].tolist())
            index.upsert(COLLECTION, [again])  # crosses the threshold: the ANN index is built in the background
            index.wait_for_maintenance(3600)
            build_s = time.perf_counter() - t0
            out["ann"] = {"index_build_s": round(build_s, 2), **search(index, queries, truth)}
        print(
            f"  {backend} {n}: ANN build {build_s:.1f} s, p50 {out['ann']['latency']['p50_ms']} ms,"
            f" recall@10 {out['ann']['recall_at_10']}",
            flush=True,
        )


def parse_args(argv: Sequence[str] | None) -> Any:
    p = base_parser("Index scale: ingest, query latency and recall@10 per backend vs numpy brute force.")
    p.add_argument("--sizes", default=None, help="collection sizes (default 100000; add 1000000 for 1M)")
    p.add_argument("--backends", default="lancedb,milvus", help="lancedb, milvus (Lite), milvus-server")
    p.add_argument("--queries", type=int, default=None, help="queries per measurement (default 100)")
    p.add_argument("--chunk", type=int, default=10_000, help="documents per upsert call")
    p.add_argument("--data", choices=["clustered", "gaussian"], default="clustered")
    p.add_argument("--no-ann", action="store_true", help="skip the LanceDB ANN build")
    p.add_argument("--workdir", default=None, help="where the indexes are written (default: system temp)")
    p.add_argument("--name", default=None, help="result file name (default index_scale)")
    args = p.parse_args(argv)
    args.sizes = [int(x) for x in (args.sizes or ("2000" if args.tiny else "100000")).split(",")]
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.queries = args.queries or (10 if args.tiny else 100)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.monotonic()
    results: dict[str, Any] = {
        **run_header(args),
        "sizes": {},
    }
    clusters = 0 if args.data == "gaussian" else 1000
    for n in args.sizes:
        vecs = data.unit_vectors(n, DIM, seed=1, clusters=clusters)
        queries = data.unit_vectors(args.queries, DIM, seed=2, clusters=clusters, centre_seed=1)
        truth, bf = brute_force(vecs, queries)
        print(f"{n} x {DIM}: numpy brute force p50 {bf['p50_ms']} ms", flush=True)
        entry: dict[str, Any] = {"numpy_brute_force": bf, "backends": {}}
        for backend in args.backends:
            r = run_backend(backend, n, vecs, queries, truth, args)
            r["exact_vs_numpy_p50"] = round(r["exact"]["latency"]["p50_ms"] / bf["p50_ms"], 2)
            entry["backends"][backend] = r
        results["sizes"][str(n)] = entry
        del vecs
        gc.collect()
    results["goal"] = _goal(results)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    rows = []
    for n, e in results["sizes"].items():
        bf = e["numpy_brute_force"]
        rows.append([n, "numpy", "brute force", "", bf["p50_ms"], bf["p99_ms"], 1.0, "", ""])
        for backend, r in e["backends"].items():
            rows.append(
                [n, backend, "exact", r["ingest"]["vectors_per_s"], r["exact"]["latency"]["p50_ms"],
                 r["exact"]["latency"]["p99_ms"], r["exact_vs_numpy_p50"], r["exact"]["recall_at_10"], ""]
            )  # fmt: skip
            if "ann" in r:
                a = r["ann"]
                rows.append(
                    [n, backend, "ANN", "", a["latency"]["p50_ms"], a["latency"]["p99_ms"],
                     round(a["latency"]["p50_ms"] / bf["p50_ms"], 2), a["recall_at_10"], a["index_build_s"]]
                )  # fmt: skip
    print_table(
        f"Index scale ({DIM}-d, {args.data}, {args.queries} queries, k={K})",
        ["N", "backend", "mode", "ingest vec/s", "p50 ms", "p99 ms", "x numpy", "recall@10", "build s"],
        rows,
    )
    print(f"goals: {results['goal']}")
    write_results(args.out, args.name or ("index_scale" + ("-tiny" if args.tiny else "")), results)
    return results


def _goal(results: dict[str, Any]) -> dict[str, Any]:
    exact = {f"{n}/{b}": r["exact_vs_numpy_p50"] for n, e in results["sizes"].items() for b, r in e["backends"].items()}
    ann = {
        f"{n}/{b}": r["ann"]["recall_at_10"]
        for n, e in results["sizes"].items()
        for b, r in e["backends"].items()
        if "ann" in r
    }
    return {
        "exact_max_ratio": EXACT_GOAL,
        "exact_vs_numpy_p50": exact,
        "exact_met": {k: v <= EXACT_GOAL for k, v in exact.items()},
        "ann_recall_min": RECALL_GOAL,
        "ann_recall_at_10": ann,
        "ann_met": {k: v >= RECALL_GOAL for k, v in ann.items()},
    }


if __name__ == "__main__":
    main()
