"""Query latency on the real Milvus server by consistency level, and the read-your-writes check mmsearch relies on.

    .venv/bin/python -m bench.milvus_consistency                       # starts Milvus 2.3.5 (~15 s), ~2 min
    .venv/bin/python -m bench.milvus_consistency --tiny                # a few seconds past the server start
    .venv/bin/python -m bench.milvus_consistency --uri http://127.0.0.1:19530   # an already running server

Why (issue #15.1): mmsearch searches with ``Bounded`` consistency and acknowledges each write only after one
``Strong`` read of the ids it wrote (``service/index/milvus.py``), instead of ``Strong`` on every query. This
measures both halves on one server, same data:

* **queries**: top-10 searches on ``--docs`` random unit vectors (FLAT, inner product) with each consistency level,
  interleaved query by query so every level sees the same background load; and mmsearch's own ``index.search``
  (its read path, Bounded) on a copy of the data;
* **writes**: ``index.upsert`` / ``index.delete`` acknowledgement time (the write plus the Strong wait) vs the bare
  pymilvus write;
* **read-your-writes**: a *second process* (its own client) reads, with Bounded consistency, right after the first
  acknowledged a write: through mmsearch (``index.upsert`` then ``index.delete``, read back with ``index.get``)
  and, as the control, after a bare ``upsert`` / ``delete`` with no wait. Counted: rounds where the reader saw the
  new id and no longer saw the deleted one.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import tempfile
import time
import uuid
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import HostLoad, base_parser, latency_summary, percentile, print_table, run_header, write_results

LEVELS = ("Bounded", "Strong", "Session", "Eventually")
K = 10


def _ids_expr(ids: Sequence[str]) -> str:
    return f"id in {json.dumps(list(ids))}"


def _reader(uri: str, conn: Connection) -> None:
    """Child process: answers ("raw" | "mm", collection, ids) with the ids it reads back (Bounded consistency)."""
    from pymilvus import MilvusClient

    from service.index.factory import open_index

    client = MilvusClient(uri=uri)
    with open_index(uri) as index:
        conn.send("ready")
        while True:
            msg = conn.recv()
            if msg is None:
                break
            kind, coll, ids = msg
            if kind == "raw":
                rows = client.query(coll, filter=_ids_expr(ids), output_fields=["id"], consistency_level="Bounded")
                conn.send(sorted(r["id"] for r in rows))
            else:
                conn.send(sorted(d.id for d in index.get(coll, ids)))
    client.close()


def _raw_collection(client: Any, name: str, vecs: np.ndarray) -> None:
    from pymilvus import DataType

    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=vecs.shape[1])
    params = client.prepare_index_params()
    params.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
    client.create_collection(name, schema=schema, index_params=params, consistency_level="Bounded")
    for start in range(0, len(vecs), 2000):
        rows = [{"id": f"d{start + i}", "vector": v} for i, v in enumerate(vecs[start : start + 2000].tolist())]
        client.insert(name, rows)
    client.flush(name)
    client.load_collection(name)


def _mm_collection(index: Any, name: str, vecs: np.ndarray) -> None:
    from service.index.base import IndexRecord

    index.ensure_collection(name, vecs.shape[1], "bench-random")
    for start in range(0, len(vecs), 2000):
        docs = [
            IndexRecord(id=f"d{start + i}", text=None, image=None, metadata={}, embedding=v)
            for i, v in enumerate(vecs[start : start + 2000].tolist())
        ]
        index.upsert(name, docs)


def _summary(ms: Sequence[float]) -> dict[str, float]:
    s = latency_summary(ms)
    s["p95_ms"] = round(percentile(ms, 95), 2)
    return s


def measure(uri: str, docs: int, dim: int, queries: int, rounds: int) -> dict[str, Any]:
    from pymilvus import MilvusClient

    from service.index.base import IndexRecord
    from service.index.factory import open_index

    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((docs, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    qs = rng.standard_normal((queries, dim)).astype(np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    tag = uuid.uuid4().hex[:8]
    raw, mm = f"bench_raw_{tag}", f"benchmm{tag}"
    client = MilvusClient(uri=uri)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    reader = ctx.Process(target=_reader, args=(uri, child), daemon=True)
    out: dict[str, Any] = {"docs": docs, "dim": dim, "queries_per_level": queries, "rounds": rounds}
    with open_index(uri, ann_threshold=docs * 10) as index:
        try:
            t0 = time.perf_counter()
            _raw_collection(client, raw, vecs)
            _mm_collection(index, mm, vecs)
            out["load_s"] = round(time.perf_counter() - t0, 1)
            for level in LEVELS:  # warm-up
                client.search(raw, data=[qs[0].tolist()], limit=K, consistency_level=level)
            index.search(mm, qs[0].tolist(), K)

            # queries, interleaved per query across levels
            lat: dict[str, list[float]] = {level: [] for level in (*LEVELS, "mmsearch index.search")}
            load = HostLoad().start()
            for q in qs.tolist():
                for level in LEVELS:
                    t = time.perf_counter()
                    client.search(raw, data=[q], limit=K, consistency_level=level)
                    lat[level].append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                index.search(mm, q, K)
                lat["mmsearch index.search"].append((time.perf_counter() - t) * 1000)
            out["queries"] = {name: _summary(ms) for name, ms in lat.items()}
            out["queries_host"] = load.stop()

            # read-your-writes from another process
            reader.start()
            assert parent.recv() == "ready"

            def read(kind: str, coll: str, ids: list[str]) -> list[str]:
                parent.send((kind, coll, ids))
                got: list[str] = parent.recv()
                return got

            ack: dict[str, list[float]] = {
                "mmsearch upsert": [],
                "mmsearch delete": [],
                "bare upsert": [],
                "bare delete": [],
            }
            seen = {"mmsearch": [0, 0], "bare": [0, 0]}  # [new id visible, deleted id gone]
            load = HostLoad().start()
            for r in range(rounds):
                new, old = f"n{r}", f"d{r}"
                vec = vecs[r].tolist()
                t = time.perf_counter()
                index.upsert(mm, [IndexRecord(id=new, text=None, image=None, metadata={}, embedding=vec)])
                ack["mmsearch upsert"].append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                index.delete(mm, [old])
                ack["mmsearch delete"].append((time.perf_counter() - t) * 1000)
                got = read("mm", mm, [new, old])
                seen["mmsearch"][0] += new in got
                seen["mmsearch"][1] += old not in got

                t = time.perf_counter()
                client.upsert(raw, [{"id": new, "vector": vec}])
                ack["bare upsert"].append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                client.delete(raw, filter=_ids_expr([old]))
                ack["bare delete"].append((time.perf_counter() - t) * 1000)
                got = read("raw", raw, [new, old])
                seen["bare"][0] += new in got
                seen["bare"][1] += old not in got
            out["writes_ack"] = {name: _summary(ms) for name, ms in ack.items()}
            out["read_your_writes"] = {
                name: {"rounds": rounds, "new_visible": s[0], "deleted_gone": s[1]} for name, s in seen.items()
            }
            out["writes_host"] = load.stop()
        finally:
            if reader.is_alive():
                parent.send(None)
                reader.join(timeout=30)
            if reader.is_alive():
                reader.kill()
            for name in (raw,):
                if client.has_collection(name):
                    client.drop_collection(name)
            index.drop_collection(mm)
            client.close()
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = base_parser("Milvus server: query latency by consistency level, and read-your-writes across processes")
    p.add_argument("--uri", help="an already running Milvus server (default: start one, the tested settings)")
    p.add_argument("--docs", type=int, default=None, help="vectors (default 20000; tiny 1000)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--queries", type=int, default=None, help="queries per level (default 200; tiny 20)")
    p.add_argument("--rounds", type=int, default=None, help="read-your-writes rounds (default 20; tiny 5)")
    p.add_argument("--name", default=None, help="result name (default milvus_consistency; tiny adds -tiny)")
    args = p.parse_args(argv)
    docs = args.docs or (1000 if args.tiny else 20000)
    queries = args.queries or (20 if args.tiny else 200)
    rounds = args.rounds or (5 if args.tiny else 20)
    header = run_header(args)
    if args.uri:
        res = measure(args.uri, docs, args.dim, queries, rounds)
    else:
        from bench.support.milvus_server import MilvusServer

        with tempfile.TemporaryDirectory(prefix="mmsearch-consistency-") as tmp:
            server = MilvusServer(Path(tmp) / "milvus").start()
            try:
                res = measure(server.uri, docs, args.dim, queries, rounds)
            finally:
                server.stop()
    result = {**header, **res}
    q = res["queries"]
    print_table(
        f"top-{K} search, {docs} x {args.dim}-d FLAT, {queries} queries per level (ms)",
        ["read", "p50", "p95", "p99", "mean"],
        [[n, s["p50_ms"], s["p95_ms"], s["p99_ms"], s["mean_ms"]] for n, s in q.items()],
    )
    print_table(
        "write acknowledged (ms)",
        ["write", "p50", "p95", "max"],
        [[n, s["p50_ms"], s["p95_ms"], s["max_ms"]] for n, s in res["writes_ack"].items()],
    )
    print_table(
        f"read-your-writes: another process reads (Bounded) right after the ack, {rounds} rounds",
        ["writer", "new id visible", "deleted id gone"],
        [[n, s["new_visible"], s["deleted_gone"]] for n, s in res["read_your_writes"].items()],
    )
    result["strong_over_bounded_p50"] = round(q["Strong"]["p50_ms"] / q["Bounded"]["p50_ms"], 1)
    name = args.name or ("milvus_consistency-tiny" if args.tiny else "milvus_consistency")
    write_results(args.out, name, result)
    return result


if __name__ == "__main__":
    main()
