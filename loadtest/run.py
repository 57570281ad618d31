"""Run one locust profile headless against a freshly started composed bento (tiny profile), on loopback only.

    .venv/bin/python -m loadtest.run MixedUser -u 8 -r 4 -t 60     # the recorded mixed run
    .venv/bin/python -m loadtest.run RerankUser -u 4 -t 30
    .venv/bin/python -m loadtest.run --tiny                        # smoke size: MixedUser, 2 users, 10 s

Starts ``bentoml serve service.search:Search`` (Search + Embedder + Reranker, tiny random models, one torch
thread per model service), a static image server (``img0.png`` ... ``img63.png``), seeds the collection
(``--seed-docs`` text documents embedded by the service, plus 64 image documents by URL), runs
``locust --headless`` for the given time, prints locust's summary (RPS, failures, p50/p95/p99 per request type)
and writes it with the machine and settings to ``bench/results/loadtest-<profile>.json``. Everything it started
is stopped by PID.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mmsearch_client import Client  # noqa: E402

from bench import data  # noqa: E402
from bench.common import (  # noqa: E402
    RESULTS_DIR,
    HostLoad,
    StaticProcess,
    bento,
    histogram_delta,
    print_table,
    run_header,
    scrape_batch_histogram,
    search_env,
    stop_quickly,
    write_results,
)

LOCUST = str(Path(sys.executable).with_name("locust"))
PROFILES = ("TextQueryUser", "ImageQueryUser", "RerankUser", "MixedUser")
COLLECTION = "loadtest"
P99_GOAL_MS = 1000.0


def seed(base: str, n_text: int, image_base: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    texts = data.texts(n_text, words=(6, 12), seed=13)
    with Client(base, timeout=300) as client:  # retries a 429/503 after its Retry-After (a busy machine)
        for start in range(0, n_text, 250):
            docs = [
                {"id": f"seed{i}", "text": texts[i], "metadata": {"n": i}}
                for i in range(start, min(n_text, start + 250))
            ]
            client.upsert(docs, collection=COLLECTION)
        docs = [
            {"id": f"img{i}", "image": f"{image_base}/img{i}.png", "metadata": {"kind": "image"}} for i in range(64)
        ]
        client.upsert(docs, collection=COLLECTION)
    return {"documents": n_text + 64, "seconds": round(time.perf_counter() - t0, 1)}


def read_stats(prefix: Path) -> list[dict[str, Any]]:
    """Locust's ``<prefix>_stats.csv``: one row per request name plus ``Aggregated``."""
    rows = []
    with open(f"{prefix}_stats.csv", newline="") as fh:
        for r in csv.DictReader(fh):

            def num(key: str, r: dict[str, str] = r) -> float:
                v = r.get(key, "")
                return float(v) if v not in ("", "N/A") else float("nan")

            rows.append(
                {
                    "name": r["Name"] if r["Name"] != "Aggregated" else "Aggregated",
                    "type": r["Type"],
                    "requests": int(num("Request Count")),
                    "failures": int(num("Failure Count")),
                    "rps": round(num("Requests/s"), 2),
                    "p50_ms": num("50%"),
                    "p95_ms": num("95%"),
                    "p99_ms": num("99%"),
                    "max_ms": num("Max Response Time"),
                    "mean_ms": round(num("Average Response Time"), 1),
                }
            )
    return rows


def read_failures(prefix: Path) -> list[dict[str, str]]:
    path = Path(f"{prefix}_failures.csv")
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))[:20]


