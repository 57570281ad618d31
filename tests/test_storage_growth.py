"""Storage growth (issue #16, class 11): writes that change nothing write nothing, and a collection of any size
gets compacted with its old versions removed, so version count and disk use stay bounded under small writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.index import IndexRecord
from service.index.factory import open_index
from service.index.lance import MAINTAIN_EVERY_WRITES, LanceIndex

DIM = 4
MiB = 2**20


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time."""
    out = {}
    for directory, _, names in os.walk(root):
        for n in names:
            st = os.stat(os.path.join(directory, n))
            out[os.path.join(directory, n)] = (st.st_size, st.st_mtime_ns)
    return out


def _du(root: Path) -> int:
    return sum(size for size, _ in _files(root).values())


def _doc(i: int) -> IndexRecord:
    return IndexRecord(f"d{i}", f"document {i}", None, {"n": i}, [1.0, 0.0, 0.0, float(i % 7)])


@pytest.mark.parametrize("backend", ["lance", "milvus"])
def test_a_delete_that_matches_nothing_writes_nothing(backend: str, tmp_path: Path) -> None:
    root = tmp_path / "index"
    uri = str(root) if backend == "lance" else f"milvus:{root}.db"
    with open_index(uri) as index:
        index.ensure_collection("c", DIM, "m")
        index.upsert("c", [_doc(i) for i in range(5)])
        data = root if backend == "lance" else Path(f"{root}.db")
        before = _files(data)
        version = index._table("c").version if isinstance(index, LanceIndex) else None
        assert index.delete("c", ["missing", "also-missing"]) == 0
        assert _files(data) == before  # no table version, no deletion file, no WAL entry
        if isinstance(index, LanceIndex):
            assert index._table("c").version == version
        assert index.delete("c", ["missing", "d1"]) == 1  # a delete that matches does write (the check can fail)
        assert _files(data) != before
        assert [d.id for d in index.get("c", ["d0", "d1", "d2"])] == ["d0", "d2"]


def test_small_collections_are_compacted_and_old_versions_removed(tmp_path: Path) -> None:
    """19 live rows, hundreds of single-document writes (the review's case: 406 versions, 8.7 MB): far below the
    ANN threshold, the versions and bytes on disk stay bounded and every live row is still there."""
    root = tmp_path / "index"
    writes = 6 * MAINTAIN_EVERY_WRITES
    with open_index(str(root), version_retention_s=0.05) as index:
        assert isinstance(index, LanceIndex)
        index.ensure_collection("c", DIM, "m")
        index.upsert("c", [_doc(i) for i in range(19)])
        for n in range(writes // 2):
            index.upsert("c", [_doc(n % 19)])
            assert index.delete("c", [f"d{(n + 7) % 19}"]) == 1
            index.upsert("c", [_doc((n + 7) % 19)])  # put it back: 19 live rows throughout
            index.delete("c", ["never-there"])  # commits nothing
        assert index.wait_for_maintenance(60)
        versions = len(index._table("c").list_versions())
        disk = _du(root)
        print(f"\n{writes // 2 * 3} writes to a 19-row collection: {versions} versions, {disk / MiB:.2f} MiB on disk")
        # Without clean-up: one version per write (~40 KB each here). With it: at most the writes since the last
        # two compactions (the thread may lag one period behind), plus the compaction's own versions.
        assert versions <= 2 * MAINTAIN_EVERY_WRITES + 8
        assert disk < 6 * MiB
        assert index.get_collection("c").count == 19
        assert {d.id for d in index.get("c", [f"d{i}" for i in range(19)])} == {f"d{i}" for i in range(19)}
        hits = index.search("c", [1.0, 0.0, 0.0, 0.0], 19)
        assert len(hits) == 19 and len({h.id for h in hits}) == 19  # exact search sees the compacted table
