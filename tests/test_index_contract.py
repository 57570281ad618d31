"""One contract suite for every index backend, run unchanged on each: LanceDB in a directory and on S3 (the moto
emulator), Milvus Lite (a file) and the real Milvus standalone server (one per test session)."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service import segments
from service.index import (
    CollectionMismatch,
    CollectionNotFound,
    IndexRecord,
    InvalidFilter,
    VectorIndex,
)
from service.index.factory import open_index
from tests.support.prepared import PreparedCollections, counter_names

REPO_ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ["lance", "lance_s3", "milvus", "milvus_server"]
DIM = 4
_names = itertools.count()


def backend_uri(backend: str, request: pytest.FixtureRequest, base: Path) -> str:
    """Where ``backend`` keeps an index for one test module (or test): a directory, a file, a bucket, a server."""
    if backend == "lance":
        return str(base / "lance")
    if backend == "milvus":
        return str(base / "m.db")
    if backend == "lance_s3":
        return f"s3://{request.getfixturevalue('s3_server').new_bucket('lance')}/index"
    if backend == "milvus_server":
        uri: str = request.getfixturevalue("milvus_server").uri
        drop_all(uri)  # the server is shared by the whole session: start from an empty one
        return uri
    raise ValueError(backend)


def drop_all(uri: str) -> None:
    with open_index(uri) as index:
        for info in index.list_collections():
            index.drop_collection(info.name)


@pytest.fixture(scope="module", params=BACKENDS)
def index_uri(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    return backend_uri(request.param, request, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def index(index_uri: str) -> Iterator[VectorIndex]:
    with open_index(index_uri) as index:
        yield index


@pytest.fixture(scope="module")
def prepared(index_uri: str) -> Iterator[PreparedCollections | None]:
    """On the Milvus server, empty collections made ahead (tests/support/prepared.py: ~2.5 s of load per collection
    otherwise); elsewhere creating one is quick and ``coll`` makes its own."""
    if not index_uri.startswith("http://"):
        yield None
        return
    ahead = PreparedCollections(index_uri, counter_names("c", _names), DIM, "test-model")
    try:
        yield ahead
    finally:
        ahead.close()


@pytest.fixture
def coll(index: VectorIndex, prepared: PreparedCollections | None) -> str:
    """An empty DIM-d collection for one test, opened with ``ensure_collection`` on the module's index."""
    name = f"c{next(_names)}"
    if prepared is not None:
        with contextlib.suppress(Exception):  # its making failed (a test restarted the server): make one here
            name = prepared.take()
    index.ensure_collection(name, DIM, "test-model")
    assert index.get_collection(name).count == 0
    return name


def unit(*xs: float) -> list[float]:
    v = np.asarray(xs, dtype=np.float64)
    return [float(x) for x in v / np.linalg.norm(v)]


def doc(id: str, vec: list[float], text: str | None = None, image: str | None = None, **meta: Any) -> IndexRecord:
    return IndexRecord(id=id, text=text, image=image, metadata=meta, embedding=unit(*vec))


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
    index.upsert(b, [IndexRecord("x", "t", None, {}, unit(*range(1, 9)))])
    listed = {info.name: info for info in index.list_collections()}
    assert (listed[a].dimension, listed[a].model, listed[a].count) == (DIM, "m1", 3)
    assert (listed[b].dimension, listed[b].model, listed[b].count) == (8, "m2", 1)


def test_drop_collection(index: VectorIndex) -> None:
    name = f"c{next(_names)}"
    assert index.drop_collection(name) is False
    index.ensure_collection(name, DIM, "m1")
    index.upsert(name, [doc("a", [1, 0, 0, 0], text="old")])
    assert index.drop_collection(name) is True
    assert name not in {c.name for c in index.list_collections()}
    with pytest.raises(CollectionNotFound):
        index.search(name, unit(1, 0, 0, 0), 3)
    with pytest.raises(CollectionNotFound):
        index.get_collection(name)
    assert index.drop_collection(name) is False
    info = index.ensure_collection(name, 8, "m2")  # re-created empty, with another dimension and model
    assert (info.dimension, info.model, info.count) == (8, "m2", 0)
    assert index.search(name, unit(*range(1, 9)), 3) == []


