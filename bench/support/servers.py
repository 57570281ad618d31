"""Start and stop real servers on loopback for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psutil

from service.stop import stop, wait_exited

REPO = Path(__file__).resolve().parents[2]
BENTOML = str(Path(sys.executable).with_name("bentoml"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process_tree(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM the process and every descendant (circus workers run in their own sessions), then SIGKILL."""
    try:
        parent = psutil.Process(proc.pid)
        procs = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    stop(procs, timeout)
    with contextlib.suppress(Exception):
        proc.wait(timeout=5)


def kill_process_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process and every descendant at once (a crash, not a shutdown)."""
    try:
        parent = psutil.Process(proc.pid)
        procs = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    wait_exited(procs, 10)  # orphaned workers stay zombies until PID 1 reaps them: exited all the same
    with contextlib.suppress(Exception):
        proc.wait(timeout=5)


class BentoServer:
    """A real ``bentoml serve`` (or per-service start) process on 127.0.0.1."""

    def __init__(
        self, args: list[str], env: Mapping[str, str], log_path: Path, port: int | None = None, *, listen: bool = True
    ) -> None:
        """``listen=False``: ``args`` already name the port (e.g. ``make serve PORT=...``); no --host/--port added."""
        self.port = port or free_port()
        self.listen = listen
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = args
        self.env = dict(env)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def entry_worker(self) -> psutil.Process:
        """The worker of the service that listens on the port (its dependencies, e.g. Search's Reader, run in
        workers of their own: only the entry service's worker gets ``--backlog``)."""
        assert self.proc is not None
        children = psutil.Process(self.proc.pid).children(recursive=True)
        workers = [c for c in children if "_bentoml_impl.worker" in " ".join(c.cmdline())]
        entry = [c for c in workers if "--backlog" in c.cmdline()]
        assert len(entry) == 1, [c.cmdline() for c in workers]
        return entry[0]

    def start(self, ready_timeout: float = 120.0) -> BentoServer:
        cmd = [*self.args, *(["--host", "127.0.0.1", "--port", str(self.port)] if self.listen else [])]
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server not ready in {ready_timeout}s:\n{self.tail()}")

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` (composed BentoML servers sometimes take ~60 s to exit)."""
        if self.proc is not None:
            stop_process_tree(self.proc, timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None:
            kill_process_tree(self.proc)


def bento_env(tmp: Path, **extra: str) -> dict[str, str]:
    """Environment for a tiny-profile bento in ``tmp``: loopback fetches allowed, one torch thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMSEARCH_")}
    env.update(
        {
            "MMSEARCH_PROFILE": "tiny",
            "MMSEARCH_TINY_DIR": str(tiny_dir()),
            "MMSEARCH_INDEX_URI": str(tmp / "index"),
            "MMSEARCH_MEDIA_DIR": str(tmp / "media"),
            "MMSEARCH_FETCH_ALLOW": "127.0.0.1/32",
            "MMSEARCH_FETCH_ALLOW_ONLY": "true",  # tests never fetch beyond loopback
            "MMSEARCH_TORCH_THREADS": "1",
            "MMSEARCH_MAX_IMAGE_BYTES": "1000000",
            "MMSEARCH_FETCH_DEADLINE_S": "3",
            "MMSEARCH_FETCH_READ_TIMEOUT_S": "2",
            "OMP_NUM_THREADS": "1",
            "BENTOML_DO_NOT_TRACK": "true",
            "BENTOML_HOME": str(tmp / "bentoml"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "schema"), str(REPO / "clients" / "python")]),
        }
    )
    env.update(extra)
    return env


def tiny_dir() -> Path:
    """One tiny-model cache for the whole test run (and across runs on this machine)."""
    return Path(os.environ.get("MMSEARCH_TEST_TINY_DIR", REPO / ".pytest_cache" / "mmsearch-tiny"))


class StaticServer:
    """A threaded HTTP server on 127.0.0.1 serving files from a directory (test images)."""

    def __init__(self, root: Path) -> None:
        handler = partial(_QuietHandler, directory=str(root))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @contextlib.contextmanager
    def running(self) -> Iterator[StaticServer]:
        self.thread.start()
        try:
            yield self
        finally:
            self.httpd.shutdown()
            self.httpd.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    # http.server writes headers and body separately; without TCP_NODELAY, Nagle + delayed ACK cost ~50 ms a fetch.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:
        pass
