"""Hostile clients for the hardening tests (issue #16), each run in its own process so that its CPU use does not
hide inside the test's own event loop, plus the well-behaved client whose latency the tests measure.

    python -m bench.support.attacks slow --port P --connections 1500 --seconds 20 --key K
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[2]


async def _slow_connection(port: int, seconds: float, body: bool, key: str, stats: dict[str, int]) -> None:
    """Open a connection and drip a request into it (headers, or a body after complete headers) one byte per
    second; reconnect whenever the server closes it, until ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            stats["refused"] += 1
            await asyncio.sleep(0.5)
            continue
        stats["opened"] += 1
        head = b"POST /search HTTP/1.1\r\nHost: x\r\n"
        if body:
            head += f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n".encode()
            head += b"Content-Length: 1000000\r\n\r\n{"
        try:
            writer.write(head)
            while time.monotonic() < deadline:
                await asyncio.sleep(1.0)
                if reader.at_eof():
                    raise ConnectionResetError
                writer.write(b" ")
                await writer.drain()
        except (OSError, ConnectionResetError):
            stats["closed_by_server"] += 1
            await asyncio.sleep(0.5)  # then come back, as a slowloris client does
        finally:
            writer.close()


async def _slow(port: int, connections: int, seconds: float, key: str) -> dict[str, int]:
    stats = {"opened": 0, "closed_by_server": 0, "refused": 0}
    await asyncio.gather(
        *(_slow_connection(port, seconds, i % 2 == 1, key, stats) for i in range(connections)),
        return_exceptions=True,
    )
    return stats


def start_slow_clients(port: int, connections: int, seconds: float, key: str) -> subprocess.Popen[bytes]:
    """The slow-client attack in a child process; its stats (JSON) come on stdout when it ends."""
    cmd = [sys.executable, "-m", "bench.support.attacks", "slow", "--port", str(port)]
    cmd += ["--connections", str(connections), "--seconds", str(seconds), "--key", key]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE)


@dataclass
class Latencies:
    seconds: list[float]
    statuses: list[int]
    errors: list[str]

    @property
    def p95(self) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def measure(call: Callable[[httpx.Client], httpx.Response], seconds: float, pause: float = 0.1) -> Latencies:
    """A well-behaved client: one request at a time (new connection each, as a browser behind a proxy would) for
    ``seconds``; latency and status of each."""
    out = Latencies([], [], [])
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with httpx.Client(timeout=30) as client:
            t0 = time.perf_counter()
            try:
                r = call(client)
            except httpx.HTTPError as e:  # counted as a failure (status 0), not raised: the test reports them all
                out.seconds.append(time.perf_counter() - t0)
                out.statuses.append(0)
                out.errors.append(repr(e))
                continue
            out.seconds.append(time.perf_counter() - t0)
            out.statuses.append(r.status_code)
            if r.status_code != 200:
                out.errors.append(r.text[:200])
        time.sleep(pause)
    return out


def settled_rss(worker: psutil.Process, below: int, within_s: float = 10.0) -> int:
    """The worker's RSS once it is under ``below`` (memory handed back after a burst), or after ``within_s``
    (the caller's assertion then reports it): polled, where a fixed sleep was either too short or wasted."""
    deadline = time.monotonic() + within_s
    while (rss := int(worker.memory_info().rss)) >= below and time.monotonic() < deadline:
        time.sleep(0.1)
    return rss


class RssSampler:
    """Peak RSS of a set of processes, sampled every 20 ms in a thread."""

    def __init__(self, pids: list[int]) -> None:
        import threading

        self.procs = [psutil.Process(p) for p in pids]
        self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        return sum(p.memory_info().rss for p in self.procs)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("attack", choices=["slow"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--key", default="")
    args = parser.parse_args()
    stats = asyncio.run(_slow(args.port, args.connections, args.seconds, args.key))
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