def test_other_process_view_follows_drop_and_recreate(index: VectorIndex, index_uri: str) -> None:
    """A second handle (another replica) keeps no stale state: dimension, load state, exact-search matrix."""
    name = f"c{next(_names)}"
    index.ensure_collection(name, DIM, "m1")
    index.upsert(name, [doc("old1", [1, 0, 0, 0]), doc("old2", [0, 1, 0, 0])])
    with open_index(index_uri) as other:
        assert [h.id for h in other.search(name, unit(1, 0, 0, 0), 1)] == ["old1"]  # caches warm in `other`
        assert index.drop_collection(name)
        with pytest.raises(CollectionNotFound):
            other.search(name, unit(1, 0, 0, 0), 1)
        index.ensure_collection(name, 8, "m2")
        with pytest.raises(CollectionMismatch):  # still empty: the server cannot tell by the vector alone
            other.search(name, unit(1, 0, 0, 0), 1)
        index.upsert(name, [IndexRecord("new8", "eight", None, {}, unit(*range(1, 9)))])
        assert (other.get_collection(name).dimension, other.get_collection(name).model) == (8, "m2")
        assert [h.id for h in other.search(name, unit(*range(1, 9)), 3)] == ["new8"]
        with pytest.raises(CollectionMismatch):
            other.search(name, unit(1, 0, 0, 0), 1)
        # Re-created again with the first dimension and as many writes: the old matrix must not come back.
        index.drop_collection(name)
        index.ensure_collection(name, DIM, "m1")
        index.upsert(name, [doc("new1", [1, 0, 0, 0])])
        index.upsert(name, [doc("new2", [0, 1, 0, 0])])
        hits = other.search(name, unit(1, 0, 0, 0), 5)
        assert [h.id for h in hits] == ["new1", "new2"]
        assert [d.id for d in other.get(name, ["old1", "new2"])] == ["new2"]
        other.upsert(name, [doc("from_other", [0, 0, 1, 0])])
    assert index.get_collection(name).count == 3


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


def test_upsert_mixes_documents_with_and_without_text_and_image(index: VectorIndex, coll: str) -> None:
    """One batch with every combination of present and absent text/image (Milvus 2.3 has no nullable fields)."""
    docs = [
        doc("both", [1, 0, 0, 0], text="t", image="i.png"),
        doc("text", [0, 1, 0, 0], text="only text"),
        doc("image", [0, 0, 1, 0], image="only.png"),
        doc("none", [0, 0, 0, 1]),
        doc("empty", [1, 1, 0, 0], text="", image=""),
    ]
    index.upsert(coll, docs)
    got = {d.id: (d.text, d.image) for d in index.get(coll, [d.id for d in docs])}
    assert got == {d.id: (d.text, d.image) for d in docs}
    hits = {h.id: (h.text, h.image) for h in index.search(coll, unit(1, 1, 1, 1), 10)}
    assert hits == got


