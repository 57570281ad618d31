"""Stop a running mmsearch server and every one of its worker processes.

``bentoml serve`` is a circus arbiter plus one process per service worker, each in its own session, so neither
Ctrl-C in another terminal nor ``kill -- -<pgid>`` reaches the workers, and a ``kill -9`` of the arbiter leaves
them serving. This finds the whole tree (from a PID, or from the TCP port the server listens on, including workers
already orphaned) and ends it: SIGTERM to every process, then SIGKILL to whatever is left after ``--timeout``.

    python -m service.stop --port 3000         # or: make stop PORT=3000
    python -m service.stop --pid 12345         # the arbiter's PID (or any process of the tree)
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time

import psutil

MARKERS = ("bentoml", "_bentoml_impl", "circus")


def _is_bento(proc: psutil.Process) -> bool:
    try:
        cmd = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return any(m in cmd for m in MARKERS)


def _root(proc: psutil.Process) -> psutil.Process:
    """The topmost BentoML process above ``proc`` (the arbiter), or ``proc`` itself."""
    root = proc
    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
        for parent in proc.parents():
            if _is_bento(parent):
                root = parent
    return root


def listeners(port: int) -> list[psutil.Process]:
    """Processes with a TCP socket listening on ``port`` (any address)."""
    pids = {
        c.pid
        for c in psutil.net_connections(kind="tcp")
        if c.pid and c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
    }
    out = []
    for pid in sorted(pids):
        with contextlib.suppress(psutil.NoSuchProcess):
            out.append(psutil.Process(pid))
    return out


def server_tree(pid: int | None = None, port: int | None = None) -> list[psutil.Process]:
    """Every process of the server given by ``pid`` and/or ``port``: its arbiter, the arbiter's descendants and
    any process still listening on ``port`` (orphaned workers)."""
    starts: list[psutil.Process] = []
    if pid is not None:
        starts.append(psutil.Process(pid))
    if port is not None:
        starts.extend(listeners(port))
    found: dict[int, psutil.Process] = {}
    for start in starts:
        root = _root(start)
        for p in (root, *root.children(recursive=True), start):
            found.setdefault(p.pid, p)
    return list(found.values())


def _running(proc: psutil.Process) -> bool:
    """False once ``proc`` has exited. A zombie has exited too: only its parent can reap it, and a parent that is
    not us (the shell or test runner that started the arbiter, or PID 1 for orphaned workers) may do so late."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_exited(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` s for ``procs`` to exit; returns those still running."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in procs if _running(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def stop(procs: list[psutil.Process], timeout: float = 30.0) -> tuple[int, int]:
    """SIGTERM every process, wait up to ``timeout``, SIGKILL the rest; returns (terminated, killed)."""
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGTERM)
    alive = wait_exited(procs, timeout)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    wait_exited(alive, 10)
    return len(procs) - len(alive), len(alive)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.stop", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, help="the TCP port the server listens on")
    parser.add_argument("--pid", type=int, help="the PID of the server (bentoml serve) or of any of its workers")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait after SIGTERM (default 30)")
    args = parser.parse_args(argv)
    if args.port is None and args.pid is None:
        parser.error("give --port and/or --pid")
    try:
        procs = server_tree(args.pid, args.port)
    except psutil.NoSuchProcess as e:
        print(f"no such process: {e.pid}", file=sys.stderr)
        return 1
    if not procs:
        print(f"nothing listens on port {args.port}", file=sys.stderr)
        return 1
    terminated, killed = stop(procs, args.timeout)
    print(f"stopped {terminated + killed} processes ({killed} needed SIGKILL)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
