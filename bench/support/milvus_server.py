"""The real Milvus standalone server (PyPI ``milvus==2.3.5``: the server binary inside the wheel) for tests.

The package's own config writer (``milvus.MilvusServerConfig``, what its ``milvus-server`` wrapper uses) writes
``<data>/configs/milvus.yaml`` once, with free ports; the server binary is then started directly (our PID) and
stopped by PID: SIGTERM (graceful), SIGKILL after a timeout. A restart reuses the config, so it comes back on the
same ports (the wrapper would pick new ones while the old ones are in TIME_WAIT, and the restarted server then
waits for coordinators registered at the old addresses). Facts that shape this:

* The proxy and root-coordinator ports are chosen here, below the ephemeral range (``low_free_port``); the
  config writer picks free ports for the rest (probing 127.0.0.1 upwards from
  the defaults 2379, 19529, 19531, 13333, 21121-21124, 53100; metrics from 9091).
* Embedded etcd listens on 127.0.0.1. The gRPC ports of the internal components and the metrics port listen on all
  interfaces: Milvus 2.3 has no bind-address setting (``<role>.ip``, set to 127.0.0.1 here, only changes the
  address each component registers and is called on, so every internal call stays on loopback).
* The server writes ``/run/milvus/standalone.pid`` (``/tmp/milvus`` if ``/run`` is not writable) and holds a lock
  on it: one Milvus standalone per machine. :func:`holder_of_pid_lock` names a live holder before we start.
* The wrapper unpacks the 246 MB binary into ``<data>/bin``; a shared unpacked copy is linked in instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import psutil

from bench.support.servers import REPO
from service.stop import stop, wait_exited

PID_FILES = (Path("/run/milvus/standalone.pid"), Path("/tmp/milvus/standalone.pid"))
ROLES = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")
RECOMMENDED = {
    # Growing (not yet sealed) segments of an HNSW collection are otherwise searched through an interim IVF index
    # (nlist 128, nprobe 16): measured recall@10 0.47 at 10k x 64-d. Off: they are searched exactly.
    # deploy/kubernetes/README.md gives the same setting for the Milvus Helm chart.
    "queryNode.segcore.interimIndex.enableIndex": "false",
}


CAUSE = re.compile(
    r"^(panic:|fatal error:|SIG[A-Z]+:|signal arrived|terminate called|what\(\):|F\d{8} |\[\d{4}/.*\[(FATAL|ERROR)\])"
)


class ServerDied(RuntimeError):
    """The server process exited before it answered."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


# Ports below Linux's ephemeral range (32768-60999), which the kernel never hands to an outgoing connection or a
# port-0 bind: the config writer's default for the root coordinator, 53100, lies inside it, and in CI another
# process's connection held it between the writer's probe and the server's bind ("panic: listen tcp :53100: bind:
# address already in use", exit -6). The writer's other defaults are already below it.
PROXY_PORTS = range(24000, 25000)
ROOT_COORD_PORTS = range(25000, 26000)