def test_segment_rows_are_ordinary_rows_counted_once_with_their_clip_modality(index: VectorIndex, coll: str) -> None:
    """A segmented audio/video document (``service.segments``): rows ``d``, ``d\\x1f1``, ``d\\x1f2`` whose clip
    reference is in ``image`` and whose modality is stored: the collection counts one document, ``$modality``
    tells video and text+audio rows from images (on every backend, with or without a modality column), and
    ``modality_sample`` (balanced retrieval) sees them as their own group."""
    clip = "media://" + "a" * 64 + ".mp4?t=0,10&n=3&d=26"
    rows = [doc(segments.row_id("d", k), unit(1, k, 0, 0), image=clip, lang="en") for k in range(3)]
    voice = doc("v", unit(0, 0, 1, 0), text="a note", image="media://" + "b" * 64 + ".wav?t=0,4&n=1&d=4")
    pic = doc("p", unit(0, 0, 0, 1), image="only.png")
    for r in rows:
        r.modality = "video"
    voice.modality = "text+audio"
    index.upsert(coll, [*rows, voice, pic])
    assert index.get_collection(coll).count == 3
    assert [c.count for c in index.list_collections() if c.name == coll] == [3]
    got = index.get(coll, [r.id for r in rows] + ["v", "p"])
    assert [(d.id, d.modality) for d in got] == [(r.id, "video") for r in rows] + [("v", "text+audio"), ("p", "image")]

    def found(flt: dict[str, Any]) -> set[str]:
        return {h.id for h in index.search(coll, unit(1, 1, 1, 1), 10, flt)}

    assert found({"$modality": "video"}) == {r.id for r in rows}
    assert found({"$modality": "image"}) == {"p"}
    assert found({"$modality": {"$in": ["text+audio", "text+image"]}}) == {"v"}
    assert found({"$modality": "video", "lang": "en"}) == {r.id for r in rows}
    assert index.modality_sample(coll, "video", 10)[0] == 3
    assert index.modality_sample(coll, "image", 10)[0] == 1
    assert index.delete(coll, [r.id for r in rows[1:]]) == 2
    assert index.get_collection(coll).count == 3


def test_every_document_has_a_modality_returned_in_hits_and_usable_in_filters(index: VectorIndex, coll: str) -> None:
    """Modality from the content (text, image, both) or, for an embedding-only document, the one it declares
    (none: unlabelled ``""``); the same on every path and filterable with ``$modality`` next to metadata."""
    docs = [
        doc("both", [1, 0, 0, 0], text="t", image="i.png", lang="en"),
        doc("text", [0, 1, 0, 0], text="only text", lang="en"),
        doc("image", [0, 0, 1, 0], image="only.png", lang="de"),
        doc("declared", [0, 0, 0, 1], lang="en"),
        doc("bare", [1, 1, 0, 0]),
    ]
    docs[3].modality = "image"
    index.upsert(coll, docs)
    want = {"both": "text+image", "text": "text", "image": "image", "declared": "image", "bare": ""}
    assert {d.id: d.modality for d in index.get(coll, list(want))} == want
    assert {h.id: h.modality for h in index.search(coll, unit(1, 1, 1, 1), 10)} == want

    def found(flt: dict[str, Any]) -> set[str]:
        return {h.id for h in index.search(coll, unit(1, 1, 1, 1), 10, flt)}

    assert found({"$modality": "image"}) == {"image", "declared"}
    assert found({"$modality": {"$eq": "text+image"}}) == {"both"}
    assert found({"$modality": {"$in": ["text", ""]}}) == {"text", "bare"}
    assert found({"$modality": {"$ne": "image"}}) == {"both", "text", "bare"}
    assert found({"$modality": "image", "lang": "en"}) == {"declared"}
    docs[1].text = None  # replaced by an embedding-only document: its modality follows
    index.upsert(coll, [docs[1]])
    assert found({"$modality": ""}) == {"bare", "text"}
    for bad in ("sound", {"$in": []}, {"$gt": "text"}, ["image"]):
        with pytest.raises(InvalidFilter, match=r"\$modality"):
            index.search(coll, unit(1, 0, 0, 0), 5, {"$modality": bad})


def test_upsert_requires_embedding_of_right_dimension(index: VectorIndex, coll: str) -> None:
    with pytest.raises(ValueError):
        index.upsert(coll, [IndexRecord("a", "t", None, {}, None)])
    with pytest.raises(ValueError):
        index.upsert(coll, [IndexRecord("a", "t", None, {}, [1.0, 0.0])])
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


