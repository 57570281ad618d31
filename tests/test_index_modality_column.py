"""LanceDB format 3: each row's modality in a column of its own, so that a ``$modality`` filter (one per modality in
every balanced search) is a BITMAP index lookup instead of null tests on ``text``/``image`` that Lance's prefilter
evaluates on every row (bench/RESULTS.md section 15). Real LanceDB tables, a real background ANN build."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
import pytest
from lancedb.index import HnswSq, LabelList

from service.index import IndexRecord, filters, lance
from service.index.base import Filter
from service.index.lance import LanceIndex

DIM = 16
N = 600
KINDS = ("text", "image", "text+image", "declared-image", "declared-text+image", "bare")
FILTERS: list[Filter] = [
    {"$modality": "text"},
    {"$modality": "image"},
    {"$modality": "text+image"},
    {"$modality": ""},
    {"$modality": {"$in": ["image", ""]}},
    {"$modality": {"$ne": "text"}},
    {"$modality": "image", "lang": "en"},
    {"$modality": {"$in": ["text", "text+image"]}, "n": {"$lt": 300}},
]


def _doc(i: int, vector: np.ndarray) -> IndexRecord:
    kind = KINDS[i % len(KINDS)]
    text = f"doc {i}" if kind in ("text", "text+image") else None
    image = f"media://{i:064x}.png" if kind in ("image", "text+image") else None
    declared = kind.removeprefix("declared-") if kind.startswith("declared-") else ""
    meta = {"lang": "en" if i % 4 < 2 else "fr", "n": i}
    return IndexRecord(f"d{i}", text, image, meta, vector.tolist(), modality=declared)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    v = np.random.default_rng(7).normal(size=(N, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def docs(vectors: np.ndarray) -> list[IndexRecord]:
    return [_doc(i, v) for i, v in enumerate(vectors)]


def _expected(docs: list[IndexRecord], f: Filter) -> set[str]:
    """The documents a filter selects, computed here from what each document holds."""
    allowed = set(filters.parse_filter({"$modality": f["$modality"]})[0].terms)
    keep = set()
    for d in docs:
        modality = filters.stored_modality(d.text, d.image, filters.document_terms({}, d.modality))
        if modality not in allowed:
            continue
        if "lang" in f and d.metadata["lang"] != f["lang"]:
            continue
        if "n" in f and not d.metadata["n"] < f["n"]["$lt"]:  # type: ignore[index]
            continue
        keep.add(d.id)
    return keep


def _ids(table: Any, where: str | None) -> set[str]:
    query = table.search().select(["id"]).limit(N * 2)
    if where is not None:
        query = query.where(where)
    return set(query.to_arrow()["id"].to_pylist())


def _null_tests(f: Filter) -> str | None:
    """The predicate before format 3 (content columns and declared terms)."""
    return filters.to_lance_sql(filters.parse_filter(f), terms_column=lance.TERMS, json_column=lance.METADATA)


def _ann(table: Any, q: np.ndarray, where: str) -> list[str]:
    """The ANN query ``LanceIndex.search`` runs (same parameters), with the given predicate."""
    query = (
        table.search(q, vector_column_name=lance.VECTOR)
        .distance_type("cosine")
        .limit(10)
        .select(["id", "_distance"])
        .where(where, prefilter=True)
        .ef(max(lance.MIN_EF, 2 * 10 * lance.REFINE_FACTOR))
        .refine_factor(lance.REFINE_FACTOR)
    )
    return [r["id"] for r in sorted(query.to_arrow().to_pylist(), key=lambda r: (r["_distance"], r["id"]))]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, docs: list[IndexRecord]) -> Iterator[tuple[LanceIndex, str]]:
    path = str(tmp_path_factory.mktemp("modcol") / "lance")
    index = LanceIndex(path, ann_threshold=N // 2)
    index.ensure_collection("c", DIM, "m")
    for start in range(0, N, 200):
        index.upsert("c", docs[start : start + 200])
    assert index.wait_for_maintenance(300)  # the background build: vector, filter-term and modality indexes
    yield index, path
    index.close()


def test_upsert_stores_each_rows_modality(built: tuple[LanceIndex, str], docs: list[IndexRecord]) -> None:
    _, path = built
    table = lancedb.connect(path).open_table("c")
    rows = table.search().select(["id", lance.MODALITY]).limit(N).to_arrow().to_pylist()
    want = {d.id: filters.stored_modality(d.text, d.image, filters.document_terms({}, d.modality)) for d in docs}
    assert {r["id"]: r[lance.MODALITY] for r in rows} == want
    assert set(want.values()) == {"text", "image", "text+image", ""}


def test_modality_filter_is_answered_by_the_bitmap_index(built: tuple[LanceIndex, str], vectors: np.ndarray) -> None:
    _, path = built
    table = lancedb.connect(path).open_table("c")
    kinds = {i.name: i.index_type for i in table.list_indices()}
    assert kinds[lance.MODALITY_INDEX] == "Bitmap" and kinds[lance.VECTOR_INDEX] == "IvfHnswSq"
    where = lance._where(table, filters.parse_filter({"$modality": "image"}))
    assert where == "(modality = 'image')"
    plan = table.search(vectors[0], vector_column_name=lance.VECTOR).where(where, prefilter=True).explain_plan(True)
    assert "ScalarIndexQuery" in plan and lance.MODALITY_INDEX in plan and "IS NULL" not in plan
    old = table.search(vectors[0], vector_column_name=lance.VECTOR).where(_null_tests({"$modality": "image"}))
    assert "image IS NOT NULL" in old.explain_plan(True)  # what it replaces: evaluated on every row


@pytest.mark.parametrize("f", FILTERS, ids=lambda f: str(f))
def test_same_documents_and_hits_as_the_null_tests(
    built: tuple[LanceIndex, str], docs: list[IndexRecord], vectors: np.ndarray, f: Filter
) -> None:
    index, path = built
    table = lancedb.connect(path).open_table("c")
    new, old = lance._where(table, filters.parse_filter(f)), _null_tests(f)
    assert new is not None and old is not None and lance.MODALITY in new and "IS NULL" not in new
    assert _ids(table, new) == _ids(table, old) == _expected(docs, f)
    for q in vectors[:5]:
        hits = [h.id for h in index.search("c", q.tolist(), 10, f)]
        assert hits == _ann(table, q, old)  # through the ANN index: the same hits, in the same order
        assert set(hits) <= _expected(docs, f)


def test_balanced_draw_uses_the_column_per_modality(built: tuple[LanceIndex, str], docs: list[IndexRecord]) -> None:
    index, _ = built
    drawn = index.search_by_modality("c", docs[1].embedding, 5, ["text", "image", ""], {"lang": "fr"})
    for m, hits in drawn.items():
        assert len(hits) == 5 and {h.id for h in hits} <= _expected(docs, {"$modality": m, "lang": "fr"})
        assert {h.modality for h in hits} == {m}


def _format_2_table(path: str, docs: list[IndexRecord]) -> Any:
    """A collection as format 2 wrote it (no modality column), with its ANN and filter-term indexes built."""
    schema = lance._schema(DIM, "m")
    schema = schema.remove(schema.get_field_index(lance.MODALITY))
    schema = schema.with_metadata({**schema.metadata, lance.FORMAT_KEY: b"2"})
    rows = [
        {
            "id": d.id,
            lance.VECTOR: d.embedding,
            "text": d.text,
            "image": d.image,
            lance.METADATA: lance._dump_metadata(d),
            lance.TERMS: filters.document_terms(d.metadata, d.modality or None),
            lance.OCR_TEXT: None,
            lance.OCR_LINES: None,
            lance.FTS_COLUMN: d.text,
        }
        for d in docs
    ]
    table = lancedb.connect(path).create_table("old", schema=schema)
    table.add(pa.Table.from_pylist(rows, schema=schema))
    table.create_index(lance.FTS_COLUMN, config=lance.FTS(with_position=False), name=lance.FTS_INDEX)
    table.create_index(lance.VECTOR, config=HnswSq(distance_type="cosine"), name=lance.VECTOR_INDEX)
    table.create_index(lance.TERMS, config=LabelList(), name=lance.TERMS_INDEX)
    return table


def test_format_2_table_is_migrated_in_place_when_opened(
    tmp_path: Path, docs: list[IndexRecord], vectors: np.ndarray
) -> None:
    path = str(tmp_path / "lance")
    table = _format_2_table(path, docs)
    before = {r["id"]: r for r in table.search().limit(N).to_arrow().to_pylist()}
    # Without the column the predicate stays the null tests (what an unmigrated table needs).
    assert lance._where(table, filters.parse_filter({"$modality": "image"})) == _null_tests({"$modality": "image"})
    with LanceIndex(path, ann_threshold=N // 2) as index:
        for f in FILTERS:
            assert {h.id for h in index.search("old", vectors[0].tolist(), N, f)} <= _expected(docs, f)
            assert len(index.search("old", vectors[0].tolist(), 3, f)) == 3
        assert {h.id for h in index.keyword_search("old", "doc", N, {"$modality": "text"})} == _expected(
            docs, {"$modality": "text"}
        )
    table = lancedb.connect(path).open_table("old")
    after = table.search().limit(N).to_arrow().to_pylist()
    assert {r["id"]: r[lance.MODALITY] for r in after} == {
        d.id: filters.stored_modality(d.text, d.image, filters.document_terms({}, d.modality)) for d in docs
    }
    assert all({k: v for k, v in r.items() if k != lance.MODALITY} == before[r["id"]] for r in after)
    stats = table.index_stats(lance.VECTOR_INDEX)
    assert stats is not None and (stats.num_indexed_rows, stats.num_unindexed_rows) == (N, 0)  # no row moved
    assert {i.name: i.index_type for i in table.list_indices()}[lance.MODALITY_INDEX] == "Bitmap"
    assert (table.schema.field(lance.MODALITY).metadata or {}).get(lance.FORMAT_KEY) == b"3"
    for f in FILTERS:
        assert _ids(table, lance._where(table, filters.parse_filter(f))) == _ids(table, _null_tests(f))


def test_ann_index_has_one_partition_per_modality(built: tuple[LanceIndex, str], vectors: np.ndarray) -> None:
    """Four modalities of over 5 % each: four IVF partitions (k-means puts modalities that cluster apart in
    partitions of their own, so a ``$modality`` search walks its own modality's graphs)."""
    _, path = built
    table = lancedb.connect(path).open_table("c")
    assert lance.ann_partition_size(table) == N // 4
    plan = table.search(vectors[0], vector_column_name=lance.VECTOR).limit(5).analyze_plan()
    assert "partitions_searched=4" in plan


def test_partitions_follow_the_modalities_that_hold_a_share(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    with LanceIndex(str(tmp_path / "lance"), ann_threshold=10_000) as index:
        index.ensure_collection("one", DIM, "m")
        index.upsert("one", [IndexRecord(f"t{i}", "t", None, {}, rng.normal(size=DIM).tolist()) for i in range(100)])
        index.ensure_collection("few", DIM, "m")
        few = [IndexRecord(f"t{i}", "t", None, {}, rng.normal(size=DIM).tolist()) for i in range(100)]
        few += [IndexRecord(f"i{i}", None, "media://x.png", {}, rng.normal(size=DIM).tolist()) for i in range(4)]
        index.upsert("few", few)  # images: under 5 % of the rows
        index.ensure_collection("two", DIM, "m")
        index.upsert("two", few + [IndexRecord(f"j{i}", None, "media://x.png", {}, few[i].embedding) for i in range(4)])
        db = lancedb.connect(str(tmp_path / "lance"))
        assert [lance.ann_partition_size(db.open_table(n)) for n in ("one", "few", "two")] == [None, None, 54]
