"""Availability under attack (issue #16): a well-behaved client's /search latency while hostile clients run.

    .venv/bin/python -m bench.attacks            # 20 s per phase (~3 min with start-up)
    .venv/bin/python -m bench.attacks --tiny     # 4 s per phase (smoke)
    .venv/bin/python -m bench.attacks --phases baseline,slow-clients --profile   # + py-spy of the Search worker

A real composed ``bentoml serve service.search:Search`` (tiny profile, LanceDB, an API key, every connection and
size limit at its default). A 30-document collection is seeded; then, for each phase, one client sends /search
requests one at a time on a new connection each (as a browser behind a proxy would), alternating
``rerank: false`` and ``rerank: true``, while the attack runs:

* ``baseline``: no attack.
* ``slow-clients``: 1,500 connections (``bench.support.attacks``, its own process) drip requests one byte per
  second, half stuck in the headers, half in a body after valid headers and key, and reconnect when cut.
* ``filter-cost``: six concurrent searches at a time, each with a filter at the complexity limit (248 ``$in``
  terms), plus the review's 520 KB filter (answered 400) now and then.
* ``huge-array``: 300,000-document upserts (14 MB of JSON), back to back (answered 413).

The issue's bound: p95 under 1 s for /search on the tiny profile. The tests (tests/test_hardening_round2_e2e.py)
assert the mechanisms (status codes, closes, memory); the timings live here. Figures depend on the machine's
load: the JSON records the host's CPU use by other processes. ``--profile`` records the Search worker with py-spy
during each attack phase (all threads, 100 Hz) and writes ``profile-attacks-<phase>.txt`` (share of samples per
frame, self and inclusive) next to the JSON.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.common import (
    HostLoad,
    base_parser,
    bento,
    percentile,
    print_table,
    run_header,
    search_env,
    write_results,
)
from bench.profile_service import PY_SPY, summarize

KEY = "bench-attacks-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
COLLECTION = "seed"
GOAL_P95_S = 1.0
SLOW_CONNECTIONS = 1500


class Probe:
    """The well-behaved client: one /search at a time, alternating rerank off and on, until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seconds: dict[bool, list[float]] = {False: [], True: []}
        self.connect_s: list[float] = []  # TCP connect (SYN to accepted): a full listen queue shows here
        self.wait_s: list[float] = []  # request sent to response headers: the server's own time
        self.statuses: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rerank = False
        while not self._stop.is_set():
            body = {"collection": COLLECTION, "query": "revenue", "top_k": 3, "candidates": 10, "rerank": rerank}
            marks: dict[str, float] = {}

            def trace(event: str, info: dict[str, Any], marks: dict[str, float] = marks) -> None:
                marks[event] = time.perf_counter()

            t0 = time.perf_counter()
            try:
                with httpx.Client(timeout=30) as c:
                    r = c.post(f"{self.url}/search", json=body, headers=AUTH, extensions={"trace": trace})
                    status = r.status_code
            except httpx.HTTPError:
                status = 0
            if status == 200:
                self.seconds[rerank].append(time.perf_counter() - t0)
                self._split(marks)
            self.statuses[status] = self.statuses.get(status, 0) + 1
            rerank = not rerank
            self._stop.wait(0.1)

    def _split(self, marks: dict[str, float]) -> None:
        connect = ("connection.connect_tcp.started", "connection.connect_tcp.complete")
        wait = ("http11.send_request_body.complete", "http11.receive_response_headers.complete")
        if all(k in marks for k in connect + wait):
            self.connect_s.append(marks[connect[1]] - marks[connect[0]])
            self.wait_s.append(marks[wait[1]] - marks[wait[0]])

    def run_for(self, seconds: float) -> Probe:
        self._thread.start()
        time.sleep(seconds)
        self._stop.set()
        self._thread.join()
        return self

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"statuses": {str(k): v for k, v in sorted(self.statuses.items())}}
        for rerank, xs in self.seconds.items():
            out["rerank_on" if rerank else "rerank_off"] = {
                "n": len(xs),
                "p50_ms": round(percentile(xs, 50) * 1000, 1),
                "p95_ms": round(percentile(xs, 95) * 1000, 1),
                "max_ms": round(max(xs) * 1000, 1) if xs else float("nan"),
            }
        everything = self.seconds[False] + self.seconds[True]
        out["p95_ms"] = round(percentile(everything, 95) * 1000, 1)
        for name, xs in (("connect", self.connect_s), ("server", self.wait_s)):
            out[f"{name}_p95_ms"] = round(percentile(xs, 95) * 1000, 1)
            out[f"{name}_max_ms"] = round(max(xs) * 1000, 1) if xs else float("nan")
        out["ok_fraction"] = round(self.statuses.get(200, 0) / max(1, sum(self.statuses.values())), 3)
        return out


