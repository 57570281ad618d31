"""Stopping (issue #16): no BentoML worker outlives its server, however the server ends.

A standalone Embedder bento (a circus arbiter plus one worker in its own session: the same shape as every service
of ``bentoml serve``) is started in its own process group, like a shell job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from bench.support.servers import REPO, BentoServer, bento_env, free_port
from service.stop import wait_exited
from tests.conftest import BENTOML

pytestmark = pytest.mark.e2e


def _start(tmp: Path) -> tuple[BentoServer, list[psutil.Process]]:
    port = free_port()
    server = BentoServer([*BENTOML, "service.embedder:Embedder"], bento_env(tmp), tmp / "server.log", port=port)
    cmd = [*server.args, "--host", "127.0.0.1", "--port", str(port)]
    log = open(server.log_path, "ab")  # noqa: SIM115 - lives as long as the process
    server.proc = subprocess.Popen(cmd, cwd=REPO, env=server.env, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, server.tail()
        time.sleep(0.3)
    tree = [psutil.Process(server.proc.pid), *psutil.Process(server.proc.pid).children(recursive=True)]
    assert any(p.pid != server.proc.pid and os.getsid(p.pid) != os.getsid(server.proc.pid) for p in tree)
    return server, tree


def _all_gone(tree: list[psutil.Process], port: int, within: float) -> None:
    alive = wait_exited(tree, within)  # a zombie has exited (PID 1 reaps orphans late)
    for p in alive:  # clean up before failing
        p.kill()
    assert not alive, [p.pid for p in alive]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)


def test_killing_the_process_group_ends_every_worker(tmp_path: Path, tiny_models: Any) -> None:
    server, tree = _start(tmp_path)
    assert server.proc is not None
    os.killpg(server.proc.pid, signal.SIGKILL)  # the arbiter dies without stopping anything
    server.proc.wait(10)
    _all_gone(tree, server.port, within=30)  # workers notice their parent is gone and exit


def test_the_stop_command_ends_the_whole_tree(tmp_path: Path, tiny_models: Any) -> None:
    server, tree = _start(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "service.stop", "--port", str(server.port), "--timeout", "30"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode == 0 and "stopped" in out.stdout, out.stderr
    _all_gone(tree, server.port, within=10)
    again = subprocess.run(
        [sys.executable, "-m", "service.stop", "--port", str(server.port)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 1 and "nothing listens" in again.stderr
