"""A peer in the benchmark: mmsearch's Embedder vs Infinity on the same model, the same workload, equal work.

    bash bench/infinity_env.sh                 # once: Infinity 0.0.78 in its own virtualenv (never the project's)
    .venv/bin/python -m bench.peer             # ViT-B/32-shaped CLIP, texts and images, 32 clients (~10 min)
    .venv/bin/python -m bench.peer --tiny      # smoke size

Servers (all started at once; idle ones cost only memory): Infinity and the Embedder bento at their defaults, and
both at ``--matched-threads`` (Infinity has no thread option: ``OMP_NUM_THREADS``; mmsearch:
``MMSEARCH_TORCH_THREADS``). Workloads: ``--clients`` closed-loop clients each sending ONE input per request
to the OpenAI-shaped ``/embeddings`` route of each (texts; images as inline PNG data URIs). Rounds alternate over
the servers (Infinity first, then mmsearch first, ...) so they share the machine's background load. Per window:
inputs/s (Little's law) and the CPU seconds the server's process tree used per input.

Equal work: Infinity truncates CLIP text to ``config.max_length`` (20 tokens under transformers 4.x): its model
directory gets ``"max_length": 77``, as CLIP and mmsearch use; both answer float32 vectors for the same inputs,
and the cosine between their vectors for the same text and image is reported (``equal_work``).
Goal (issue #18): mmsearch/Infinity >= 1.0 at defaults for texts and images with fewer CPU-seconds per input.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import data, models
from bench.common import (
    REPO,
    HostLoad,
    alternating,
    base_parser,
    bench_env,
    bentos,
    closed_loop,
    free_port,
    json_bytes,
    print_table,
    run_header,
    stop_quickly,
    tree_usage,
    write_results,
)

SERVED_NAME = "clip"


def infinity_python() -> Path:
    """The Infinity virtualenv's python (``bench/infinity_env.sh`` creates it once)."""
    out = subprocess.run(
        ["bash", str(REPO / "bench" / "infinity_env.sh")], check=True, capture_output=True, text=True
    ).stdout
    return Path(out.strip().splitlines()[-1])


def infinity_model_dir(st_dir: Path) -> Path:
    """A copy of the benchmark CLIP that transformers 4.x (Infinity's) reads: the same weights and tokenizer
    (links), ``preprocessor_config.json`` from the nested ``processor_config.json`` of transformers 5, and
    ``max_length`` 77 (equal work)."""
    out = st_dir.with_name(st_dir.name + "-infinity")
    if (out / ".complete").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (out / name).symlink_to(st_dir / name)
    config = json.loads((st_dir / "config.json").read_text())
    config["max_length"] = 77
    (out / "config.json").write_text(json.dumps(config, indent=1))
    proc = json.loads((st_dir / "processor_config.json").read_text())
    (out / "preprocessor_config.json").write_text(
        json.dumps({**proc["image_processor"], "processor_class": "CLIPProcessor"}, indent=1)
    )
    (out / ".complete").write_text("1")
    return out


