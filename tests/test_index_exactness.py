"""Search quality: exact search equals numpy brute force on every backend; the ANN indexes (LanceDB IVF_HNSW_SQ,
Milvus server HNSW above ``ann_threshold``) keep recall@10 >= 0.95, filtered too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.index import IndexRecord, VectorIndex
from service.index.factory import open_index
from tests.test_index_contract import backend_uri

N, DIM, QUERIES, K = 10_000, 64, 20, 10
BUCKETS = 10


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(20240611)
    vectors = rng.normal(size=(N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = rng.normal(size=(QUERIES, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return vectors, queries


def _docs(vectors: np.ndarray) -> list[IndexRecord]:
    docs = [IndexRecord(f"d{i}", None, None, {"bucket": i % BUCKETS}, vectors[i].tolist()) for i in range(len(vectors))]
    docs[0].metadata["rare"] = True  # the only match for {"rare": True}: found even when far from the query
    return docs


def _assert_rare_doc_found(index: VectorIndex, vectors: np.ndarray) -> None:
    hits = index.search("bench", (-vectors[0]).tolist(), 1, {"rare": True})
    assert [h.id for h in hits] == ["d0"] and hits[0].score == pytest.approx(-1.0, abs=1e-3)


def _brute_force(vectors: np.ndarray, query: np.ndarray, mask: np.ndarray | None = None) -> list[str]:
    sims = (vectors @ query).astype(np.float64)
    if mask is not None:
        sims[~mask] = -np.inf
    return [f"d{i}" for i in np.argsort(-sims, kind="stable")[:K]]


def _load(uri: str, vectors: np.ndarray, ann_threshold: int = 50_000) -> VectorIndex:
    index = open_index(uri, ann_threshold=ann_threshold)
    index.ensure_collection("bench", DIM, "random")
    docs = _docs(vectors)
    for start in range(0, len(docs), 2_500):
        index.upsert("bench", docs[start : start + 2_500])
    assert index.wait_for_maintenance(300)  # an ANN index past the threshold is built in the background
    return index


@pytest.fixture(params=["lance", "milvus", "milvus_server"])
def exact_index(
    request: pytest.FixtureRequest, tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> Iterator[VectorIndex]:
    index = _load(backend_uri(request.param, request, tmp_path), data[0])
    yield index
    index.close()


def test_exact_search_matches_brute_force(exact_index: VectorIndex, data: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, queries = data
    assert exact_index.get_collection("bench").count == N
    bucket = np.arange(N) % BUCKETS
    for qi, query in enumerate(queries):
        hits = exact_index.search("bench", query.tolist(), K)
        assert [h.id for h in hits] == _brute_force(vectors, query), f"query {qi}"
        expected_scores = sorted((float(vectors[int(h.id[1:])] @ query) for h in hits), reverse=True)
        assert [h.score for h in hits] == pytest.approx(expected_scores, abs=1e-5)
        flt = {"bucket": qi % BUCKETS}
        hits = exact_index.search("bench", query.tolist(), K, flt)
        assert [h.id for h in hits] == _brute_force(vectors, query, bucket == qi % BUCKETS), f"filtered {qi}"
    _assert_rare_doc_found(exact_index, vectors)


def test_lance_ann_index_recall(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, queries = data
    index = _load(str(tmp_path / "ann"), vectors, ann_threshold=5_000)
    try:
        table = index._table("bench")  # type: ignore[attr-defined]
        assert any(list(i.columns) == ["vector"] for i in table.list_indices()), "ANN index was not built"
        hits_total = 0
        filtered_total = 0
        bucket = np.arange(N) % BUCKETS
        for qi, query in enumerate(queries):
            got = [h.id for h in index.search("bench", query.tolist(), K)]
            hits_total += len(set(got) & set(_brute_force(vectors, query)))
            b = qi % BUCKETS
            got = [h.id for h in index.search("bench", query.tolist(), K, {"bucket": b})]
            assert all(int(i[1:]) % BUCKETS == b for i in got)
            filtered_total += len(set(got) & set(_brute_force(vectors, query, bucket == b)))
        recall = hits_total / (QUERIES * K)
        filtered_recall = filtered_total / (QUERIES * K)
        print(f"LanceDB IVF_HNSW_SQ recall@{K}: {recall:.3f} (filtered: {filtered_recall:.3f})")
        _assert_rare_doc_found(index, vectors)
        assert recall >= 0.95
        assert filtered_recall >= 0.95
        # Rows written after the index was built are searched too (exactly, until optimize() folds them in).
        index.upsert("bench", [IndexRecord("fresh", None, None, {"bucket": -1}, queries[0].tolist())])
        top = index.search("bench", queries[0].tolist(), 1)
        assert top[0].id == "fresh" and top[0].score == pytest.approx(1.0, abs=1e-5)
        assert [h.id for h in index.search("bench", queries[0].tolist(), 3, {"bucket": -1})] == ["fresh"]
    finally:
        index.close()


def _recall(index: VectorIndex, vectors: np.ndarray, queries: np.ndarray) -> tuple[float, float]:
    """recall@K unfiltered and with a 1-in-BUCKETS filter (every filtered hit checked to match)."""
    hits_total = filtered_total = 0
    bucket = np.arange(len(vectors)) % BUCKETS
    for qi, query in enumerate(queries):
        got = [h.id for h in index.search("bench", query.tolist(), K)]
        hits_total += len(set(got) & set(_brute_force(vectors, query)))
        b = qi % BUCKETS
        got = [h.id for h in index.search("bench", query.tolist(), K, {"bucket": b})]
        assert all(int(i[1:]) % BUCKETS == b for i in got)
        filtered_total += len(set(got) & set(_brute_force(vectors, query, bucket == b)))
    return hits_total / (len(queries) * K), filtered_total / (len(queries) * K)


def test_milvus_server_hnsw_past_threshold(
    request: pytest.FixtureRequest, tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    """The upsert that takes a collection past ann_threshold swaps FLAT for HNSW on the real server."""
    vectors, queries = data
    index = _load(backend_uri("milvus_server", request, tmp_path), vectors, ann_threshold=5_000)
    try:
        described = index._client.describe_index("bench", "vector")  # type: ignore[attr-defined]
        assert described["index_type"] == "HNSW"
        assert int(described["indexed_rows"]) >= 5_000, described  # the rows sealed at the swap are in the graph
        recall, filtered_recall = _recall(index, vectors, queries)
        print(f"Milvus server HNSW recall@{K}: {recall:.3f} (filtered: {filtered_recall:.3f})")
        assert recall >= 0.95
        assert filtered_recall >= 0.95
        _assert_rare_doc_found(index, vectors)
        index.upsert("bench", [IndexRecord("fresh", None, None, {"bucket": -1}, queries[0].tolist())])
        top = index.search("bench", queries[0].tolist(), 1)
        assert top[0].id == "fresh" and top[0].score == pytest.approx(1.0, abs=1e-5)
        assert [h.id for h in index.search("bench", queries[0].tolist(), 3, {"bucket": -1})] == ["fresh"]
    finally:
        index.close()


def test_milvus_lite_stays_exact_past_threshold(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, queries = data
    subset = vectors[:3_000]
    index = _load(str(tmp_path / "ann.db"), subset, ann_threshold=1_000)
    try:
        described = index._client.describe_index("bench", "vector")  # type: ignore[attr-defined]
        assert described["index_type"] == "FLAT"
        mask = np.arange(len(subset)) % BUCKETS < 5
        for query in queries[:5]:
            got = [h.id for h in index.search("bench", query.tolist(), K, {"bucket": {"$lt": 5}})]
            assert got == _brute_force(subset, query, mask)
        _assert_rare_doc_found(index, subset)
    finally:
        index.close()


def test_lance_exact_cache_follows_writes_without_rereading(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Upserts (new and replaced rows) and deletes made by this process patch the in-memory exact matrix: results
    stay equal to brute force over the current rows, and the table is not re-read after each write."""
    from service.index.lance import LanceIndex

    vectors, queries = data
    index = LanceIndex(str(tmp_path / "lance"), ann_threshold=50_000)
    index.ensure_collection("bench", DIM, "random")
    index.upsert("bench", _docs(vectors[:2_000]))
    assert index.wait_for_maintenance(60)  # background compaction of the first write: a new version, not ours
    index.search("bench", queries[0].tolist(), K)  # builds the cache once
    rebuilds = 0
    original = LanceIndex._exact_matrix

    def counting(self: LanceIndex, name: str, table: object) -> object:
        nonlocal rebuilds
        cached = self._matrices.get(name)
        if cached is None or cached.version != table.version:  # type: ignore[attr-defined]
            rebuilds += 1
        return original(self, name, table)

    monkeypatch.setattr(LanceIndex, "_exact_matrix", counting)
    current = {i: vectors[i] for i in range(2_000)}
    rng = np.random.default_rng(7)
    for step in range(6):
        new_ids = range(2_000 + step * 100, 2_100 + step * 100)  # 100 new rows
        replaced = rng.choice(2_000, 50, replace=False)  # 50 existing rows get another vector
        docs = [IndexRecord(f"d{i}", None, None, {}, vectors[i].tolist()) for i in new_ids]
        docs += [IndexRecord(f"d{i}", None, None, {}, vectors[(i + 5_000) % N].tolist()) for i in replaced]
        index.upsert("bench", docs)
        current.update({i: vectors[i] for i in new_ids})
        current.update({int(i): vectors[(int(i) + 5_000) % N] for i in replaced})
        gone = [int(i) for i in rng.choice(sorted(current), 20, replace=False)]
        assert index.delete("bench", [f"d{i}" for i in gone]) == 20
        for i in gone:
            del current[i]
        ids = sorted(current)
        matrix = np.stack([current[i] for i in ids])
        for q in queries[:5]:
            sims = matrix @ q
            want = [f"d{ids[j]}" for j in np.argsort(-sims, kind="stable")[:K]]
            got = index.search("bench", q.tolist(), K)
            assert [h.id for h in got] == want
            assert [h.score for h in got] == pytest.approx(sorted(sims, reverse=True)[:K], abs=1e-5)
    assert rebuilds == 0
    assert index.get_collection("bench").count == len(current)
