"""Search latency breakdown: the composed Search bento, client-observed latency vs the server's stage timings.

    .venv/bin/python -m bench.search_latency            # 10k and 100k documents, LanceDB (~4 min)
    .venv/bin/python -m bench.search_latency --tiny     # 1k documents, 20 queries after 5 of warm-up (seconds)
    .venv/bin/python -m bench.search_latency --index milvus

A real ``bentoml serve service.search:Search`` (tiny profile: 16-d random CLIP embedder, tiny VLM reranker, one
torch thread each). Documents are ingested through ``/upsert`` with precomputed 16-d embeddings (the embedder's
dimension) plus a text that the reranker scores. Then one client sends text queries one at a time
(``top_k=10``, ``candidates=50``) with rerank on and off, and each response's ``timings_ms`` is compared with the
latency the client observed:

    orchestration overhead = client-observed total - (embed + retrieve + rerank)

i.e. HTTP in and out of Search, request validation, response building and serialisation. Goal: <= 5 ms at p50.
"""

from __future__ import annotations

import http.client
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from bench import data
from bench.common import (
    HostLoad,
    base_parser,
    bento,
    latency_summary,
    percentile,
    print_table,
    run_header,
    search_env,
    write_results,
)

DIM = 16  # the tiny CLIP's dimension
GOAL_MS = 5.0


