"""The benchmarks' shared accounting: the round order that cancels a trend, and a process tree's CPU and faults."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from bench.common import alternating, tree_usage


def test_rounds_alternate_so_each_setup_runs_first_half_the_time() -> None:
    orders = [alternating(["a", "b", "c"], k) for k in range(4)]
    assert orders == [["a", "b", "c"], ["c", "b", "a"], ["a", "b", "c"], ["c", "b", "a"]]


def test_tree_usage_counts_a_childs_cpu_and_faults_and_is_zero_once_gone() -> None:
    busy = "import time\nt = time.process_time() + 0.3\nwhile time.process_time() < t: bytearray(1 << 20)\n"
    busy += "time.sleep(30)"
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {busy!r}])"]
    )
    try:
        deadline = time.monotonic() + 30
        usage = tree_usage(parent.pid)
        while usage.cpu_s < 0.3 and time.monotonic() < deadline:  # the child's busy loop, seen through the parent
            time.sleep(0.1)
            usage = tree_usage(parent.pid)
        assert usage.cpu_s >= 0.3
        assert usage.cpu_s == usage.user_s + usage.system_s
        assert usage.minor_faults > 0
    finally:
        for p in [*psutil.Process(parent.pid).children(recursive=True), psutil.Process(parent.pid)]:
            p.kill()
        parent.wait()
    assert tree_usage(parent.pid).cpu_s == 0.0
