"""CPU accounting for ``MMSEARCH_TORCH_THREADS=auto``: cgroup quotas (v1 and v2 file layouts), affinity, and the
model services that share them (``BENTOML_RUNNER_MAP``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from service import cpus
from service.config import Settings


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_is_the_smallest_along_the_path(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    proc = tmp_path / "proc-cgroup"
    _write(proc, "0::/kubepods/pod1/ctr\n")
    _write(root / "cpu.max", "max 100000\n")
    _write(root / "kubepods" / "cpu.max", "800000 100000\n")  # 8 CPUs for all pods
    _write(root / "kubepods" / "pod1" / "cpu.max", "250000 100000\n")  # the pod's limit: 2.5 CPUs
    _write(root / "kubepods" / "pod1" / "ctr" / "cpu.max", "max 100000\n")
    assert cpus.cgroup_cpu_quota(proc, root) == 2.5
    assert cpus.available_cpus(proc, root) == min(2, cpus.affinity_cpus())  # rounded down


def test_cgroup_v2_without_a_limit(tmp_path: Path) -> None:
    root, proc = tmp_path / "cgroup", tmp_path / "proc-cgroup"
    _write(proc, "0::/\n")
    _write(root / "cpu.max", "max 100000\n")
    assert cpus.cgroup_cpu_quota(proc, root) is None
    assert cpus.available_cpus(proc, root) == cpus.affinity_cpus()


def test_cgroup_v1_quota_and_container_mount(tmp_path: Path) -> None:
    root, proc = tmp_path / "cgroup", tmp_path / "proc-cgroup"
    # docker without a cgroup namespace: /proc names the host path, the mount is the container's own cgroup
    _write(proc, "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n")
    _write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "50000\n")
    _write(root / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    assert cpus.cgroup_cpu_quota(proc, root) == 0.5
    assert cpus.available_cpus(proc, root) == 1  # half a CPU still gets one thread
    _write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")
    assert cpus.cgroup_cpu_quota(proc, root) is None


def test_unreadable_cgroup_files_mean_no_quota(tmp_path: Path) -> None:
    assert cpus.cgroup_cpu_quota(tmp_path / "missing", tmp_path) is None
    _write(tmp_path / "proc", "0::/a\n")
    _write(tmp_path / "root" / "a" / "cpu.max", "garbage\n")
    assert cpus.cgroup_cpu_quota(tmp_path / "proc", tmp_path / "root") is None


def test_this_machine() -> None:
    assert cpus.available_cpus() <= len(os.sched_getaffinity(0))
    assert cpus.available_cpus() >= 1


def _runner_map(**services: str) -> dict[str, str]:
    return {"BENTOML_RUNNER_MAP": json.dumps(services)}


def test_model_services_started_together() -> None:
    # what BentoML 1.4 hands its workers for `bentoml serve service.search:Search`
    composed = _runner_map(
        Embedder="file:///tmp/bentoml-uds-x/1.sock", Reranker="file:///tmp/bentoml-uds-x/2.sock", Search="http://h:3000"
    )
    assert cpus.model_services_together("Embedder", composed) == 2
    with_reader = _runner_map(Embedder="unix:///a", Reranker="unix:///b", Reader="unix:///c", Search="http://h:1")
    assert cpus.model_services_together("Reader", with_reader) == 3
    # standalone (bentoml serve service.embedder:Embedder, or a Kubernetes pod): the entry service alone
    assert cpus.model_services_together("Embedder", _runner_map(Embedder="http://0.0.0.0:3000")) == 1
    # a dependency reached over TCP runs elsewhere
    remote = _runner_map(Embedder="http://embedder:3000", Reranker="unix:///b", Search="http://h:1")
    assert cpus.model_services_together("Reranker", remote) == 1
    assert cpus.model_services_together("Embedder", {}) == 1  # not under BentoML (in-process tests)
    assert cpus.model_services_together("Embedder", {"BENTOML_RUNNER_MAP": "not json"}) == 1


def test_plan_threads_shares_the_cpus() -> None:
    composed = _runner_map(Embedder="unix:///a", Reranker="unix:///b", Search="http://h:1")
    assert cpus.plan_threads("auto", "Embedder", cpus=8, env=composed).threads == 4
    assert cpus.plan_threads("auto", "Embedder", cpus=3, env=composed).threads == 1
    assert cpus.plan_threads("auto", "Embedder", cpus=1, env=composed).threads == 1  # never 0
    alone = cpus.plan_threads("auto", "Embedder", cpus=8, env={})
    assert (alone.threads, alone.shared_by, alone.source) == (8, 1, "auto")
    fixed = cpus.plan_threads(3, "Embedder", cpus=8, env=composed)
    assert (fixed.threads, fixed.source) == (3, "MMSEARCH_TORCH_THREADS")


def test_torch_threads_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().torch_threads == "auto"
    monkeypatch.setenv("MMSEARCH_TORCH_THREADS", "4")
    assert Settings().torch_threads == 4
    for bad in ("0", "many", "1000"):
        monkeypatch.setenv("MMSEARCH_TORCH_THREADS", bad)
        with pytest.raises(ValueError):
            Settings()
