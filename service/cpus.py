"""How many CPUs this process may use, and how many threads each model service gets from them.

``MMSEARCH_TORCH_THREADS=auto`` (the default) gives every model service started together an equal share of the
CPUs this process may use:

* the CPUs it may use are the fewest of its CPU affinity (``taskset``, cpusets) and its cgroup CPU quota
  (Kubernetes ``resources.limits.cpu``, ``docker --cpus``; cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``,
  the smallest along the process's cgroup path), rounded down, at least 1;
* the model services started together are those BentoML runs in this server: ``bentoml serve
  service.search:Search`` starts the Embedder, the Reranker and the Reader on this machine (unless their
  ``MMSEARCH_*_URL`` points elsewhere), while a Kubernetes pod or ``bentoml serve service.embedder:Embedder``
  runs one. BentoML hands every worker the services it started in ``BENTOML_RUNNER_MAP`` (name -> address;
  services it started itself listen on Unix sockets, ``file:///tmp/bentoml-uds-.../N.sock``, the entry service
  on its TCP port).

Pure functions over files and environment variables, so that tests can give them a fake ``/sys/fs/cgroup``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")

# Services that load a model and run torch (or another thread-pooled engine). A new model service adds its name.
MODEL_SERVICES = ("Embedder", "Reranker", "Reader")


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (``os.cpu_count()`` where the platform has no affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _ancestors(root: Path, rel: str) -> list[Path]:
    """``root/rel`` and each parent directory up to ``root`` (the limit of any of them applies)."""
    parts = [p for p in rel.strip("/").split("/") if p and p != ".."]
    return [root.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def _quota_v2(cgroup_root: Path, rel: str) -> float | None:
    best: float | None = None
    for d in _ancestors(cgroup_root, rel):
        text = _read(d / "cpu.max")
        if not text:
            continue
        quota, _, period = text.partition(" ")
        if quota == "max" or not quota.isdigit() or not period.strip().isdigit() or int(period) <= 0:
            continue
        cpus = int(quota) / int(period)
        best = cpus if best is None else min(best, cpus)
    return best


def _quota_v1(cpu_root: Path, rel: str) -> float | None:
    best: float | None = None
    for d in _ancestors(cpu_root, rel):
        quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
        if quota is None or period is None:
            continue
        try:
            q, p = int(quota), int(period)
        except ValueError:
            continue
        if q <= 0 or p <= 0:  # -1: no limit
            continue
        best = q / p if best is None else min(best, q / p)
    return best


def cgroup_cpu_quota(proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (e.g. 1.5), or ``None`` when there is none.

    Reads ``/proc/self/cgroup`` for the process's cgroup path under the v2 hierarchy (``0::/path``) or the v1
    ``cpu`` controller (``N:cpu,cpuacct:/path``). In a container the hierarchy is often mounted at the
    container's own cgroup while ``/proc/self/cgroup`` still names the host path: the root's own limit counts
    too, because every ancestor down to the mount point is read.
    """
    text = _read(proc_cgroup)
    if text is None:
        return None
    quotas: list[float] = []
    for line in text.splitlines():
        hier, _, rest = line.partition(":")
        controllers, _, rel = rest.partition(":")
        if hier == "0" and controllers == "":
            q = _quota_v2(root, rel)
        elif "cpu" in controllers.split(","):
            mount = next((root / m for m in (controllers, "cpu", "cpu,cpuacct") if (root / m).is_dir()), None)
            q = _quota_v1(mount, rel) if mount is not None else None
        else:
            continue
        if q is not None:
            quotas.append(q)
    return min(quotas) if quotas else None


def available_cpus(proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may keep busy: its affinity, capped by its cgroup quota (rounded down), at least 1."""
    cpus = affinity_cpus()
    quota = cgroup_cpu_quota(proc_cgroup, root)
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota + 1e-9)))
    return max(1, cpus)


def model_services_together(service: str, env: Mapping[str, str] | None = None) -> int:
    """Model services this server started on this machine, ``service`` included (at least 1).

    From ``BENTOML_RUNNER_MAP``: services BentoML started as local dependencies (Unix socket addresses) plus the
    entry service; a dependency reached over TCP (``--depends Name=http://...``) runs elsewhere.
    """
    env = os.environ if env is None else env
    try:
        runner_map = json.loads(env.get("BENTOML_RUNNER_MAP") or "{}")
    except ValueError:
        runner_map = {}
    if not isinstance(runner_map, dict):
        runner_map = {}
    local = {
        name
        for name, uri in runner_map.items()
        if name in MODEL_SERVICES and (name == service or str(uri).startswith(("file:", "unix:")))
    }
    local.add(service)
    return len(local)


def quiet_thread_pools() -> bool:
    """Make idle OpenMP threads sleep instead of spinning: ``OMP_WAIT_POLICY=PASSIVE`` unless already set.

    GNU OpenMP (torch's CPU build) spins its idle threads for a while after every parallel region; a model
    service does Python work between regions and between batches, so the spinning burns a core without doing
    anything, and with any other busy thread on the machine a spinning team collapses (bench/RESULTS.md:
    CPU-seconds per input). Must run before ``import torch`` (OpenMP reads it when it loads); returns False
    when that is too late.
    """
    import sys

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return "torch" not in sys.modules


@dataclass(frozen=True)
class ThreadPlan:
    """How many torch threads a model service runs, and why (reported by ``/info``)."""

    threads: int
    cpus: int
    shared_by: int
    source: str  # "auto" or "MMSEARCH_TORCH_THREADS"

    def as_dict(self) -> dict[str, int | str]:
        return {"threads": self.threads, "cpus": self.cpus, "shared_by": self.shared_by, "source": self.source}


def plan_threads(
    setting: int | str, service: str, *, cpus: int | None = None, env: Mapping[str, str] | None = None
) -> ThreadPlan:
    """Threads for ``service``: the configured number, or (``auto``) its equal share of ``cpus`` (default: the
    CPUs this process may use) among the model services started with it."""
    cpus = available_cpus() if cpus is None else cpus
    shared_by = model_services_together(service, env)
    if setting != "auto":
        return ThreadPlan(int(setting), cpus, shared_by, "MMSEARCH_TORCH_THREADS")
    return ThreadPlan(max(1, cpus // shared_by), cpus, shared_by, "auto")
