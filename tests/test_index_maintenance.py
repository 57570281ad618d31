"""#13.7: index maintenance (ANN build, compaction) runs in a background thread per index, never inside a write.

Deterministic: the build is held on an event, so "the upsert returned before the build" is a fact of the test, not
a timing; searches are compared with brute force before the index exists and checked for self-matches after.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.index import IndexRecord
from service.index.lance import VECTOR, LanceIndex
from service.index.maintenance import Maintenance

DIM = 16
THRESHOLD = 200


def _docs(vectors: np.ndarray, start: int = 0) -> list[IndexRecord]:
    return [IndexRecord(f"d{start + i}", None, None, {"n": start + i}, v.tolist()) for i, v in enumerate(vectors)]


def _brute_force(vectors: np.ndarray, query: np.ndarray, k: int, skip: str) -> list[str]:
    """The top ``k - 1`` ids by cosine similarity, ``skip`` left out."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = unit @ (query / np.linalg.norm(query))
    return [f"d{i}" for i in np.argsort(-scores, kind="stable")[:k] if f"d{i}" != skip][: k - 1]


def _has_vector_index(index: LanceIndex, name: str) -> bool:
    return any(list(i.columns) == [VECTOR] for i in index._table(name).list_indices())


@pytest.fixture
def vectors() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((THRESHOLD + 150, DIM)).astype(np.float32)


def test_the_upsert_that_crosses_the_threshold_returns_before_the_build(tmp_path: Path, vectors: np.ndarray) -> None:
    index = LanceIndex(str(tmp_path / "lance"), ann_threshold=THRESHOLD)
    index.ensure_collection("c", DIM, "m")
    started, release = threading.Event(), threading.Event()
    builders: list[str] = []
    build = index._build_ann

    def held_build(name: str, table: Any) -> None:
        builders.append(threading.current_thread().name)
        started.set()
        assert release.wait(120)
        build(name, table)

    index._build_ann = held_build  # type: ignore[method-assign]
    try:
        index.upsert("c", _docs(vectors[:THRESHOLD]))  # at the threshold: no build wanted
        assert index.wait_for_maintenance(60) and not builders
        index.upsert("c", _docs(vectors[THRESHOLD : THRESHOLD + 50], THRESHOLD))  # crosses it, returns at once
        assert started.wait(60), "the background thread did not start the build"
        assert builders == ["lance-maintenance"]
        assert not _has_vector_index(index, "c")

        # While the build is held: writes are not blocked and searches are exact over every row.
        writer = threading.Thread(
            target=index.upsert, args=("c", _docs(vectors[THRESHOLD + 50 :], THRESHOLD + 50)), daemon=True
        )
        writer.start()
        writer.join(60)
        assert not writer.is_alive(), "an upsert waited for the index build"
        assert index.delete("c", ["d0"]) == 1
        for q in vectors[:5]:
            got = [h.id for h in index.search("c", q.tolist(), 10)]
            assert got == _brute_force(vectors, q, 11, skip="d0")
    finally:
        release.set()
    assert index.wait_for_maintenance(120)
    assert _has_vector_index(index, "c")
    assert index.get_collection("c").count == len(vectors) - 1
    for i in range(1, len(vectors), 37):  # after: the index (and the rows it does not cover yet) still find each row
        top = index.search("c", vectors[i].tolist(), 1)[0]
        assert top.id == f"d{i}" and top.score == pytest.approx(1.0, abs=1e-3)
    index.close()