def test_vectors_are_the_stored_ones_and_follow_a_replacement(index: VectorIndex, coll: str) -> None:
    """What the redundancy penalty compares: read cold, after a search (LanceDB then answers from its in-memory
    matrix) and after an upsert replaced a document."""
    docs = [doc("a", [1, 0, 0, 0]), doc("b", [1, 1, 0, 0]), doc("c", [0, 0, 1, 2])]
    index.upsert(coll, docs)
    for step in ("cold", "searched", "replaced"):
        if step == "searched":
            index.search(coll, unit(1, 0, 0, 0), 3)
        if step == "replaced":
            docs[1] = doc("b", [0, 1, 0, 0])
            index.upsert(coll, [docs[1]])
            index.search(coll, unit(1, 0, 0, 0), 3)
        got = index.vectors(coll, ["c", "missing", "b"])
        assert set(got) == {"c", "b"}, step
        for d in (docs[1], docs[2]):
            assert got[d.id].dtype == np.float32 and got[d.id] == pytest.approx(d.embedding, abs=1e-6), step
    assert index.vectors(coll, []) == {}


def test_ids_lists_documents_in_order_page_by_page_and_follows_deletes(index: VectorIndex, coll: str) -> None:
    """``ids`` (``/ids``' pages, a reindex's reads): every document id once, in code point order, a segmented
    document by its own id only (its continuation rows are no documents: a reindex would copy them as such), pages
    of at most ``limit`` after ``after`` answered by the backend itself (rows written by several upserts, in
    shuffled order), any ``after`` string bounding them as Python compares strings; none after a delete."""
    assert index.ids(coll) == [] and index.ids(coll, "a", 3) == []
    docs = [f"d{n:03d}" for n in range(40)] + ["a b", "a'b", 'a"b', "a\\b", "é", "日本", "~", "Z"]
    random.Random(7).shuffle(docs)
    clip = "media://" + "a" * 64 + ".mp4?t=0,10&n=3&d=26"
    more = [segments.row_id("d010", 1), segments.row_id("d010", 2), segments.row_id("é", 1)]
    rows = [doc(i, [1.0, 0, 0, 0]) for i in docs] + [doc(r, [0, 1.0, 0, 0], image=clip) for r in more]
    random.Random(8).shuffle(rows)
    for start in range(0, len(rows), 13):
        index.upsert(coll, rows[start : start + 13])
    want = sorted(docs)
    assert index.ids(coll) == want
    pages: list[list[str]] = []
    after: str | None = None
    while not pages or len(pages[-1]) == 7:
        pages.append(index.ids(coll, after, 7))
        after = pages[-1][-1] if pages[-1] else None
    assert [i for p in pages for i in p] == want and [len(p) for p in pages] == [7] * 6 + [6]
    for after in ["d010", "d010\x1f1", "a", "a\x00", "a\x7f", "it's", 'a"', "a\\", "x" * 600, ""]:
        assert index.ids(coll, after, 5) == [i for i in want if i > after][:5], repr(after)
    assert index.ids(coll, "d039", 100) == [i for i in want if i > "d039"]
    index.delete(coll, ["Z", "d010", *more[:2]])
    assert index.ids(coll) == [i for i in want if i not in ("Z", "d010")]


def test_delete_returns_number_deleted(index: VectorIndex, coll: str) -> None:
    index.upsert(coll, [doc(i, [1, n, 0, 0]) for n, i in enumerate("abcd")])
    assert index.delete(coll, ["a", "missing", "c", "a"]) == 2
    assert index.delete(coll, ["a"]) == 0
    assert index.delete(coll, []) == 0
    assert index.get_collection(coll).count == 2
    assert [d.id for d in index.get(coll, ["a", "b", "c", "d"])] == ["b", "d"]
    assert {h.id for h in index.search(coll, unit(1, 0, 0, 0), 10)} == {"b", "d"}


