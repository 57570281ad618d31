"""Profile a service worker under load with py-spy (all threads of the worker process, Python + native frames).

    .venv/bin/pip install py-spy==0.4.3
    .venv/bin/python -m bench.profile_service --service embedder --workload image --clients 64 --seconds 20
    .venv/bin/python -m bench.profile_service --service search --workload search-rerank --clients 1

Starts the bento (as ``bench.serving`` / ``bench.search_latency`` do), drives it with closed-loop clients, records
the worker with ``py-spy record`` and writes ``bench/results/profile-<service>-<workload>.txt``: the share of
samples per frame (self and inclusive) and per thread (``--keep-stacks``: the raw collapsed stacks too). pyinstrument
only samples the thread that starts it, so it cannot see the model thread, the event loop and the decode
threads of a worker at once; py-spy can.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from bench import data, models
from bench.common import base_parser, bench_env, bento, closed_loop, json_bytes

PY_SPY = shutil.which("py-spy") or str(Path(__import__("sys").executable).with_name("py-spy"))


def worker_pid(arbiter_pid: int, service: str) -> int:
    """The circus worker of ``service`` under the ``bentoml serve`` arbiter."""
    for p in psutil.Process(arbiter_pid).children(recursive=True):
        cmd = " ".join(p.cmdline())
        if "_bentoml_impl.worker.service" in cmd and f"--service-name {service}" in cmd:
            return p.pid
    raise RuntimeError(f"no worker for {service}")


def summarize(collapsed: Path, top: int = 30) -> str:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n_str = line.rpartition(" ")
        n = int(n_str)
        total += n
        frames = stack.split(";")
        threads[frames[0][:80]] += n
        own[frames[-1][:140]] += n
        for f in dict.fromkeys(frames[1:]):
            incl[f[:140]] += n
    out = [f"samples: {total}", "", "threads:"]
    out += [f"  {100 * v / total:5.1f}%  {k}" for k, v in threads.most_common(10)]
    out += ["", "self (top):"]
    out += [f"  {100 * v / total:5.1f}%  {k}" for k, v in own.most_common(top)]
    out += ["", "inclusive (top):"]
    out += [f"  {100 * v / total:5.1f}%  {k}" for k, v in incl.most_common(top)]
    return "\n".join(out)


def bodies_for(workload: str) -> tuple[str, list[bytes]]:
    if workload == "text":
        return "/encode", [json_bytes({"inputs": [t], "input_type": "query"}) for t in data.texts(64)]
    if workload == "image":
        uris = [data.data_uri(data.encode(data.photo_like(i))) for i in range(64)]
        return "/encode", [json_bytes({"inputs": [{"image": u}], "input_type": "query"}) for u in uris]
    if workload == "rerank-text":
        docs = data.texts(64, seed=1)
        return "/rerank", [json_bytes({"query": "a red car", "documents": [d]}) for d in docs]
    if workload.startswith("search"):
        rerank = workload == "search-rerank"
        qs = data.texts(64, seed=7)
        return "/search", [
            json_bytes({"collection": "prof", "query": q, "top_k": 10, "candidates": 50, "rerank": rerank}) for q in qs
        ]
    raise ValueError(workload)


def main(argv: Sequence[str] | None = None) -> Path:
    p = base_parser("Profile a service worker under load with py-spy.")
    p.add_argument("--service", choices=["embedder", "reranker", "search"], default="embedder")
    p.add_argument("--workload", default="text", help="text | image | rerank-text | search | search-rerank")
    p.add_argument("--model", default="vitb32", help="embedder model (bench.models); reranker: small | tiny")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--docs", type=int, default=10_000, help="search: documents ingested first")
    p.add_argument("--keep-stacks", action="store_true", help="also write the raw collapsed stacks (large)")
    args = p.parse_args(argv)
    if not Path(PY_SPY).exists():
        raise SystemExit("py-spy not found: .venv/bin/pip install py-spy==0.4.3")
    route, bodies = bodies_for(args.workload)
    name = f"profile-{args.service}-{args.workload}"
    with tempfile.TemporaryDirectory(prefix="mmsearch-prof-") as tmp:
        workdir = Path(tmp)
        extra: dict[str, str] = {
            "MMSEARCH_TORCH_THREADS": str(args.threads),
            "OMP_NUM_THREADS": str(args.threads),
            "MMSEARCH_INDEX_URI": str(workdir / "index"),
            "MMSEARCH_MAX_INPUTS_PER_REQUEST": "1000",
        }
        if args.service == "embedder":
            extra.update(MMSEARCH_PROFILE="default", MMSEARCH_EMBEDDER_MODEL=str(models.embedder_path(args.model)))
            target, svc = "service.embedder:Embedder", "Embedder"
        elif args.service == "reranker":
            extra.update(MMSEARCH_PROFILE="default", MMSEARCH_RERANKER_MODEL=str(models.reranker_path(args.model)))
            target, svc = "service.reranker:Reranker", "Reranker"
        else:
            models.tiny_models()
            target, svc = "service.search:Search", "Search"
        with bento(target, bench_env(workdir, **extra), workdir) as server:
            if args.service == "search":
                from bench.search_latency import Client, ingest

                c = Client(server.url)
                ingest(c, "prof", args.docs, 1000, seed=1)
                c.close()
            pid = worker_pid(server.proc.pid, svc)
            raw = workdir / "stacks.txt"
            result: dict[str, Any] = {}

            def load() -> None:
                result["load"] = closed_loop(
                    server.url + route, bodies, concurrency=args.clients, duration_s=args.seconds + 6
                ).summary()

            t = threading.Thread(target=load)
            t.start()
            time.sleep(3)
            subprocess.run(
                [PY_SPY, "record", "--pid", str(pid), "--duration", str(int(args.seconds)), "--rate", "100",
                 "--threads", "--native", "--format", "raw", "--output", str(raw)],
                check=True, capture_output=True,
            )  # fmt: skip
            t.join()
            args.out.mkdir(parents=True, exist_ok=True)
            if args.keep_stacks:
                (args.out / f"{name}.stacks").write_text(raw.read_text())
            load_s = result["load"]
            header = (
                f"{name}: {args.clients} clients, {args.seconds:.0f} s, py-spy 100 Hz --threads --native\n"
                f"load: {load_s['items_per_s']} inputs/s, p50 {load_s['p50_ms']} ms, p99 {load_s['p99_ms']} ms\n"
            )
            text = header + summarize(raw)
    path = args.out / f"{name}.txt"
    path.write_text(text + "\n")
    print(text)
    print(f"\nprofile: {path}")
    return path


if __name__ == "__main__":
    main()
