"""Keyword (BM25) search in the index layer: LanceDB's native full-text index, filters, OCR columns, migration."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from service.index import IndexRecord, VectorIndex
from service.index.base import UnsupportedMode
from service.index.factory import open_index
from service.ocr import OcrLine

DIM = 4


def vec(i: int) -> list[float]:
    v = np.zeros(DIM)
    v[i % DIM] = 1.0
    v[(i + 1) % DIM] = 0.1 * (i + 1)
    return (v / np.linalg.norm(v)).tolist()


DOCS = [
    IndexRecord(
        "inv",
        None,
        "media://a.png",
        {"team": "finance", "year": 2026},
        vec(0),
        ocr_text="Invoice total 418.20 EUR\nShipping address Lisbon",
        ocr_lines=[
            OcrLine("Invoice total 418.20 EUR", (18.0, 31.0, 271.0, 56.0), 0.99),
            OcrLine("Shipping address Lisbon", (58.0, 101.0, 315.0, 130.0), 0.98),
        ],
    ),
    IndexRecord("memo", "The shipping of parcels to Porto is delayed", None, {"team": "ops", "year": 2025}, vec(1)),
    IndexRecord(
        "both",
        "Lisbon office dashboard",
        "media://b.png",
        {"team": "finance", "year": 2024},
        vec(2),
        ocr_text="Revenue 12,400\nActive users 880",
    ),
    IndexRecord("bare", None, None, {"team": "ops"}, vec(3)),
]


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VectorIndex]:
    idx = open_index(str(tmp_path_factory.mktemp("kw") / "lance"))
    idx.ensure_collection("kw", DIM, "m")
    idx.upsert("kw", DOCS)
    yield idx
    idx.close()


def ids(hits: list) -> list[str]:  # type: ignore[type-arg]
    return [h.id for h in hits]


def test_keyword_search_over_text_and_ocr_text(index: VectorIndex) -> None:
    assert index.keyword_capable and index.has_keyword_data("kw")
    assert ids(index.keyword_search("kw", "invoice", 10)) == ["inv"]  # OCR text only
    assert ids(index.keyword_search("kw", "porto", 10)) == ["memo"]  # text only
    assert ids(index.keyword_search("kw", "active users", 10)) == ["both"]  # OCR text of a text+image document
    assert set(ids(index.keyword_search("kw", "Lisbon", 10))) == {"inv", "both"}
    # stemming: "shipped"/"shipping" share a stem; stop words alone match nothing
    assert set(ids(index.keyword_search("kw", "shipping", 10))) == {"inv", "memo"}
    assert index.keyword_search("kw", "the of to is", 10) == []
    assert index.keyword_search("kw", "   ", 10) == []
    hits = index.keyword_search("kw", "invoice lisbon", 10)
    assert ids(hits)[0] == "inv" and hits[0].score > hits[1].score > 0  # BM25, best first


def test_keyword_hits_carry_ocr_lines(index: VectorIndex) -> None:
    (hit,) = index.keyword_search("kw", "invoice", 10)
    assert hit.ocr_text == DOCS[0].ocr_text and hit.ocr_lines == DOCS[0].ocr_lines
    assert hit.metadata == {"team": "finance", "year": 2026} and hit.image == "media://a.png"
    (got,) = index.get("kw", ["inv"])
    assert got.ocr_text == DOCS[0].ocr_text and got.ocr_lines == DOCS[0].ocr_lines
    vector_hit = index.search("kw", vec(0), 1)[0]
    assert vector_hit.id == "inv" and vector_hit.ocr_lines == DOCS[0].ocr_lines


def test_keyword_filters_are_prefilters(index: VectorIndex) -> None:
    assert ids(index.keyword_search("kw", "lisbon", 10, {"team": "finance", "year": {"$gte": 2026}})) == ["inv"]
    assert ids(index.keyword_search("kw", "lisbon", 1, {"year": {"$lt": 2026}})) == ["both"]  # not cut by top-1
    assert index.keyword_search("kw", "lisbon", 10, {"team": "ops"}) == []


def test_query_syntax_is_not_interpreted(index: VectorIndex) -> None:
    for hostile in ['invoice" OR "', "invoice AND (", "text:invoice", "invoice*", "invoice'; DROP TABLE kw; --"]:
        assert "inv" in ids(index.keyword_search("kw", hostile, 10)), hostile


def test_upsert_is_searchable_at_once_and_replaces(index: VectorIndex) -> None:
    index.ensure_collection("kw2", DIM, "m")
    index.upsert("kw2", [IndexRecord("x", "quarterly roadmap", None, {}, vec(0))])
    assert ids(index.keyword_search("kw2", "roadmap", 5)) == ["x"]
    index.upsert("kw2", [IndexRecord("x", "annual budget", None, {}, vec(0))])
    assert index.keyword_search("kw2", "roadmap", 5) == []
    assert ids(index.keyword_search("kw2", "budget", 5)) == ["x"]
    index.delete("kw2", ["x"])
    assert index.keyword_search("kw2", "budget", 5) == [] and not index.has_keyword_data("kw2")


def test_format_1_collection_is_migrated(tmp_path: Path) -> None:
    """A collection written before OCR/keyword columns existed keeps its rows and becomes keyword-searchable."""
    db = lancedb.connect(str(tmp_path))
    old = pa.schema(
        [
            pa.field("id", pa.utf8(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), DIM), nullable=False),
            pa.field("text", pa.utf8()),
            pa.field("image", pa.utf8()),
            pa.field("metadata", pa.json_(pa.utf8())),
            pa.field("_terms", pa.list_(pa.utf8())),
        ],
        metadata={b"mmsearch.model": b"m", b"mmsearch.dimension": str(DIM).encode(), b"mmsearch.format": b"1"},
    )
    table = db.create_table("legacy", schema=old)
    table.add(
        pa.Table.from_pylist(
            [{"id": "a", "vector": vec(0), "text": "legacy invoice", "image": None, "metadata": "{}", "_terms": []}],
            schema=old,
        )
    )
    idx = open_index(str(tmp_path))
    try:
        assert ids(idx.keyword_search("legacy", "invoice", 5)) == ["a"]
        (got,) = idx.get("legacy", ["a"])
        assert got.text == "legacy invoice" and got.ocr_text is None and got.ocr_lines == []
        idx.upsert("legacy", [IndexRecord("b", None, None, {}, vec(1), ocr_text="scanned receipt")])
        assert ids(idx.keyword_search("legacy", "receipt", 5)) == ["b"]
        assert idx.search("legacy", vec(0), 1)[0].id == "a"
    finally:
        idx.close()
    fts = lancedb.connect(str(tmp_path)).open_table("legacy").schema.field("fts")
    assert (fts.metadata or {}).get(b"mmsearch.format") == b"2"


def test_milvus_lite_refuses_keyword_naming_the_backend(tmp_path: Path) -> None:
    idx = open_index(str(tmp_path / "m.db"))
    try:
        idx.ensure_collection("kw", DIM, "m")
        assert not idx.keyword_capable and not idx.has_keyword_data("kw")
        with pytest.raises(UnsupportedMode, match="milvus"):
            idx.keyword_search("kw", "invoice", 5)
    finally:
        idx.close()