def test_awkward_ids_and_strings_round_trip(index: VectorIndex, coll: str) -> None:
    ids = ['quote"d', "apos'trophe", "back\\slash", "semi;colon", "sp ace", "日本語", "x" * 512, "sql') OR 1=1 --"]
    index.upsert(coll, [doc(i, [1, n, 0, 0], text=i, label=i) for n, i in enumerate(ids)])
    assert [d.id for d in index.get(coll, list(reversed(ids)))] == list(reversed(ids))
    for i in ids:
        hits = index.search(coll, unit(1, 0, 0, 0), 10, {"label": i})
        assert [h.id for h in hits] == [i]
    assert index.delete(coll, ids[:4]) == 4
    assert index.get_collection(coll).count == len(ids) - 4


@pytest.mark.parametrize("bad", ["new\nline", "tab\tx", "trailing\n", "nul\x00", "del\x7f", "c1\x85", ""])
def test_control_characters_in_ids_are_refused_on_every_path(index: VectorIndex, coll: str, bad: str) -> None:
    """Both backends refuse the same ids (issue #16: one made a distinct record, the other answered 500)."""
    for call in (
        lambda: index.upsert(coll, [doc(bad, [1, 0, 0, 0])]),
        lambda: index.get(coll, [bad]),
        lambda: index.delete(coll, [bad]),
    ):
        with pytest.raises(ValueError, match="id"):
            call()


@pytest.mark.parametrize("name", ["abc\n", "abc\r\n", "a\x00b", "x" * 65, "_leading"])
def test_collection_names_follow_the_api_rule(index: VectorIndex, name: str) -> None:
    with pytest.raises(ValueError, match="collection name"):
        index.ensure_collection(name, DIM, "m")


@pytest.mark.parametrize(
    ("metadata", "needle"),
    [
        ({"n": float("nan")}, "finite"),
        ({"n": float("inf")}, "finite"),
        ({"n": 2**64}, "64 bits"),
        ({"n": -(2**63) - 1}, "64 bits"),
        ({f"k{i}": i for i in range(65)}, "keys"),
        ({"tags": list(range(1025))}, "lists"),
        ({f"k{i}": list(range(1000)) for i in range(5)}, "values"),
        ({"big": "x" * 40_000, "big2": "y" * 40_000}, "bytes"),
        ({"key\n": 1}, "metadata key"),
        ({"nested": {"a": 1}}, "values are"),
    ],
)
def test_metadata_limits_are_the_same_on_every_backend(
    index: VectorIndex, coll: str, metadata: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ValueError, match=needle):
        index.upsert(coll, [IndexRecord("m", "t", None, metadata, unit(1, 0, 0, 0))])
    assert index.get(coll, ["m"]) == []


def test_stored_text_limit_is_in_utf8_bytes_on_every_backend(index: VectorIndex, coll: str) -> None:
    index.upsert(coll, [IndexRecord("fits", "€" * 21_845, None, {}, unit(1, 0, 0, 0))])  # 65,535 bytes
    assert index.get(coll, ["fits"])[0].text == "€" * 21_845
    with pytest.raises(ValueError, match="65535 UTF-8 bytes"):
        index.upsert(coll, [IndexRecord("over", "€" * 21_846, None, {}, unit(1, 0, 0, 0))])


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


@pytest.fixture(scope="module")
def filter_coll(index: VectorIndex) -> str:
    """One collection per backend for the read-only filter tests (creating one per case costs seconds on a server)."""
    name = f"c{next(_names)}"
    index.ensure_collection(name, DIM, "test-model")
    index.upsert(name, [doc(i, [1, n, 0.5, 0], **meta) for n, (i, meta) in enumerate(FILTER_DOCS)])
    return name


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
    from service.index import IndexRecord
    from service.index.factory import open_index

    index = open_index(sys.argv[1])
    index.ensure_collection("durable", 4, "m")
    docs = [IndexRecord(f"d{i}", f"text {i}", None, {"i": i}, [1.0, float(i), 0.0, 0.0]) for i in range(50)]
    index.upsert("durable", docs)
    index.upsert("durable", [IndexRecord("d0", "replaced", None, {"i": 0}, [0.0, 0.0, 1.0, 0.0])])
    assert index.delete("durable", ["d49"]) == 1
    print("WRITTEN", flush=True)
    time.sleep(60)
    """
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_writes_survive_sigkill(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The writer is SIGKILLed once its writes returned; on the Milvus server, the server too (and restarted)."""
    uri = backend_uri(backend, request, tmp_path)
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
    if backend == "milvus_server":
        server = request.getfixturevalue("milvus_server")
        server.kill()
        server.start()
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


