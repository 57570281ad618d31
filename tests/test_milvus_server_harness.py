"""The test harness around the real Milvus server: it names why a server died and starts one again that died while
starting (pure logic: no server is started here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.support.milvus_server import MilvusServer, ServerDied

LOG = """\
Welcome to use Milvus!
[2026/12/01 10:00:00.000 +00:00] [ERROR] [old/run.go:1] ["an error of an earlier run"]
panic: an earlier run's panic
Welcome to use Milvus!
[2026/12/01 10:00:01.000 +00:00] [INFO] [roles/roles.go:306] ["starting running Milvus components"]
[2026/12/01 10:00:01.100 +00:00] [ERROR] [etcd/x.go:9] ["retrying"]
SIGABRT: abort
PC=0x1 m=0 sigcode=18446744073709551610
goroutine 1 [running]:
"""


def test_cause_names_the_crash_of_the_last_run(tmp_path: Path) -> None:
    server = MilvusServer(tmp_path)
    (tmp_path / "server.log").write_text(LOG)
    assert server.cause() == "SIGABRT: abort"


def test_cause_falls_back_to_the_last_errors_then_says_none(tmp_path: Path) -> None:
    server = MilvusServer(tmp_path)
    assert server.cause() == "no server.log"
    (tmp_path / "server.log").write_text("Welcome to use Milvus!\n[2026/12/01 10:00:01.100 +00:00] [ERROR] [a] [b]\n")
    assert server.cause().endswith("[ERROR] [a] [b]")
    (tmp_path / "server.log").write_text("Welcome to use Milvus!\n[2026/12/01 10:00:01.100 +00:00] [INFO] [a]\n")
    assert server.cause() == "none in the log"


class FlakyStart(MilvusServer):
    def __init__(self, data_dir: Path, deaths: int) -> None:
        super().__init__(data_dir)
        self.deaths = deaths
        self.calls = 0

    def _start_once(self, timeout: float, lock_wait: float) -> MilvusServer:
        self.calls += 1
        if self.calls <= self.deaths:
            raise ServerDied(f"milvus exited with -6 while starting (call {self.calls})", "SIGABRT: abort")
        return self


def test_a_server_that_died_while_starting_is_started_again(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = FlakyStart(tmp_path, deaths=1)
    assert server.start() is server
    assert server.calls == 2
    assert "starting it again: SIGABRT: abort" in capsys.readouterr().out


def test_a_server_that_keeps_dying_fails_with_the_cause(tmp_path: Path) -> None:
    server = FlakyStart(tmp_path, deaths=5)
    with pytest.raises(RuntimeError, match=r"exited with -6 while starting \(call 2\)"):
        server.start(attempts=2)
    assert server.calls == 2
