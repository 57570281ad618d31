"""/search throughput with one vs two Search replicas on this machine (one Milvus server, shared models).

    .venv/bin/python -m bench.replicas            # 3 paired rounds of 10 s, 16 clients (~4 min)
    .venv/bin/python -m bench.replicas --tiny     # 1 round of 3 s

Starts the real Milvus standalone server, one Embedder and one Reranker (tiny models), and two Search processes
(A, B) wired to them by URL with the same index (what deploy/kubernetes/overlays/production runs). After seeding a
collection through A, the same closed-loop load (``--clients`` clients, ``/search`` with ``rerank: false``, distinct
queries) goes either all to A or half to A and half to B, alternating in paired rounds so both see the same
background load. Everything shares this machine's cores: the figure says how far a second replica helps when
Search, the Embedder, Milvus and the load generator compete for the same CPUs, not how it scales on separate nodes.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    HostLoad,
    LoadResult,
    base_parser,
    bench_env,
    bentos,
    closed_loop,
    json_bytes,
    latency_summary,
    print_table,
    run_header,
    write_results,
)

COLLECTION = "replicas"


def seed(url: str, n: int) -> None:
    with httpx.Client(base_url=url, timeout=120) as c:
        for start in range(0, n, 100):
            docs = [{"id": f"d{i}", "text": f"document {i} about topic {i % 37}"} for i in range(start, start + 100)]
            r = c.post("/upsert", json={"collection": COLLECTION, "documents": docs})
            r.raise_for_status()


def spread(urls: Sequence[str], bodies: list[bytes], clients: int, seconds: float) -> dict[str, Any]:
    """The same closed loop, its clients split evenly over ``urls``; throughput summed, latencies pooled."""
    results: list[LoadResult] = []
    lock = threading.Lock()

    def run(url: str) -> None:
        r = closed_loop(f"{url}/search", bodies, concurrency=clients // len(urls), duration_s=seconds)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=run, args=(u,)) for u in urls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies = [x for r in results for x in r.latencies_ms]
    return {
        "rps": round(sum(r.rps for r in results), 1),
        "errors": sum(r.errors for r in results),
        "latency": latency_summary(latencies),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = base_parser("/search throughput with 1 vs 2 Search replicas (Milvus server, shared Embedder/Reranker)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=None, help="window per measurement (default 10; tiny 3)")
    p.add_argument("--rounds", type=int, default=None, help="paired rounds (default 3; tiny 1)")
    p.add_argument("--docs", type=int, default=2000)
    args = p.parse_args(argv)
    seconds = args.seconds or (3.0 if args.tiny else 10.0)
    rounds = args.rounds or (1 if args.tiny else 3)
    from bench.support.milvus_server import MilvusServer

    results: dict[str, Any] = {**run_header(args), "clients": args.clients, "window_s": seconds, "rounds": []}
    with tempfile.TemporaryDirectory(prefix="mmsearch-replicas-") as tmp:
        root = Path(tmp)
        milvus = MilvusServer(root / "milvus").start()
        try:
            with bentos(
                [
                    ("service.embedder:Embedder", bench_env(root / "embedder")),
                    ("service.reranker:Reranker", bench_env(root / "reranker")),
                ],
                root / "models",
            ) as (embedder, reranker):
                shared = {
                    "MMSEARCH_INDEX_URI": milvus.uri,
                    "MMSEARCH_MEDIA_DIR": str(root / "media"),
                    "MMSEARCH_EMBEDDER_URL": embedder.url,
                    "MMSEARCH_RERANKER_URL": reranker.url,
                }
                specs = [("service.search:Search", bench_env(root / name, **shared)) for name in ("a", "b")]
                with bentos(specs, root / "search") as (a, b):
                    seed(a.url, 200 if args.tiny else args.docs)
                    bodies = [
                        json_bytes({"collection": COLLECTION, "query": f"topic {i}", "rerank": False, "top_k": 10})
                        for i in range(64)
                    ]
                    for r in range(rounds):
                        load = HostLoad().start()
                        one = spread([a.url], bodies, args.clients, seconds)
                        two = spread([a.url, b.url], bodies, args.clients, seconds)
                        ratio = round(two["rps"] / one["rps"], 3)
                        entry = {"one": one, "two": two, "ratio": ratio, "host": load.stop()}
                        results["rounds"].append(entry)
                        print(f"round {r}: 1 replica {one['rps']} req/s, 2 replicas {two['rps']} req/s", flush=True)
                    results["milvus_rss_mb"] = milvus.rss_mb()
        finally:
            milvus.stop()
    ratios = [x["ratio"] for x in results["rounds"]]
    results["ratio_median"] = round(statistics.median(ratios), 3)
    rows = [
        [i, x["one"]["rps"], x["one"]["latency"]["p50_ms"], x["one"]["latency"]["p99_ms"], x["two"]["rps"],
         x["two"]["latency"]["p50_ms"], x["two"]["latency"]["p99_ms"], x["ratio"],
         x["one"]["errors"] + x["two"]["errors"]]
        for i, x in enumerate(results["rounds"])
    ]  # fmt: skip
    print_table(
        f"/search, {args.clients} clients, rerank off ({seconds:.0f} s windows)",
        ["round", "1: req/s", "p50 ms", "p99 ms", "2: req/s", "p50 ms", "p99 ms", "2/1", "errors"],
        rows,
    )
    write_results(args.out, "replicas" + ("-tiny" if args.tiny else ""), results)
    return results


if __name__ == "__main__":
    main()