def parse_args(argv: Sequence[str] | None) -> Any:
    import argparse

    from bench.common import exit_on_sigterm

    exit_on_sigterm()
    p = argparse.ArgumentParser(description="Start the composed bento and run one locust profile headless.")
    p.add_argument("profile", nargs="?", default=None, choices=PROFILES)
    p.add_argument("-u", "--users", type=int, default=None)
    p.add_argument("-r", "--spawn-rate", type=float, default=None)
    p.add_argument("-t", "--run-time", type=int, default=None, help="seconds")
    p.add_argument("--tags", default=None, help="locust --tags (e.g. rerank50)")
    p.add_argument("--exclude-tags", default=None)
    p.add_argument("--seed-docs", type=int, default=None)
    p.add_argument("--candidates", type=int, default=20, help="MMSEARCH_LT_CANDIDATES")
    p.add_argument("--threads", type=int, default=1, help="MMSEARCH_TORCH_THREADS per model service")
    p.add_argument("--tiny", "--quick", dest="tiny", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--name", default=None)
    p.add_argument("--workdir", type=Path, default=None, help="keep server logs and data here (default: temp)")
    args = p.parse_args(argv)
    args.profile = args.profile or "MixedUser"
    args.users = args.users or (2 if args.tiny else 8)
    args.spawn_rate = args.spawn_rate or max(1.0, args.users / 2)
    args.run_time = args.run_time or (10 if args.tiny else 60)  # tiny: room for locust's start on a busy machine
    args.seed_docs = args.seed_docs if args.seed_docs is not None else (100 if args.tiny else 2000)
    args.name = args.name or f"loadtest-{args.profile}" + ("-tiny" if args.tiny else "")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from bench.models import tiny_models

    tiny_models()
    results: dict[str, Any] = {
        **run_header(args),
    }
    with tempfile.TemporaryDirectory(prefix="mmsearch-loadtest-") as tmp:
        workdir = args.workdir or Path(tmp)
        data.write_images(workdir / "images", 64)
        env = search_env(
            workdir,
            MMSEARCH_TORCH_THREADS=str(args.threads),
            OMP_NUM_THREADS=str(args.threads),
            MMSEARCH_MAX_IMAGE_BYTES=str(8 * 1024 * 1024),
            MMSEARCH_FETCH_DEADLINE_S="10",
            MMSEARCH_FETCH_READ_TIMEOUT_S="5",
        )
        with StaticProcess(workdir / "images") as static, bento("service.search:Search", env, workdir) as server:
            results["server_ready_s"] = server.ready_s
            results["seed"] = seed(server.url, args.seed_docs, static.url)
            print(f"bento {server.url} ready in {server.ready_s} s; seeded {results['seed']}", flush=True)
            prefix = workdir / "locust"
            cmd = [
                LOCUST, "-f", str(REPO / "loadtest" / "locustfile.py"), "--headless",
                "-u", str(args.users), "-r", str(args.spawn_rate), "-t", f"{args.run_time}s",
                "--host", server.url, "--csv", str(prefix), "--only-summary", "--stop-timeout", "10",
                *(["--tags", *args.tags.split(",")] if args.tags else []),
                *(["--exclude-tags", *args.exclude_tags.split(",")] if args.exclude_tags else []),
                args.profile,
            ]  # fmt: skip
            lt_env = {
                **os.environ,
                "MMSEARCH_LT_COLLECTION": COLLECTION,
                "MMSEARCH_LT_IMAGE_BASE": static.url,
                "MMSEARCH_LT_CANDIDATES": str(args.candidates),
                "MMSEARCH_LT_SKIP_SEED": "1",
                "PYTHONPATH": str(REPO),
            }
            before = scrape_batch_histogram(server.url)
            load = HostLoad().start()
            proc = subprocess.Popen(cmd, cwd=REPO, env=lt_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            try:
                out, _ = proc.communicate(timeout=args.run_time + 120)
            except subprocess.TimeoutExpired:
                stop_quickly(proc)  # type: ignore[arg-type]
                raise
            finally:
                if proc.poll() is None:
                    stop_quickly(proc)  # type: ignore[arg-type]
            results["host"] = load.stop()
            results["model_batches"] = histogram_delta(before, scrape_batch_histogram(server.url))
            text = out.decode(errors="replace")
            summary = text[text.find("Type ") :] if "Type " in text else text[-4000:]
            print(summary, flush=True)
            results["locust_exit_code"] = proc.returncode
            results["locust_summary"] = summary[-8000:]
            results["stats"] = read_stats(prefix)
            results["failures"] = read_failures(prefix)
    agg = next((r for r in results["stats"] if r["name"] == "Aggregated"), None)
    if agg is None:
        raise RuntimeError(f"locust wrote no aggregated stats (exit {results['locust_exit_code']})")
    results["goal"] = {
        "p99_max_ms": P99_GOAL_MS,
        "p99_ms": agg["p99_ms"],
        "failures": agg["failures"],
        "met": agg["p99_ms"] < P99_GOAL_MS and agg["failures"] == 0,
    }
    print_table(
        f"{args.profile}: {args.users} users, {args.run_time} s (tiny models, composed bento, loopback)",
        ["request", "requests", "failures", "RPS", "p50 ms", "p95 ms", "p99 ms", "max ms"],
        [[r["name"], r["requests"], r["failures"], r["rps"], r["p50_ms"], r["p95_ms"], r["p99_ms"], r["max_ms"]]
         for r in results["stats"]],
    )  # fmt: skip
    print(f"goal p99 < {P99_GOAL_MS:.0f} ms with 0 failures: {results['goal']}")
    write_results(args.out, args.name, results)
    return results


if __name__ == "__main__":
    main()