class LivezProbe:
    """``GET /livez`` every 0.1 s on a new connection: answered by the Search worker's event loop alone (no model,
    no index), so its latency is the transport's and the loop's share of a slow search, apart from the model
    workers' (which a CPU-starved machine slows too)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seconds: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                with httpx.Client(timeout=30) as c:
                    if c.get(f"{self.url}/livez").status_code == 200:
                        self.seconds.append(time.perf_counter() - t0)
            except httpx.HTTPError:
                pass
            self._stop.wait(0.1)

    def start(self) -> LivezProbe:
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        xs = self.seconds
        return {
            "livez_n": len(xs),
            "livez_p50_ms": round(percentile(xs, 50) * 1000, 1),
            "livez_p95_ms": round(percentile(xs, 95) * 1000, 1),
        }


def _background(work: Callable[[threading.Event], dict[str, Any]]) -> tuple[threading.Event, Callable[[], Any]]:
    stop = threading.Event()
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(work(stop)), daemon=True)
    thread.start()

    def finish() -> dict[str, Any]:
        stop.set()
        thread.join(timeout=300)
        return result

    return stop, finish


def _filter_attack(url: str) -> Callable[[threading.Event], dict[str, Any]]:
    at_limit = {f"k{i}": {"$in": [f"v{v}" for v in range(31)]} for i in range(8)}  # 248 terms: allowed
    huge = {f"k{i}": {"$in": [f"value-{v:06d}" for v in range(1024)]} for i in range(32)}  # ~520 KB: refused
    base = {"collection": COLLECTION, "query": "revenue", "top_k": 3, "rerank": False}

    def work(stop: threading.Event) -> dict[str, Any]:
        codes: dict[str, int] = {}

        async def loop() -> None:
            async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=60) as c:
                rounds = 0
                while not stop.is_set():
                    bodies = [{**base, "filter": at_limit} for _ in range(6)]
                    if rounds % 5 == 0:
                        bodies[0] = {**base, "filter": huge}
                    for r in await asyncio.gather(*(c.post("/search", json=b) for b in bodies)):
                        codes[str(r.status_code)] = codes.get(str(r.status_code), 0) + 1
                    rounds += 1

        asyncio.run(loop())
        return {"attacker_statuses": codes}

    return work


def _huge_array_attack(url: str) -> Callable[[threading.Event], dict[str, Any]]:
    docs = [{"id": f"doc-{i}", "text": f"text {i}"} for i in range(300_000)]
    body = json.dumps({"collection": COLLECTION, "documents": docs}).encode()

    def work(stop: threading.Event) -> dict[str, Any]:
        codes: dict[str, int] = {}
        seconds: list[float] = []
        with httpx.Client(timeout=120) as c:
            while not stop.is_set():
                t0 = time.perf_counter()
                r = c.post(f"{url}/upsert", content=body, headers={**AUTH, "content-type": "application/json"})
                seconds.append(time.perf_counter() - t0)
                codes[str(r.status_code)] = codes.get(str(r.status_code), 0) + 1
        return {
            "attacker_statuses": codes,
            "body_mb": round(len(body) / 1e6, 1),
            "refusal_s_max": round(max(seconds), 2) if seconds else None,
        }

    return work


def _slow_attack(port: int, seconds: float) -> Callable[[threading.Event], dict[str, Any]]:
    from bench.support.attacks import start_slow_clients

    proc = start_slow_clients(port, connections=SLOW_CONNECTIONS, seconds=seconds, key=KEY)

    def work(stop: threading.Event) -> dict[str, Any]:
        out, _ = proc.communicate(timeout=seconds + 120)
        return {"attacker": json.loads(out or b"{}")}

    return work


def _listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full (``TcpExtListenOverflows``): a
    dropped SYN is retried by the client after 1 s, then 2 s more, ..."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True)).get("ListenOverflows", 0))
    return 0


def _entry_worker(arbiter: int) -> psutil.Process:
    """The Search worker (the one process that listens: ``--backlog``), whose CPU use each phase records (1.0 =
    one core busy all the time: the event loop is saturated)."""
    workers = [p for p in psutil.Process(arbiter).children(recursive=True) if "--backlog" in p.cmdline()]
    return workers[0]


def _profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy on the Search worker for ``seconds`` (all threads, 100 Hz), collapsed stacks into ``out``."""
    cmd = [PY_SPY, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "100", "--threads"]
    return subprocess.Popen([*cmd, "--format", "raw", "--output", str(out)], stdout=subprocess.DEVNULL)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per phase (default 20)")
    parser.add_argument(
        "--phases", default="baseline,slow-clients,filter-cost,huge-array", help="comma-separated phases to run"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the Search worker during attack phases")
    args = parser.parse_args(argv)
    seconds = args.seconds or (4.0 if args.tiny else 20.0)
    from bench.models import tiny_models

    tiny_models()
    results: dict[str, Any] = {**run_header(args), "phases": {}}
    with tempfile.TemporaryDirectory(prefix="mmsearch-attacks-") as tmp:
        workdir = Path(tmp)
        env = search_env(workdir, MMSEARCH_INDEX_URI=str(workdir / "index"), MMSEARCH_API_KEYS=KEY)
        with bento("service.search:Search", env, workdir) as server:
            url = server.url
            docs = [{"id": f"d{i}", "text": f"slide {i} about revenue and churn"} for i in range(30)]
            seed = {"collection": COLLECTION, "documents": docs}
            httpx.post(f"{url}/upsert", json=seed, headers=AUTH, timeout=120).raise_for_status()
            Probe(url).run_for(min(2.0, seconds))  # warm up both paths
            phases: list[tuple[str, Callable[[], Callable[[threading.Event], dict[str, Any]]] | None, float]] = [
                ("baseline", None, 0),
                ("slow-clients", lambda: _slow_attack(server.port, seconds + 6), 4),
                ("filter-cost", lambda: _filter_attack(url), 1),
                ("huge-array", lambda: _huge_array_attack(url), 1),
            ]
            wanted = set(args.phases.split(","))
            entry = _entry_worker(server.proc.pid)
            for name, attack, settle in phases:
                if name not in wanted:
                    continue
                load = HostLoad().start()
                cpu0 = sum(entry.cpu_times()[:2])
                overflows0 = _listen_overflows()
                finish = None
                if attack is not None:
                    _, finish = _background(attack())
                    time.sleep(settle)  # the attack is established
                spy = None
                if args.profile and attack is not None:
                    spy = _profile(entry.pid, seconds, workdir / f"{name}.stacks")
                livez = LivezProbe(url).start()
                probe = Probe(url).run_for(seconds)
                loop = livez.stop()
                attacker = finish() if finish is not None else {}
                host = load.stop()
                host["search_worker_cpu_frac"] = round((sum(entry.cpu_times()[:2]) - cpu0) / host["elapsed_s"], 3)
                host["listen_overflows"] = _listen_overflows() - overflows0  # whole host, every listener
                phase = {**probe.summary(), **loop, **attacker, "host": host}
                results["phases"][name] = phase
                print(f"{name}: {json.dumps(phase)}", flush=True)
                if spy is not None and spy.wait(timeout=60) == 0:
                    args.out.mkdir(parents=True, exist_ok=True)
                    text = f"Search worker during {name} (py-spy 100 Hz --threads)\n" + summarize(
                        workdir / f"{name}.stacks", top=40
                    )
                    (args.out / f"profile-attacks-{name}.txt").write_text(text + "\n")
                    print(text, flush=True)
    rows = []
    for name, e in results["phases"].items():
        off, on = e["rerank_off"], e["rerank_on"]
        rows.append(
            [name, off["n"] + on["n"], off["p50_ms"], off["p95_ms"], on["p50_ms"], on["p95_ms"], e["p95_ms"],
             e["ok_fraction"], e["connect_p95_ms"], e["server_p95_ms"], e["livez_p95_ms"],
             e["host"]["search_worker_cpu_frac"],
             e["host"]["foreign_cpu_frac"], e["host"]["listen_overflows"],
             json.dumps(e.get("attacker_statuses") or e.get("attacker") or {})]
        )  # fmt: skip
    worst = max(e["p95_ms"] for e in results["phases"].values())
    results["goal"] = {"p95_max_ms": GOAL_P95_S * 1000, "worst_p95_ms": worst, "met": worst <= GOAL_P95_S * 1000}
    print_table(
        f"Well-behaved /search during attacks ({seconds:.0f} s each; ms)",
        [
            "phase",
            "n",
            "off p50",
            "off p95",
            "on p50",
            "on p95",
            "all p95",
            "ok",
            "connect p95",
            "server p95",
            "livez p95",
            "worker cpu",
            "foreign",
            "listen overflows",
            "attacker",
        ],
        rows,
    )
    verdict = "met" if results["goal"]["met"] else "NOT met"
    print(f"goal p95 < {GOAL_P95_S * 1000:.0f} ms: worst {worst} ms -> {verdict}")
    write_results(args.out, "attacks-tiny" if args.tiny else "attacks", results)
    return results


if __name__ == "__main__":
    main()