def test_a_failed_build_is_logged_and_retried_with_backoff(
    tmp_path: Path, vectors: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    index = LanceIndex(str(tmp_path / "lance"), ann_threshold=THRESHOLD)
    index._maintenance.retry_s = 0.01
    index.ensure_collection("c", DIM, "m")
    attempts: list[str] = []
    build = index._build_ann

    def flaky_build(name: str, table: Any) -> None:
        attempts.append(name)
        if len(attempts) <= 3:
            raise RuntimeError(f"simulated build failure {len(attempts)}")
        build(name, table)

    index._build_ann = flaky_build  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="service.index.maintenance"):
        index.upsert("c", _docs(vectors))  # one write: the retries need no further writes
        assert index.wait_for_maintenance(120)
    assert len(attempts) == 4 and _has_vector_index(index, "c")
    failures = [r.getMessage() for r in caplog.records if "background maintenance" in r.getMessage()]
    assert len(failures) == 3 and all("simulated build failure" in m for m in failures)
    delays = [float(re.search(r"retrying in ([0-9.]+) s", m).group(1)) for m in failures]  # type: ignore[union-attr]
    assert [f"{n} in a row" in m for n, m in zip((1, 2, 3), failures, strict=True)] == [True] * 3
    assert delays == sorted(delays) and delays[-1] > delays[0]  # backoff grows
    index.close()


def test_compaction_runs_in_the_background_without_the_writers_lock(tmp_path: Path, vectors: np.ndarray) -> None:
    index = LanceIndex(str(tmp_path / "lance"), ann_threshold=10 * THRESHOLD)
    index._maintenance_every = 4
    index.ensure_collection("c", DIM, "m")
    threads: list[tuple[str, bool]] = []
    optimize_seen = threading.Event()
    real_table = index._maintenance_handle("c")

    class Spy:
        def __getattr__(self, attr: str) -> Any:
            return getattr(real_table, attr)

        def optimize(self, **kw: Any) -> None:
            # record where it ran and whether the writers' lock was free (a writer could take it)
            free = index._write_lock.acquire(blocking=False)
            if free:
                index._write_lock.release()
            threads.append((threading.current_thread().name, free))
            real_table.optimize(**kw)
            optimize_seen.set()

    index._maintenance_handle = lambda name: Spy()  # type: ignore[method-assign]
    for i in range(8):
        index.upsert("c", _docs(vectors[i : i + 1], i))
    assert index.wait_for_maintenance(60)
    assert optimize_seen.is_set()
    assert threads and all(t == ("lance-maintenance", True) for t in threads)
    assert index.get_collection("c").count == 8
    index.close()


def test_close_stops_the_maintenance_thread(tmp_path: Path, vectors: np.ndarray) -> None:
    index = LanceIndex(str(tmp_path / "lance"), ann_threshold=THRESHOLD)
    index.ensure_collection("c", DIM, "m")
    index.upsert("c", _docs(vectors[:10]))
    assert index._maintenance.alive
    index.close()
    assert not index._maintenance.alive


# --- the scheduler on its own -----------------------------------------------------------------------------------


def test_scheduler_counts_writes_until_a_pass_compacts_and_forgets_dropped_collections() -> None:
    calls: list[tuple[str, int, int]] = []
    compact = threading.Event()

    def work(name: str, writes: int, failures: int) -> bool:
        calls.append((name, writes, failures))
        return compact.is_set()

    m = Maintenance(work, interval_s=0.0)
    for _ in range(3):
        m.wrote("a")
    assert m.wait_idle(30)
    assert calls[-1][0] == "a" and calls[-1][1] == 3  # nothing compacted: the writes keep counting
    compact.set()
    m.wrote("a")
    assert m.wait_idle(30) and calls[-1][1] == 4
    m.wrote("a")
    assert m.wait_idle(30) and calls[-1][1] == 1  # the compaction restarted the count
    m.forget("a")
    n = len(calls)
    assert m.wait_idle(30) and len(calls) == n
    m.close()
    m.wrote("a")  # after close: ignored, no thread
    assert not m.alive and len(calls) == n


def test_scheduler_retries_a_failing_pass_without_new_writes_and_resets_on_success() -> None:
    failures_seen: list[int] = []

    def work(name: str, writes: int, failures: int) -> bool:
        failures_seen.append(failures)
        if len(failures_seen) <= 2:
            raise OSError("simulated")
        return True

    m = Maintenance(work, interval_s=0.0, retry_s=0.001, max_retry_s=0.01)
    m.wrote("a")
    assert m.wait_idle(30)
    assert failures_seen == [0, 1, 2]
    m.wrote("a")
    assert m.wait_idle(30) and failures_seen[-1] == 0
    m.close()
