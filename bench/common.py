"""Shared benchmark plumbing: machine info, host-load accounting, result files, tables, servers, load generation.

Every benchmark writes one JSON file under ``bench/results/`` (or ``--out``) holding the machine, the versions,
the settings and every figure it printed. Nothing here is imported by the services.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
PYTHON = sys.executable
BENTOML = str(Path(sys.executable).with_name("bentoml"))
_T = TypeVar("_T")

VERSIONED = (
    "torch",
    "transformers",
    "sentence-transformers",
    "bentoml",
    "numpy",
    "pillow",
    "lancedb",
    "pylance",
    "pyarrow",
    "pymilvus",
    "milvus-lite",
    "aiohttp",
    "httpx",
    "locust",
)


# ----------------------------------------------------------------------------------------------- machine


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, GPU (if torch sees one), OS, Python and package versions, git commit."""
    versions: dict[str, str] = {}
    for name in VERSIONED:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    gpu = None
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            gpu = {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count()}
    vm = psutil.virtual_memory()
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "mem_total_gib": round(vm.total / 2**30, 1),
        "gpu": gpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "git": git_state(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


# ----------------------------------------------------------------------------------------------- host load


def _busy_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    vals = [int(x) for x in fields]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (vals + [0] * 8)[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def _tree_cpu_seconds(root: psutil.Process) -> dict[int, float]:
    out: dict[int, float] = {}
    with contextlib.suppress(psutil.Error):
        procs = [root, *root.children(recursive=True)]
        for p in procs:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
    return out


@dataclass(frozen=True)
class TreeUsage:
    """CPU seconds and minor page faults of a process and its descendants so far (``tree_usage``)."""

    user_s: float = 0.0
    system_s: float = 0.0
    minor_faults: int = 0

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.system_s


def tree_usage(pid: int) -> TreeUsage:
    """User and system CPU-s and minor faults of ``pid`` and its descendants; zeros once the process is gone."""
    user = system = 0.0
    faults = 0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                cpu = p.cpu_times()
                user, system = user + cpu.user, system + cpu.system
            with contextlib.suppress(OSError):  # Linux only: faults stay 0 elsewhere
                stat = Path(f"/proc/{p.pid}/stat").read_text()
                faults += int(stat.rsplit(")", 1)[1].split()[7])  # minflt: the 10th field, 8th after the name
    return TreeUsage(user, system, faults)


def alternating(setups: Sequence[_T], round_index: int) -> list[_T]:
    """The order of round ``round_index`` over ``setups``: A B, then B A, ...; so a trend in the machine cancels."""
    return list(setups) if round_index % 2 == 0 else list(setups)[::-1]


class HostLoad:
    """CPU used by the whole machine vs by this benchmark's process tree during a phase.

    ``foreign_cpu_frac`` is the share of all cores used by processes that are not ours (other jobs on a shared
    machine): figures taken while it is high are noisy, and the JSON records it next to every phase.
    """

    def __init__(self) -> None:
        self._me = psutil.Process()
        self._t0 = 0.0
        self._busy0 = self._steal0 = 0.0
        self._own0: dict[int, float] = {}

    def start(self) -> HostLoad:
        self._t0 = time.monotonic()
        self._busy0, self._steal0 = _busy_seconds()
        self._own0 = _tree_cpu_seconds(self._me)
        return self

    def stop(self) -> dict[str, float]:
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        busy, steal = _busy_seconds()
        own1 = _tree_cpu_seconds(self._me)
        own = sum(v - self._own0.get(pid, 0.0) for pid, v in own1.items())
        ncpu = os.cpu_count() or 1
        total = (busy - self._busy0) / (elapsed * ncpu)
        own_frac = own / (elapsed * ncpu)
        return {
            "elapsed_s": round(elapsed, 2),
            "cpu_busy_frac": round(total, 3),
            "own_cpu_frac": round(own_frac, 3),
            "foreign_cpu_frac": round(max(total - own_frac, 0.0), 3),
            "steal_frac": round((steal - self._steal0) / (elapsed * ncpu), 3),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }


def foreign_processes(min_cpu: float = 5.0) -> list[str]:
    """Busy processes outside this benchmark's tree (a note for the JSON when the machine is shared)."""
    me = psutil.Process()
    ours = {me.pid, *(p.pid for p in me.children(recursive=True))}
    procs = [p for p in psutil.process_iter(["pid", "cmdline"]) if p.pid not in ours]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.cpu_percent(None)
    time.sleep(0.5)
    out = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            pct = p.cpu_percent(None)
            if pct >= min_cpu:
                cmd = " ".join(p.info["cmdline"] or [])[:120]
                out.append(f"{pct:.0f}% {cmd}")
    return out


# ----------------------------------------------------------------------------------------------- results


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def latency_summary(ms: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else float("nan"),
        "mean_ms": round(sum(ms) / len(ms), 2) if ms else float("nan"),
    }


def run_header(args: argparse.Namespace) -> dict[str, Any]:
    """What every result JSON starts with: the machine, the settings and who else was using the CPU."""
    return {
        "machine": machine_info(),
        "settings": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "wired": bool(os.environ.get(WIRE_VAR)),  # a smoke run's Search used shared model services
        },
        "foreign_processes_at_start": foreign_processes(),
    }


def write_results(out_dir: Path, name: str, payload: Mapping[str, Any]) -> Path:
    """Write ``<out_dir>/<name>.json`` (latest) and print its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    body = {"benchmark": name, "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **payload}
    path.write_text(json.dumps(body, indent=2, default=_json_default, allow_nan=True) + "\n")
    print(f"\nresults: {path}")
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if v != v:  # NaN
                return "-"
            return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


def exit_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit`` so that ``finally`` blocks stop every server this benchmark started."""
    import signal

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def base_parser(description: str) -> argparse.ArgumentParser:
    """The shared options (``--tiny``/``--quick``, ``--out``); also makes SIGTERM stop the servers cleanly."""
    exit_on_sigterm()
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--tiny", "--quick", dest="tiny", action="store_true", help="smoke-test size (seconds)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for the JSON result (bench/results)")
    return p


# ----------------------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiny_dir() -> Path:
    """Where the tiny random models live (shared with the tests when MMSEARCH_TINY_DIR says so)."""
    return Path(os.environ.get("MMSEARCH_TINY_DIR") or Path.home() / ".cache" / "mmsearch" / "tiny")


def bench_env(workdir: Path, **extra: str) -> dict[str, str]:
    """Environment for a bento started by a benchmark: tiny-profile defaults, loopback fetches, offline hub.

    Built on the test suite's ``bento_env``; ``extra`` overrides any variable.
    """
    from bench.support.servers import bento_env

    env = bento_env(workdir, MMSEARCH_TINY_DIR=str(tiny_dir()))  # PYTHONPATH: this checkout, its schema and client
    env.update(extra)
    return env


WIRE_VAR = "MMSEARCH_BENCH_WIRE"
"""A JSON object of ``MMSEARCH_*_URL`` (and media) variables wiring Search to model services already running. Only
the test suite's smoke runs set it (tests/test_bench_smoke.py); never set it for a measurement."""


def wiring() -> dict[str, str]:
    """The variables of ``MMSEARCH_BENCH_WIRE`` (empty when it is not set: every measurement)."""
    return dict(json.loads(os.environ.get(WIRE_VAR) or "{}"))


def search_env(workdir: Path, **extra: str) -> dict[str, str]:
    """:func:`bench_env` for a Search bento whose figures do not depend on its model services' own settings.

    Under ``MMSEARCH_BENCH_WIRE`` that Search is wired by URL to the given model services, so a smoke run starts
    Search's worker only (~5 CPU-seconds here, against ~26 for a composed bento's four workers); ``extra`` still
    overrides any variable. Results say so in ``settings.wired``."""
    return bench_env(workdir, **{**wiring(), **extra})


@contextlib.contextmanager
def bentos(
    specs: Sequence[tuple[str, Mapping[str, str]]], workdir: Path, ready_timeout: float = 240.0
) -> Iterator[list[Any]]:
    """Start ``bentoml serve <target>`` for each ``(target, env)`` at once, each on a free loopback port.

    On exit every process tree is stopped by PID (SIGTERM, then SIGKILL after 5 s: a benchmark needs no
    graceful drain, and composed bentos sometimes take ~50 s to stop).
    """
    import threading

    from bench.support.servers import BentoServer

    workdir.mkdir(parents=True, exist_ok=True)
    servers = [
        BentoServer([BENTOML, "serve", target], env, workdir / f"{target.split(':')[-1]}-{i}.log")
        for i, (target, env) in enumerate(specs)
    ]
    errors: list[BaseException] = []

    def start(server: Any) -> None:
        t0 = time.monotonic()
        try:
            server.start(ready_timeout=ready_timeout)
            server.ready_s = round(time.monotonic() - t0, 1)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        if errors:
            raise errors[0]
        yield servers
    finally:
        for s in servers:
            stop_quickly(s.proc)


@contextlib.contextmanager
def bento(target: str, env: Mapping[str, str], workdir: Path, ready_timeout: float = 240.0) -> Iterator[Any]:
    """One ``bentoml serve <target>`` (see :func:`bentos`)."""
    with bentos([(target, env)], workdir, ready_timeout) as servers:
        yield servers[0]


def stop_quickly(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop a process and all its descendants by PID: SIGTERM, SIGKILL after 5 s."""
    if proc is None:
        return
    from bench.support.servers import stop_process_tree

    stop_process_tree(proc, timeout=5)


class StaticProcess:
    """``python -m bench.static_server`` in its own process (so it never competes for this process's GIL)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> StaticProcess:
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "bench.static_server", str(self.root), str(self.port)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import httpx

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"static server exited with {self.proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/", timeout=1).status_code < 500:
                    return self
            time.sleep(0.1)
        self.__exit__()
        raise RuntimeError("static server did not start")

    def __exit__(self, *exc: object) -> None:
        stop_quickly(self.proc)
        self.proc = None


# ----------------------------------------------------------------------------------------------- metrics


def scrape_batch_histogram(base_url: str) -> dict[str, dict[str, Any]]:
    """``mmsearch_model_batch_size`` from ``/metrics``: per ``service/lane``, cumulative buckets, sum and count."""
    from bench.support.metrics import scrape

    out: dict[str, dict[str, Any]] = {}
    for s in scrape(base_url, timeout=30):
        part = s.name.removeprefix("mmsearch_model_batch_size_")
        if part == s.name or part not in ("bucket", "sum", "count"):
            continue
        key = f"{s.labels.get('service')}/{s.labels.get('lane')}"
        h = out.setdefault(key, {"buckets": {}, "sum": 0.0, "count": 0.0})
        if part == "bucket":
            h["buckets"][s.labels["le"]] = h["buckets"].get(s.labels["le"], 0.0) + s.value
        else:
            h[part] += s.value
    return out


def histogram_delta(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Batches run between two scrapes: per lane, batches per size bucket (non-cumulative) and the mean size."""
    out: dict[str, dict[str, Any]] = {}
    for key, h in after.items():
        b0 = before.get(key, {"buckets": {}, "sum": 0.0, "count": 0.0})
        count = h["count"] - b0["count"]
        if count <= 0:
            continue
        les = sorted(h["buckets"], key=lambda s: float("inf") if s == "+Inf" else float(s))
        cum = [h["buckets"][le] - b0["buckets"].get(le, 0.0) for le in les]
        per = {}
        prev = 0.0
        for le, c in zip(les, cum, strict=True):
            if c - prev > 0:
                label = "+Inf" if le == "+Inf" else str(int(float(le)))
                per[f"<={label}"] = round(c - prev)
            prev = c
        out[key] = {
            "batches": round(count),
            "items": round(h["sum"] - b0["sum"]),
            "mean_batch_size": round((h["sum"] - b0["sum"]) / count, 2),
            "histogram": per,
        }
    return out


# ----------------------------------------------------------------------------------------------- load generator


@dataclass
class LoadResult:
    """A closed-loop run: ``concurrency`` clients, each sending its next request when the last one returned.

    Throughput is ``concurrency / mean cycle time`` (Little's law for a closed system; a cycle is one request
    plus the client's gap before its next one) over the requests that completed in the window. A batching server
    answers in bursts of a whole batch, so simply counting completions in a window of a few batch periods is off
    by up to one batch; the count-based figure is kept as ``rps_window`` for comparison.
    """

    concurrency: int
    window_s: float
    items_per_request: int
    ok: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    cycles_ms: list[float] = field(default_factory=list)
    warmup_s: float = 0.0

    @property
    def rps_window(self) -> float:
        return self.ok / self.window_s if self.window_s else 0.0

    @property
    def rps(self) -> float:
        if not self.cycles_ms or self.errors:
            return self.rps_window
        return self.concurrency / (sum(self.cycles_ms) / len(self.cycles_ms) / 1000)

    @property
    def items_per_s(self) -> float:
        return self.rps * self.items_per_request

    def summary(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "window_s": round(self.window_s, 2),
            "warmup_s": round(self.warmup_s, 2),
            "requests_ok": self.ok,
            "errors": self.errors,
            "error_samples": self.error_samples[:5],
            "rps": round(self.rps, 3),
            "rps_window": round(self.rps_window, 3),
            "items_per_s": round(self.items_per_s, 3),
            **latency_summary(self.latencies_ms),
        }


async def _closed_loop(
    url: str,
    bodies: Sequence[bytes],
    concurrency: int,
    duration_s: float,
    min_warmup_s: float,
    items_per_request: int,
    timeout_s: float,
    check: Callable[[bytes], None] | None,
) -> LoadResult:
    import aiohttp

    records: list[tuple[int, float, float, bool, str]] = []  # (client, start, end, ok, error)
    done_count = 0
    stop_at: float | None = None
    window: list[float] = []
    warm = asyncio.Event()
    t0 = time.perf_counter()

    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False, enable_cleanup_closed=True)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker(i: int) -> None:
            nonlocal done_count
            k = i
            while stop_at is None or time.perf_counter() < stop_at:
                body = bodies[k % len(bodies)]
                k += concurrency
                start = time.perf_counter()
                ok, err = False, ""
                try:
                    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                        payload = await r.read()
                        if r.status == 200:
                            if check is not None:
                                check(payload)
                            ok = True
                        else:
                            err = f"HTTP {r.status}: {payload[:200]!r}"
                except Exception as e:
                    err = f"{type(e).__name__}: {e}"[:200]
                records.append((i, start, time.perf_counter(), ok, err))
                done_count += 1
                # warm once the clients have completed a round of requests and the minimum time has passed
                if not warm.is_set() and done_count >= concurrency and time.perf_counter() - t0 >= min_warmup_s:
                    warm.set()
                if not ok:
                    await asyncio.sleep(0.05)

        tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
        await warm.wait()
        w0 = time.perf_counter()
        done_at_w0 = done_count
        await asyncio.sleep(duration_s)
        # A window shorter than one round of batches (a loaded machine, a short --tiny run) would count nothing:
        # it stays open until every client could have completed a request in it (bounded by the request timeout).
        while done_count - done_at_w0 < concurrency and time.perf_counter() - w0 < timeout_s:
            await asyncio.sleep(0.02)
        stop_at = time.perf_counter()
        window = [w0, stop_at]
        await asyncio.gather(*tasks)  # drain: each client finishes the request it has in flight

    res = LoadResult(concurrency, window[1] - window[0], items_per_request, warmup_s=w0 - t0)
    next_start: dict[tuple[int, float], float] = {}
    last: dict[int, float] = {}
    for client, start, _end, _ok, _err in sorted(records, key=lambda r: r[1], reverse=True):
        if client in last:
            next_start[(client, start)] = last[client]
        last[client] = start
    for client, start, end, ok, err in records:
        if not window[0] <= end <= window[1]:
            continue
        if ok:
            res.ok += 1
            res.latencies_ms.append((end - start) * 1000)
            res.cycles_ms.append((next_start.get((client, start), end) - start) * 1000)
        else:
            res.errors += 1
            if len(res.error_samples) < 5:
                res.error_samples.append(err)
    return res


def closed_loop(
    url: str,
    bodies: Sequence[bytes],
    *,
    concurrency: int,
    duration_s: float,
    min_warmup_s: float = 2.0,
    items_per_request: int = 1,
    timeout_s: float = 600.0,
    check: Callable[[bytes], None] | None = None,
) -> LoadResult:
    """Run ``concurrency`` closed-loop clients POSTing pre-encoded JSON ``bodies`` (round robin) to ``url``.

    Warm-up lasts until the clients have completed ``concurrency`` requests (and at least ``min_warmup_s``);
    then requests that complete within the next ``duration_s`` seconds are counted. In-flight requests are drained (not
    counted) so that the next phase starts on an idle server.
    """
    return asyncio.run(
        _closed_loop(url, bodies, concurrency, duration_s, min_warmup_s, items_per_request, timeout_s, check)
    )


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