class Client:
    """One keep-alive HTTP/1.1 connection (``http.client``: the least client-side overhead)."""

    def __init__(self, base_url: str, timeout: float = 300) -> None:
        u = urlparse(base_url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)

    def post(self, route: str, body: Any) -> tuple[float, dict[str, Any]]:
        payload = json.dumps(body).encode()
        t0 = time.perf_counter()
        self.conn.request("POST", route, payload, {"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        raw = resp.read()
        elapsed = (time.perf_counter() - t0) * 1000
        if resp.status != 200:
            raise RuntimeError(f"{route}: HTTP {resp.status}: {raw[:300]!r}")
        return elapsed, json.loads(raw)

    def close(self) -> None:
        self.conn.close()


def ingest(client: Client, collection: str, n: int, batch: int, seed: int) -> dict[str, Any]:
    vecs = data.unit_vectors(n, DIM, seed=seed, clusters=64)
    texts = data.texts(n, words=(12, 20), seed=seed, max_chars=None)  # reranked, never embedded
    load = HostLoad().start()
    t0 = time.perf_counter()
    lat = []
    for start in range(0, n, batch):
        docs = [
            {
                "id": f"d{i}",
                "text": texts[i],
                "embedding": [round(float(x), 6) for x in vecs[i]],
                "metadata": {"n": i, "group": f"g{i % 10}"},
            }
            for i in range(start, min(n, start + batch))
        ]
        ms, _ = client.post("/upsert", {"collection": collection, "documents": docs})
        lat.append(ms)
    elapsed = time.perf_counter() - t0
    return {
        "documents": n,
        "request_size": batch,
        "seconds": round(elapsed, 2),
        "docs_per_s": round(n / elapsed, 1),
        "request_latency": latency_summary(lat),
        "host": load.stop(),
    }


def measure(client: Client, collection: str, queries: Sequence[str], rerank: bool, warmup: int) -> dict[str, Any]:
    def body(q: str) -> dict[str, Any]:
        return {"collection": collection, "query": q, "top_k": 10, "candidates": 50, "rerank": rerank}

    for q in queries[:warmup]:
        client.post("/search", body(q))
    rows = []
    load = HostLoad().start()
    for q in queries:
        ms, resp = client.post("/search", body(q))
        if resp["reranked"] is not rerank or len(resp["hits"]) != 10:
            raise RuntimeError(f"unexpected response: reranked={resp['reranked']} hits={len(resp['hits'])}")
        t = resp["timings_ms"]
        rows.append((ms, t["embed"], t["retrieve"], t["rerank"], t["total"]))
    host = load.stop()
    arr = np.asarray(rows)
    client_ms, embed, retrieve, rr, server_total = arr.T
    stages = embed + retrieve + rr
    overhead = client_ms - stages
    return {
        "rerank": rerank,
        "queries": len(rows),
        "client": latency_summary(client_ms.tolist()),
        "server_total": latency_summary(server_total.tolist()),
        "stage_sum": latency_summary(stages.tolist()),
        "stages_p50_ms": {
            "embed": round(percentile(embed.tolist(), 50), 2),
            "retrieve": round(percentile(retrieve.tolist(), 50), 2),
            "rerank": round(percentile(rr.tolist(), 50), 2),
        },
        "stages_p99_ms": {
            "embed": round(percentile(embed.tolist(), 99), 2),
            "retrieve": round(percentile(retrieve.tolist(), 99), 2),
            "rerank": round(percentile(rr.tolist(), 99), 2),
        },
        "overhead": latency_summary(overhead.tolist()),
        "overhead_p50_of_difference_ms": round(percentile(overhead.tolist(), 50), 2),
        "overhead_difference_of_p50_ms": round(percentile(client_ms.tolist(), 50) - percentile(stages.tolist(), 50), 2),
        "host": host,
    }


def parse_args(argv: Sequence[str] | None) -> Any:
    p = base_parser("Search latency breakdown on the composed Search bento (tiny profile).")
    p.add_argument("--sizes", default=None, help="collection sizes (default 10000,100000)")
    p.add_argument("--queries", type=int, default=None, help="measured queries per configuration (default 300)")
    p.add_argument("--ingest-batch", type=int, default=1000, help="documents per /upsert request")
    p.add_argument("--index", choices=["lancedb", "milvus"], default="lancedb")
    args = p.parse_args(argv)
    args.sizes = [int(x) for x in (args.sizes or ("1000" if args.tiny else "10000,100000")).split(",")]
    args.queries = args.queries or (20 if args.tiny else 300)
    args.warmup = min(5 if args.tiny else 20, args.queries)  # unmeasured queries first, per configuration
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from bench.models import tiny_models

    tiny_models()  # build once, before the servers start
    started = time.monotonic()
    results: dict[str, Any] = {
        **run_header(args),
        "collections": {},
    }
    queries = data.texts(args.queries + 20, seed=7)
    with tempfile.TemporaryDirectory(prefix="mmsearch-bench-") as tmp:
        workdir = Path(tmp)
        index_uri = str(workdir / ("index.db" if args.index == "milvus" else "index"))
        env = search_env(
            workdir,
            MMSEARCH_INDEX_URI=index_uri,
            MMSEARCH_MAX_INPUTS_PER_REQUEST=str(max(args.ingest_batch, 256)),
            MMSEARCH_MAX_DOCUMENTS_PER_REQUEST=str(max(args.ingest_batch, 256)),
        )
        with bento("service.search:Search", env, workdir) as server:
            results["server_ready_s"] = server.ready_s
            client = Client(server.url)
            try:
                for n in args.sizes:
                    name = f"bench_{n}"
                    print(f"ingest {n} documents into {name} ...", flush=True)
                    ing = ingest(client, name, n, args.ingest_batch, seed=n)
                    print(f"  {ing['docs_per_s']} docs/s ({ing['seconds']} s)", flush=True)
                    entry: dict[str, Any] = {"ingest": ing}
                    for rerank in (False, True):
                        m = measure(client, name, queries[20:], rerank, warmup=args.warmup)
                        entry["rerank_on" if rerank else "rerank_off"] = m
                        print(
                            f"  rerank={'on ' if rerank else 'off'}: client p50 {m['client']['p50_ms']} ms"
                            f" p99 {m['client']['p99_ms']} ms | stages p50 {m['stages_p50_ms']}"
                            f" | overhead p50 {m['overhead_p50_of_difference_ms']} ms",
                            flush=True,
                        )
                    results["collections"][str(n)] = entry
            finally:
                client.close()
    rows = []
    worst = 0.0
    for n, e in results["collections"].items():
        for key in ("rerank_off", "rerank_on"):
            m = e[key]
            s = m["stages_p50_ms"]
            worst = max(worst, m["overhead_p50_of_difference_ms"])
            rows.append(
                [n, key.removeprefix("rerank_"), m["client"]["p50_ms"], m["client"]["p99_ms"],
                 m["server_total"]["p50_ms"], s["embed"], s["retrieve"], s["rerank"],
                 m["overhead_p50_of_difference_ms"], m["overhead"]["p99_ms"]]
            )  # fmt: skip
    results["goal"] = {"overhead_p50_max_ms": GOAL_MS, "worst_overhead_p50_ms": worst, "met": worst <= GOAL_MS}
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    print_table(
        f"Search latency ({args.index}; top_k 10 of 50 candidates; one client)",
        ["docs", "rerank", "client p50", "client p99", "server p50", "embed", "retrieve", "rerank ms",
         "overhead p50", "overhead p99"],
        rows,
    )  # fmt: skip
    print(f"goal: orchestration overhead p50 <= {GOAL_MS} ms: worst {worst} ms -> {results['goal']['met']}")
    write_results(args.out, f"search_latency-{args.index}" + ("-tiny" if args.tiny else ""), results)
    return results


if __name__ == "__main__":
    main()