class InfinityServer:
    """``infinity_emb v2`` on a loopback port, in its own virtualenv."""

    def __init__(self, python: Path, model_dir: Path, threads: int | None, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MMSEARCH_", "OMP_", "PYTHONPATH"))}
        env.update(DO_NOT_TRACK="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", INFINITY_ANONYMOUS_USAGE_STATS="0")
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        self.cmd = [
            str(python.with_name("infinity_emb")), "v2", "--model-id", str(model_dir), "--served-model-name",
            SERVED_NAME, "--engine", "torch", "--device", "cpu", "--host", "127.0.0.1", "--port", str(self.port),
            "--no-model-warmup",  # its warm-up runs full batches at start (minutes on a busy CPU); windows warm up
        ]  # fmt: skip
        self.env, self.log = env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 600) -> InfinityServer:
        log = open(self.log, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.log.parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"infinity exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            time.sleep(0.5)
        raise RuntimeError(f"infinity not ready in {timeout}s: {self.log.read_text()[-3000:]}")


@contextlib.contextmanager
def infinity_servers(python: Path, model_dir: Path, threads: Sequence[int | None], workdir: Path) -> Iterator[Any]:
    servers = [InfinityServer(python, model_dir, t, workdir / f"infinity-{t}.log") for t in threads]
    try:
        for s in servers:
            s.start()
        yield servers
    finally:
        for s in servers:
            stop_quickly(s.proc)


def workloads(n: int) -> dict[str, tuple[list[bytes], list[bytes]]]:
    """Per workload: (Infinity bodies, mmsearch bodies), one input each, the same inputs in the same order."""
    texts = data.texts(n)
    uris = [data.data_uri(data.encode(data.photo_like(i))) for i in range(n)]
    return {
        "text": (
            [json_bytes({"model": SERVED_NAME, "input": [t]}) for t in texts],
            [json_bytes({"input": [t], "input_type": "document"}) for t in texts],
        ),
        "image": (
            [json_bytes({"model": SERVED_NAME, "input": [u], "modality": "image"}) for u in uris],
            [json_bytes({"input": [{"image": u}], "input_type": "document"}) for u in uris],
        ),
    }


def _vectors(url: str, body: bytes, route: str) -> np.ndarray:
    r = httpx.post(url + route, content=body, headers={"content-type": "application/json"}, timeout=120)
    r.raise_for_status()
    return np.asarray([d["embedding"] for d in r.json()["data"]], dtype=np.float32)


def equal_work(inf_url: str, mm_url: str, loads: dict[str, tuple[list[bytes], list[bytes]]]) -> dict[str, float]:
    """Cosine between the two servers' vectors for the same first input of each workload (1.0: same work)."""
    out = {}
    for name, (inf_bodies, mm_bodies) in loads.items():
        a, b = _vectors(inf_url, inf_bodies[0], "/embeddings")[0], _vectors(mm_url, mm_bodies[0], "/v1/embeddings")[0]
        out[name] = round(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))), 5)
    return out


def window(url: str, route: str, pid: int, bodies: list[bytes], args: Any) -> dict[str, Any]:
    load = HostLoad().start()
    cpu0, t0 = tree_usage(pid).cpu_s, time.monotonic()
    res = closed_loop(url + route, bodies, concurrency=args.clients, duration_s=args.duration, min_warmup_s=args.warmup)
    cpu, elapsed = tree_usage(pid).cpu_s - cpu0, time.monotonic() - t0
    items = res.items_per_s * elapsed  # inputs served over the whole window (warm-up and drain included)
    return {
        **res.summary(),
        "server_cpu_s": round(cpu, 2),
        "cpu_s_per_item": round(cpu / items, 5) if items else float("nan"),
        "server_cores_busy": round(cpu / elapsed, 3),
        "host": load.stop(),
    }