def low_free_port(ports: range) -> int:
    """The first port of ``ports`` free on 127.0.0.1 and on every interface (the server listens on all)."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1}")


def holder_of_pid_lock() -> int | None:
    """PID of a running Milvus standalone holding its lock file, or None (a stale file is not a holder)."""
    for path in PID_FILES:
        if not path.exists():
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            with contextlib.suppress(ValueError, OSError):
                return int(path.read_text().strip() or "0") or -1
            return -1
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    return None


def bin_cache() -> Path:
    return Path(os.environ.get("MMSEARCH_TEST_MILVUS_BIN", REPO / ".pytest_cache" / "milvus-bin"))


class MilvusServer:
    """One Milvus standalone server process tree on loopback, with its data in ``data_dir``."""

    def __init__(self, data_dir: Path, extra_config: Mapping[str, str | int] | None = None) -> None:
        self.data_dir = data_dir
        self.port = low_free_port(PROXY_PORTS)
        self.uri = f"http://127.0.0.1:{self.port}"
        self.extra = {f"{role}.ip": "127.0.0.1" for role in ROLES} | RECOMMENDED | dict(extra_config or {})
        self.metrics_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None
        self._log_offset = 0

    def _configure(self) -> None:
        """Write ``<data>/configs/milvus.yaml`` (ports, paths, extra settings) and link the unpacked binary."""
        import milvus

        self.data_dir.mkdir(parents=True, exist_ok=True)
        cache = bin_cache()
        cache.mkdir(parents=True, exist_ok=True)
        link = self.data_dir / "bin"
        if not link.exists():
            link.symlink_to(cache, target_is_directory=True)
        config = milvus.MilvusServerConfig()
        config.configs.update(data_dir=str(self.data_dir))
        config.resolve_storage()
        config.set("proxy_port", self.port)
        config.set("root_coord_port", low_free_port(ROOT_COORD_PORTS))  # its default, 53100, is an ephemeral port
        for key, value in self.extra.items():
            config.set(key, value)
        config.resolve()
        milvus._initialize_data_files(str(self.data_dir))  # unpacks the binary into the cache once
        self.metrics_port, sock = config.resolve_port(9091)
        sock.close()

    def start(self, timeout: float = 180.0, lock_wait: float = 600.0, attempts: int = 2) -> MilvusServer:
        """Start the server and wait until it answers. A server that dies while starting is started again (up to
        ``attempts`` times, same data and ports), and the error names the cause the log gives (panic, fatal error,
        abort). The one such death seen in CI, a port taken between the config writer's probe and the server's bind,
        would repeat on the same ports: the ports below the ephemeral range (``low_free_port``) are its fix."""
        for attempt in range(1, attempts + 1):
            try:
                return self._start_once(timeout, lock_wait)
            except ServerDied as e:
                if attempt == attempts:
                    raise RuntimeError(str(e)) from None
                print(f"Milvus died while starting (attempt {attempt}/{attempts}), starting it again: {e.cause}")
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float, lock_wait: float) -> MilvusServer:
        deadline = time.monotonic() + lock_wait  # another test run on this machine may hold the one server slot
        while (holder := holder_of_pid_lock()) is not None:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"another Milvus standalone (pid {holder}) holds /run/milvus/standalone.pid: only one can run "
                    f"per machine, and it did not stop within {lock_wait:.0f} s"
                )
            time.sleep(2)
        if not (self.data_dir / "configs" / "milvus.yaml").exists():
            self._configure()
        binary = self.data_dir / "bin" / "milvus"
        env = {
            **os.environ,
            "DEPLOY_MODE": "STANDALONE",
            "METRICS_PORT": str(self.metrics_port),
            "LD_LIBRARY_PATH": os.pathsep.join([str(binary.parent), os.environ.get("LD_LIBRARY_PATH", "")]),
        }
        log = open(self.data_dir / "server.log", "ab")  # noqa: SIM115 - lives as long as the process
        self._log, self._log_offset = log, log.seek(0, os.SEEK_END)  # this run's lines start here
        self.proc = subprocess.Popen(
            [str(binary), "run", "standalone"],
            cwd=self.data_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code, cause = self.proc.returncode, self.cause()
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)  # children in its session would hold the ports
                self._reap()
                raise ServerDied(f"milvus exited with {code} while starting; cause: {cause}\n{self.tail()}", cause)
            if self._answers():
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"Milvus not ready in {timeout}s:\n{self.tail()}")

    def _answers(self) -> bool:
        from pymilvus import MilvusClient

        try:
            client = MilvusClient(uri=self.uri, timeout=2)
        except Exception:
            return False
        try:
            client.list_collections(timeout=2)
            return True
        except Exception:
            return False
        finally:
            with contextlib.suppress(Exception):
                client.close()

    def cause(self) -> str:
        """The lines of the last run's log that say why the server died (Go panic or fatal error, SIGABRT, C++
        terminate, glog FATAL), or a note that it gives none. The last run: what this object's last start wrote
        (even if it died before its banner), else what follows the last "Welcome to use Milvus!" banner."""
        try:
            with open(self.data_dir / "server.log", "rb") as f:
                f.seek(self._log_offset)
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return "no server.log"
        starts = [i for i, line in enumerate(lines) if "Welcome to use Milvus!" in line]
        run = lines[starts[-1] :] if starts else lines
        found = [line.strip() for line in run if CAUSE.search(line)]
        fatal = [line for line in found if "[ERROR]" not in line]
        chosen = fatal[:6] or found[-3:]  # a crash line first; else the last logged errors
        return " | ".join(chosen) if chosen else "none in the log"

    def tail(self, n: int = 40) -> str:
        out = []
        for name in ("server.log",):
            with contextlib.suppress(OSError):
                out += (self.data_dir / name).read_text(errors="replace").splitlines()[-n:]
        return "\n".join(out)

    def _tree(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        try:
            parent = psutil.Process(self.proc.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the server (it flushes and exits); SIGKILL whatever remains after ``timeout``."""
        procs = self._tree()
        stop(procs, timeout)
        self._reap()

    def rss_mb(self) -> float:
        """Resident memory of the server process tree, MiB."""
        total = 0
        for p in self._tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
        return round(total / 2**20, 1)

    def kill(self) -> None:
        """SIGKILL the server (a crash)."""
        procs = self._tree()
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        wait_exited(procs, 10)
        self._reap()

    def _reap(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(Exception):
                self.proc.wait(timeout=5)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
