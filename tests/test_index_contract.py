"""One contract suite for every index backend (LanceDB directory, Milvus Lite file), run unchanged on each."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.index import (
    CollectionMismatch,
    CollectionNotFound,
    InvalidFilter,
    StoredDocument,
    VectorIndex,
    open_index,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ["lance", "milvus"]
DIM = 4
_names = itertools.count()


def _uri(backend: str, base: Path) -> str:
    return str(base / "lance") if backend == "lance" else str(base / "m.db")


@pytest.fixture(scope="module")
def lance_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VectorIndex]:
    index = open_index(_uri("lance", tmp_path_factory.mktemp("lance")))
    yield index
    index.close()


@pytest.fixture(scope="module")
def milvus_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VectorIndex]:
    index = open_index(_uri("milvus", tmp_path_factory.mktemp("milvus")))
    yield index
    index.close()


@pytest.fixture(params=BACKENDS)
def index(request: pytest.FixtureRequest) -> VectorIndex:
    return request.getfixturevalue(f"{request.param}_index")


@pytest.fixture
def coll(index: VectorIndex) -> str:
    name = f"c{next(_names)}"
    index.ensure_collection(name, DIM, "test-model")
    return name


def unit(*xs: float) -> list[float]:
    v = np.asarray(xs, dtype=np.float64)
    return [float(x) for x in v / np.linalg.norm(v)]


def doc(id: str, vec: list[float], text: str | None = None, image: str | None = None, **meta: Any) -> StoredDocument:
    return StoredDocument(id=id, text=text, image=image, metadata=meta, embedding=unit(*vec))


# --- collections ------------------------------------------------------------------------------------------------


def test_ensure_collection_creates_once_and_describes(index: VectorIndex) -> None:
    name = f"c{next(_names)}"
    info = index.ensure_collection(name, DIM, "model-a")
    assert (info.name, info.dimension, info.model, info.count) == (name, DIM, "model-a", 0)
    again = index.ensure_collection(name, DIM, "model-a")
    assert again == info
    assert index.get_collection(name) == info


def test_ensure_collection_mismatch_raises(index: VectorIndex, coll: str) -> None:
    with pytest.raises(CollectionMismatch):
        index.ensure_collection(coll, DIM + 1, "test-model")
    with pytest.raises(CollectionMismatch):
        index.ensure_collection(coll, DIM, "another-model")
    assert index.get_collection(coll).dimension == DIM


def test_unknown_collection_raises(index: VectorIndex) -> None:
    missing = "never_created"
    with pytest.raises(CollectionNotFound):
        index.get_collection(missing)
    with pytest.raises(CollectionNotFound):
        index.upsert(missing, [doc("a", [1, 0, 0, 0])])
    with pytest.raises(CollectionNotFound):
        index.get(missing, ["a"])
    with pytest.raises(CollectionNotFound):
        index.delete(missing, ["a"])
    with pytest.raises(CollectionNotFound):
        index.search(missing, unit(1, 0, 0, 0), 3)


def test_invalid_collection_name_rejected(index: VectorIndex) -> None:
    for bad in ["", "has-dash", "1starts_with_digit", "x" * 300, "a b"]:
        with pytest.raises(ValueError):
            index.ensure_collection(bad, DIM, "m")


def test_list_collections_with_counts(index: VectorIndex) -> None:
    a, b = f"c{next(_names)}", f"c{next(_names)}"
    index.ensure_collection(a, DIM, "m1")
    index.ensure_collection(b, 8, "m2")
    index.upsert(a, [doc(str(i), [1, i, 0, 0]) for i in range(3)])
    index.upsert(b, [StoredDocument("x", "t", None, {}, unit(*range(1, 9)))])
    listed = {info.name: info for info in index.list_collections()}
    assert (listed[a].dimension, listed[a].model, listed[a].count) == (DIM, "m1", 3)
    assert (listed[b].dimension, listed[b].model, listed[b].count) == (8, "m2", 1)


# --- documents --------------------------------------------------------------------------------------------------


def test_upsert_replaces_by_id(index: VectorIndex, coll: str) -> None:
    index.upsert(coll, [doc("a", [1, 0, 0, 0], text="old", lang="en"), doc("b", [0, 1, 0, 0], image="b.png")])
    index.upsert(coll, [doc("a", [0, 0, 1, 0], text="new", image="a.png", lang="de")])
    assert index.get_collection(coll).count == 2
    (got,) = index.get(coll, ["a"])
    assert (got.text, got.image, got.metadata) == ("new", "a.png", {"lang": "de"})
    assert got.embedding == pytest.approx(unit(0, 0, 1, 0), abs=1e-6)
    top = index.search(coll, unit(0, 0, 1, 0), 1)
    assert [h.id for h in top] == ["a"] and top[0].text == "new"
    # Duplicates inside one batch: the last one wins.
    index.upsert(coll, [doc("c", [1, 1, 0, 0], text="first"), doc("c", [1, 1, 0, 0], text="second")])
    assert [d.text for d in index.get(coll, ["c"])] == ["second"]
    assert index.get_collection(coll).count == 3


def test_upsert_requires_embedding_of_right_dimension(index: VectorIndex, coll: str) -> None:
    with pytest.raises(ValueError):
        index.upsert(coll, [StoredDocument("a", "t", None, {}, None)])
    with pytest.raises(ValueError):
        index.upsert(coll, [StoredDocument("a", "t", None, {}, [1.0, 0.0])])
    assert index.get_collection(coll).count == 0


def test_get_preserves_order_and_skips_missing(index: VectorIndex, coll: str) -> None:
    meta: dict[str, Any] = {"lang": "en", "n": 2, "x": 0.5, "ok": True, "tags": ["a", "b"], "nothing": None}
    docs = [doc("a", [1, 0, 0, 0], text="A"), doc("b", [0, 1, 0, 0], image="b.jpg", **meta), doc("c", [0, 0, 1, 0])]
    index.upsert(coll, docs)
    got = index.get(coll, ["c", "missing", "a", "b"])
    assert [d.id for d in got] == ["c", "a", "b"]
    by_id = {d.id: d for d in docs}
    for d in got:
        assert (d.text, d.image, d.metadata) == (by_id[d.id].text, by_id[d.id].image, by_id[d.id].metadata)
        assert d.embedding == pytest.approx(by_id[d.id].embedding, abs=1e-6)
    assert index.get(coll, []) == []


def test_delete_returns_number_deleted(index: VectorIndex, coll: str) -> None:
    index.upsert(coll, [doc(i, [1, n, 0, 0]) for n, i in enumerate("abcd")])
    assert index.delete(coll, ["a", "missing", "c", "a"]) == 2
    assert index.delete(coll, ["a"]) == 0
    assert index.delete(coll, []) == 0
    assert index.get_collection(coll).count == 2
    assert [d.id for d in index.get(coll, ["a", "b", "c", "d"])] == ["b", "d"]
    assert {h.id for h in index.search(coll, unit(1, 0, 0, 0), 10)} == {"b", "d"}


def test_awkward_ids_and_strings_round_trip(index: VectorIndex, coll: str) -> None:
    ids = ['quote"d', "apos'trophe", "back\\slash", "new\nline", "tab\tx", "日本語", "x" * 512, "sql') OR 1=1 --"]
    index.upsert(coll, [doc(i, [1, n, 0, 0], text=i, label=i) for n, i in enumerate(ids)])
    assert [d.id for d in index.get(coll, list(reversed(ids)))] == list(reversed(ids))
    for i in ids:
        hits = index.search(coll, unit(1, 0, 0, 0), 10, {"label": i})
        assert [h.id for h in hits] == [i]
    assert index.delete(coll, ids[:4]) == 4
    assert index.get_collection(coll).count == len(ids) - 4


def test_search_orders_by_cosine_similarity(index: VectorIndex, coll: str) -> None:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(30, DIM))
    index.upsert(coll, [doc(f"d{i}", list(v), text=f"t{i}", n=i) for i, v in enumerate(vectors)])
    query = unit(0.3, -0.2, 0.9, 0.1)
    normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = normed @ np.asarray(query)
    expected = [f"d{i}" for i in np.argsort(-sims)[:5]]
    hits = index.search(coll, query, 5)
    assert [h.id for h in hits] == expected
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    for h in hits:
        assert h.score == pytest.approx(float(sims[int(h.id[1:])]), abs=1e-5)
        assert h.text == f"t{h.id[1:]}" and h.metadata == {"n": int(h.id[1:])}
    assert len(index.search(coll, query, 100)) == 30


def test_search_rejects_bad_arguments(index: VectorIndex, coll: str) -> None:
    with pytest.raises(ValueError):
        index.search(coll, [1.0, 0.0], 3)
    with pytest.raises(ValueError):
        index.search(coll, unit(1, 0, 0, 0), 0)


# --- filters ----------------------------------------------------------------------------------------------------

FILTER_DOCS: list[tuple[str, dict[str, Any]]] = [
    ("en1", {"lang": "en", "year": 2020, "score": 0.5, "tags": ["cat", "dog"], "flag": True}),
    ("en2", {"lang": "en", "year": 2021, "score": 1.5, "tags": ["dog"], "flag": False}),
    ("de1", {"lang": "de", "year": 2022, "score": 2.5, "tags": ["cat"], "flag": True}),
    ("fr1", {"lang": "fr", "year": 2023.0, "score": -1, "tags": []}),
    ("num", {"lang": 3, "year": "2020", "score": True}),
    ("bare", {}),
]
FILTER_CASES: list[tuple[dict[str, Any], set[str]]] = [
    ({"lang": "en"}, {"en1", "en2"}),
    ({"lang": {"$eq": "de"}}, {"de1"}),
    ({"lang": 3}, {"num"}),
    ({"lang": "3"}, set()),
    ({"year": 2023}, {"fr1"}),
    ({"year": 2020.0}, {"en1"}),
    ({"flag": True}, {"en1", "de1"}),
    ({"flag": False}, {"en2"}),
    ({"score": 1}, set()),
    ({"tags": "cat"}, {"en1", "de1"}),
    ({"lang": {"$in": ["de", "fr", "xx"]}}, {"de1", "fr1"}),
    ({"tags": {"$in": ["dog", "bird"]}}, {"en1", "en2"}),
    ({"lang": {"$ne": "en"}}, {"de1", "fr1", "num"}),
    ({"tags": {"$ne": "cat"}}, {"en2", "fr1"}),
    ({"year": {"$gt": 2021}}, {"de1", "fr1"}),
    ({"year": {"$gte": 2021}}, {"en2", "de1", "fr1"}),
    ({"year": {"$lt": 2021}}, {"en1"}),
    ({"year": {"$lte": 2021}}, {"en1", "en2"}),
    ({"year": {"$gte": 2021, "$lt": 2023}}, {"en2", "de1"}),
    ({"score": {"$gt": -5.5, "$lte": 1.5}}, {"en1", "en2", "fr1"}),
    ({"score": {"$gte": 1e-3}}, {"en1", "en2", "de1"}),
    ({"lang": "en", "flag": True}, {"en1"}),
    ({"lang": {"$in": ["en", "de"]}, "year": {"$gt": 2020}, "tags": "cat"}, {"de1"}),
    ({"missing_key": "x"}, set()),
]


@pytest.fixture
def filter_coll(index: VectorIndex, coll: str) -> str:
    index.upsert(coll, [doc(i, [1, n, 0.5, 0], **meta) for n, (i, meta) in enumerate(FILTER_DOCS)])
    return coll


@pytest.mark.parametrize(("flt", "expected"), FILTER_CASES, ids=[str(f) for f, _ in FILTER_CASES])
def test_filter_forms(index: VectorIndex, filter_coll: str, flt: dict[str, Any], expected: set[str]) -> None:
    hits = index.search(filter_coll, unit(1, 0, 0, 0), 100, flt)
    assert {h.id for h in hits} == expected
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_filter_is_applied_before_top_k(index: VectorIndex, coll: str) -> None:
    query = unit(1, 0, 0, 0)
    near = [doc(f"near{i}", [1, 0.01 * i, 0, 0], kind="common") for i in range(200)]
    index.upsert(coll, [*near, doc("far", [-1, 0.2, 0, 0], kind="rare")])
    hits = index.search(coll, query, 1, {"kind": "rare"})
    assert [h.id for h in hits] == ["far"]
    assert hits[0].score < 0
    hits = index.search(coll, query, 3, {"kind": {"$ne": "common"}})
    assert [h.id for h in hits] == ["far"]


@pytest.mark.parametrize(
    ("flt", "needle"),
    [
        ({"bad-key": "x"}, "bad-key"),
        ({"1abc": "x"}, "1abc"),
        ({"": "x"}, "''"),
        ({"k" * 65: "x"}, "k" * 65),
        ({"lang": {"$regex": "e.*"}}, "$regex"),
        ({"lang": {"$where": "1"}}, "$where"),
        ({"lang": ["en", "de"]}, "lang"),
        ({"lang": None}, "lang"),
        ({"lang": {}}, "lang"),
        ({"lang": {"$in": "en"}}, "lang"),
        ({"lang": {"$in": []}}, "lang"),
        ({"lang": {"$in": [["en"]]}}, "lang"),
        ({"year": {"$gt": "2020"}}, "year"),
        ({"year": {"$gt": True}}, "year"),
        ({"year": {"$lt": float("nan")}}, "year"),
        ({"lang": {"nested": {"x": 1}}}, "nested"),
        ({"lang": {"x": 1}}, "lang"),
    ],
)
def test_invalid_filters_raise(index: VectorIndex, filter_coll: str, flt: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidFilter) as err:
        index.search(filter_coll, unit(1, 0, 0, 0), 5, flt)
    assert needle in str(err.value)
    assert isinstance(err.value, ValueError)


def test_filter_must_be_a_mapping(index: VectorIndex, filter_coll: str) -> None:
    with pytest.raises(InvalidFilter):
        index.search(filter_coll, unit(1, 0, 0, 0), 5, "lang = 'en'")  # type: ignore[arg-type]


# --- durability -------------------------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys, time
    from service.index import StoredDocument, open_index

    index = open_index(sys.argv[1])
    index.ensure_collection("durable", 4, "m")
    docs = [StoredDocument(f"d{i}", f"text {i}", None, {"i": i}, [1.0, float(i), 0.0, 0.0]) for i in range(50)]
    index.upsert("durable", docs)
    index.upsert("durable", [StoredDocument("d0", "replaced", None, {"i": 0}, [0.0, 0.0, 1.0, 0.0])])
    assert index.delete("durable", ["d49"]) == 1
    print("WRITTEN", flush=True)
    time.sleep(60)
    """
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_writes_survive_sigkill(backend: str, tmp_path: Path) -> None:
    uri = _uri(backend, tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "WRITTEN":
            proc.kill()
            pytest.fail(f"writer failed: {line!r} {proc.communicate(timeout=30)[1][-2000:]}")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    index = open_index(uri)
    try:
        info = index.get_collection("durable")
        assert (info.dimension, info.model, info.count) == (4, "m", 49)
        with pytest.raises(CollectionMismatch):
            index.ensure_collection("durable", 8, "m")
        got = index.get("durable", ["d0", "d1", "d49"])
        assert [(d.id, d.text) for d in got] == [("d0", "replaced"), ("d1", "text 1")]
        assert [h.id for h in index.search("durable", [0.0, 0.0, 1.0, 0.0], 1)] == ["d0"]
        assert [h.id for h in index.search("durable", [1.0, 0.0, 0.0, 0.0], 1, {"i": {"$gte": 48}})] == ["d48"]
    finally:
        index.close()