def parse_args(argv: Sequence[str] | None) -> Any:
    p = base_parser("mmsearch vs Infinity: same model, same workload, equal work.")
    p.add_argument("--model", default=None, help="bench.models embedder (vitb32; --tiny: tiny)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--matched-threads", type=int, default=1, help="thread count both run at (0: skip)")
    p.add_argument("--duration", type=float, default=None, help="seconds per window (10)")
    p.add_argument("--warmup", type=float, default=None, help="warm-up seconds per window (3)")
    p.add_argument("--rounds", type=int, default=None, help="rounds over the servers (3)")
    p.add_argument("--workloads", default="text,image")
    p.add_argument("--name", default=None)
    args = p.parse_args(argv)
    t = args.tiny
    args.model = args.model or ("tiny" if t else "vitb32")
    args.duration = args.duration or (1.0 if t else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (0.3 if t else 3.0)
    args.rounds = args.rounds or (1 if t else 3)
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    args.name = args.name or f"peer-infinity-{args.model}" + ("-tiny" if t and args.model != "tiny" else "")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    results: dict[str, Any] = run_header(args)
    started = time.monotonic()
    python = infinity_python()
    st_dir = models.embedder_path(args.model)
    inf_dir = infinity_model_dir(st_dir)
    loads = {k: v for k, v in workloads(64).items() if k in args.workloads}
    configs = ["default"] + ([f"{args.matched_threads}-thread"] if args.matched_threads else [])
    inf_threads: list[int | None] = [None] + ([args.matched_threads] if args.matched_threads else [])
    results["versions_infinity"] = (python.parent.parent / "freeze.txt").read_text().split()
    with tempfile.TemporaryDirectory(prefix="mmsearch-peer-") as tmp:
        workdir = Path(tmp)
        specs = []
        for i, threads in enumerate(inf_threads):
            env = bench_env(
                workdir / f"mm{i}",
                MMSEARCH_PROFILE="default",
                MMSEARCH_EMBEDDER_MODEL=str(st_dir),
                MMSEARCH_TORCH_THREADS=str(threads or "auto"),
                MMSEARCH_MAX_IMAGE_BYTES=str(20 * 1024 * 1024),
            )
            env.pop("OMP_NUM_THREADS")  # mmsearch sets torch's threads itself (auto: its share of the CPUs)
            specs.append(("service.embedder:Embedder", env))
        with bentos(specs, workdir) as mm, infinity_servers(python, inf_dir, inf_threads, workdir) as inf:
            results["equal_work_cosine"] = equal_work(inf[0].url, mm[0].url, loads)
            print(f"equal work (cosine, Infinity vs mmsearch, same input): {results['equal_work_cosine']}", flush=True)
            runs: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {}
            for r in range(args.rounds):
                for name, (inf_bodies, mm_bodies) in loads.items():
                    for config, mm_s, inf_s in zip(configs, mm, inf, strict=True):
                        pair = [
                            ("infinity", (inf_s.url, "/embeddings", inf_s.proc.pid, inf_bodies)),
                            ("mmsearch", (mm_s.url, "/v1/embeddings", mm_s.proc.pid, mm_bodies)),
                        ]
                        for server, (url, route, pid, bodies) in alternating(pair, r):  # a trend cancels
                            w = window(url, route, pid, bodies, args)
                            runs.setdefault(name, {}).setdefault(config, {}).setdefault(server, []).append(w)
                            print(
                                f"round {r + 1} {name:5s} {config:9s} {server:8s}: {w['items_per_s']:7.2f} inputs/s"
                                f"  {w['cpu_s_per_item'] * 1000:7.1f} CPU-ms/input  cores {w['server_cores_busy']:.2f}"
                                f"  errors {w['errors']}  load {w['host']['loadavg_1m']}"
                                f"  foreign cpu {w['host']['foreign_cpu_frac']:.2f}",
                                flush=True,
                            )
    results["runs"] = runs
    results["summary"] = summarize(runs)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    rows = [
        [name, config, s["infinity_items_per_s"], s["mmsearch_items_per_s"], s["ratio"],
         " ".join(f"{x:.2f}" for x in s["ratios"]), s["infinity_cpu_ms_per_item"], s["mmsearch_cpu_ms_per_item"]]
        for name, by_config in results["summary"].items()
        for config, s in by_config.items()
    ]  # fmt: skip
    print_table(
        f"mmsearch vs Infinity ({args.model}, {args.clients} one-input clients, {args.rounds} paired rounds)",
        ["workload", "threads", "Infinity/s", "mmsearch/s", "ratio", "per round", "Inf CPU-ms/in", "mm CPU-ms/in"],
        rows,
    )
    results["goal"] = {name: goal(s["default"]) for name, s in results["summary"].items()}
    print(json.dumps(results["goal"], indent=1))
    write_results(args.out, args.name, results)
    return results


def goal(s: dict[str, Any]) -> dict[str, Any]:
    fewer = s["mmsearch_cpu_ms_per_item"] < s["infinity_cpu_ms_per_item"]
    return {"ratio_at_defaults": s["ratio"], "fewer_cpu_s_per_input": fewer, "met": s["ratio"] >= 1.0 and fewer}


def summarize(runs: dict[str, dict[str, dict[str, list[dict[str, Any]]]]]) -> dict[str, Any]:
    """Ratio = sum of mmsearch inputs/s over rounds / sum of Infinity's (paired windows); CPU per input: totals."""
    out: dict[str, Any] = {}
    for name, by_config in runs.items():
        for config, by_server in by_config.items():
            inf, mm = by_server["infinity"], by_server["mmsearch"]
            inf_rate, mm_rate = sum(w["items_per_s"] for w in inf), sum(w["items_per_s"] for w in mm)

            def cpu_ms(ws: list[dict[str, Any]]) -> float:
                return round(1000 * statistics_mean([w["cpu_s_per_item"] for w in ws]), 2)

            out.setdefault(name, {})[config] = {
                "infinity_items_per_s": round(inf_rate / len(inf), 2),
                "mmsearch_items_per_s": round(mm_rate / len(mm), 2),
                "ratio": round(mm_rate / inf_rate, 3) if inf_rate else float("nan"),
                "ratios": [round(b["items_per_s"] / a["items_per_s"], 3) for a, b in zip(inf, mm, strict=True)],
                "infinity_cpu_ms_per_item": cpu_ms(inf),
                "mmsearch_cpu_ms_per_item": cpu_ms(mm),
            }
    return out


def statistics_mean(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return sum(xs) / len(xs) if xs else float("nan")


if __name__ == "__main__":
    main()