# --- several writers ----------------------------------------------------------------------------------------------

CONCURRENT_WRITER = textwrap.dedent(
    """
    import sys
    from service.index import IndexRecord
    from service.index.factory import open_index

    uri, worker = sys.argv[1], int(sys.argv[2])
    index = open_index(uri)
    index.ensure_collection("shared", 4, "m")  # all writers race to create it too
    for batch in range(6):
        own = [IndexRecord(f"w{worker}-{batch}-{i}", "own", None, {"w": worker}, [1.0, worker, batch, i])
               for i in range(10)]
        same = [IndexRecord(f"common-{i}", f"by {worker}", None, {"w": worker}, [0.0, 1.0, worker, i])
                for i in range(5)]  # every writer replaces these: conflicting commits
        index.upsert("shared", own + same)
        assert index.delete("shared", [f"w{worker}-{batch}-0"]) == 1
    print("DONE", flush=True)
    """
)


@pytest.mark.parametrize("backend", ["lance", "lance_s3", "milvus_server"])
def test_concurrent_writers_lose_nothing(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Three processes write one collection at once (creating it, appending, replacing the same ids, deleting):
    every acknowledged write is there at the end (LanceDB retries commits that lose a race)."""
    uri = backend_uri(backend, request, tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_WRITER, uri, str(w)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for w in range(3)
    ]
    for w in writers:
        out, err = w.communicate(timeout=280)
        assert w.returncode == 0 and out.strip() == "DONE", err[-3000:]
    with open_index(uri) as index:
        assert index.get_collection("shared").count == 3 * 6 * 9 + 5
        own = [f"w{w}-{b}-{i}" for w in range(3) for b in range(6) for i in range(1, 10)]
        assert len(index.get("shared", own)) == len(own)
        assert index.get("shared", [f"w{w}-{b}-0" for w in range(3) for b in range(6)]) == []
        common = index.get("shared", [f"common-{i}" for i in range(5)])
        assert [d.id for d in common] == [f"common-{i}" for i in range(5)]
        assert all(d.text in ("by 0", "by 1", "by 2") for d in common)


def test_a_collection_property_is_stored_with_the_collection_and_goes_with_it(
    index: VectorIndex, index_uri: str
) -> None:
    """Calibrations (issue #22) live here: durable, seen by another process's index, dropped with the collection."""
    name = f"c{next(_names)}"
    index.ensure_collection(name, DIM, "test-model")
    assert index.read_property(name, "mmsearch.calibration") is None
    value = '{"format": 1, "pairs": {}}' + " " * 20_000  # a large isotonic calibration is this size
    index.write_property(name, "mmsearch.calibration", value)
    index.upsert(name, [IndexRecord("a", "t", None, {}, unit(1, 0, 0, 0))])
    with open_index(index_uri) as other:  # another process opening the same storage
        assert other.read_property(name, "mmsearch.calibration") == value
    index.write_property(name, "mmsearch.calibration", None)
    assert index.read_property(name, "mmsearch.calibration") is None
    index.write_property(name, "mmsearch.calibration", "x")
    with pytest.raises(ValueError, match=r"mmsearch\."):
        index.write_property(name, "calibration", "x")
    assert index.drop_collection(name)
    with pytest.raises(CollectionNotFound):
        index.read_property(name, "mmsearch.calibration")
    index.ensure_collection(name, DIM, "test-model")
    assert index.read_property(name, "mmsearch.calibration") is None  # a re-created collection starts uncalibrated
