"""Pure logic of keyword retrieval: term analysis (checked against LanceDB's own analyzer), evidence, fusion,
and the OCR engine's output conversion."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from service.evidence import MAX_SNIPPET_CHARS, find_evidence
from service.fusion import fuse
from service.keywords import STOPWORDS, coverage, term_set, terms, tokens
from service.ocr import OcrLine, axis_box, lines_from_json, lines_to_json, reading_order, to_page


def test_terms_fold_stem_and_drop_stop_words() -> None:
    assert tokens("Café-Bar: 418.20 EUR") == ["cafe", "bar", "418", "20", "eur"]
    assert terms("The dashboards and the Settings were shipping") == ["dashboard", "set", "ship"]
    assert terms("how did we do") == []
    assert coverage(term_set(["Invoice totals"]), term_set(["Invoice total 418.20", None])) == 1.0
    assert coverage(term_set(["invoice lisbon"]), term_set(["Invoice"])) == 0.5
    assert coverage(set(), {"x"}) == 0.0


def test_stop_words_are_the_ones_lancedb_drops(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """If a LanceDB upgrade changes its analyzer, evidence would point at words the index did not match."""
    import lancedb
    from lancedb.index import FTS
    from lancedb.query import MatchQuery

    probes = sorted(STOPWORDS | {"many", "much", "very", "would", "revenue", "invoice", "could", "does"})
    table = lancedb.connect(str(tmp_path)).create_table(
        "t", pa.Table.from_pylist([{"id": w, "fts": f"zzz {w}"} for w in probes])
    )
    table.create_index("fts", config=FTS(with_position=False))
    dropped = {w for w in probes if not table.search(MatchQuery(w, "fts")).limit(1).to_list()}  # type: ignore[call-arg]
    assert dropped == set(STOPWORDS)
    # and stemming agrees: a plural query finds the singular
    assert table.search(MatchQuery("invoices", "fts")).limit(1).to_list()[0]["id"] == "invoice"  # type: ignore[call-arg]


def test_evidence_prefers_lines_with_more_terms_and_keeps_boxes() -> None:
    q = term_set(["refund rate last week"])
    lines = [
        OcrLine("Quarterly Revenue Dashboard", (36, 29, 657, 74), 0.99),
        OcrLine("Refund rate 2.4% last week", (698, 600, 909, 617), 0.99),
        OcrLine("Refunds by region", (40, 300, 200, 320), 0.98),
    ]
    got = find_evidence(q, "Notes\nThe refund policy changed.", lines)
    assert [(e.source, e.text) for e in got] == [
        ("ocr", "Refund rate 2.4% last week"),
        ("ocr", "Refunds by region"),
        ("text", "The refund policy changed."),
    ]
    assert got[0].box == (698, 600, 909, 617) and got[2].box is None
    assert find_evidence(set(), "anything", lines) == []
    assert find_evidence(term_set(["unrelated"]), "anything", lines) == []
    assert len(find_evidence(term_set(["refund"]), "refund\n" * 20, lines, limit=5)) == 5


def test_long_text_lines_become_a_window_around_the_match() -> None:
    text = "filler words " * 60 + "the invoice number is 77310 " + "more filler " * 60
    (line,) = find_evidence(term_set(["invoice"]), text, [])
    assert "invoice number is 77310" in line.text and len(line.text) <= MAX_SNIPPET_CHARS + 2


def test_coverage_fusion_keeps_dense_order_for_weak_keyword_matches() -> None:
    vector = [("a", 0.80), ("b", 0.60), ("c", 0.40)]
    keyword = [("x", 9.0), ("b", 3.0)]
    cov = {"a": 0.0, "b": 1.0, "c": 0.0, "x": 0.34}.__getitem__
    fused = fuse(vector, keyword, coverage=cov)
    # full coverage lifts b over the dense best; x's one-of-three-words match is under the floor: it counts 0
    assert [f.id for f in fused] == ["b", "a", "c", "x"]
    b = fused[0]
    assert b.vector_score == 0.60 and b.keyword_score == 3.0 and b.score == pytest.approx(0.5 + 2.0)
    assert fused[3].vector_score is None and fused[3].score == 0.0
    # from the floor up coverage counts, squared: 60 % of the terms lift c (0 + 2 * 0.36) over b (0.5); half of
    # them (b) does not count, nor x's 49 %
    part = fuse(vector, keyword, coverage={"a": 0.0, "b": 0.5, "c": 0.6, "x": 0.49}.__getitem__)
    assert [(f.id, round(f.score, 3)) for f in part] == [("a", 1.0), ("c", 0.72), ("b", 0.5), ("x", 0.0)]
    # with no query terms at all the dense order and its scaled scores stand
    none = fuse(vector, [], coverage=lambda d: 0.0)
    assert [f.id for f in none] == ["a", "b", "c"]
    assert [f.score for f in none] == pytest.approx([1.0, 0.5, 0.0])


def test_rrf_fusion_and_weights() -> None:
    vector = [("a", 0.9), ("b", 0.8)]
    keyword = [("b", 5.0), ("c", 4.0)]
    fused = fuse(vector, keyword, fusion="rrf")
    assert [f.id for f in fused] == ["b", "a", "c"]
    assert fused[0].score == pytest.approx(1 / 62 + 1 / 61)
    assert [f.id for f in fuse(vector, keyword, fusion="rrf", keyword_weight=0.0)][:2] == ["a", "b"]
    with pytest.raises(ValueError, match="coverage"):
        fuse(vector, keyword)


def test_ocr_output_conversion() -> None:
    assert axis_box([[10, 5], [50, 4], [51, 20], [9, 21]], 40, 100) == (9.0, 4.0, 40.0, 21.0)
    second_row = OcrLine("b", (0, 30, 10, 40), 1.0)
    right, left = OcrLine("right", (100, 2, 150, 12), 1.0), OcrLine("left", (0, 0, 50, 10), 1.0)
    assert reading_order([second_row, right, left]) == [left, right, second_row]

    class Result:
        txts = ("  Total   42 ", "", "Lisbon")
        boxes = np.array(
            [
                [[0, 0], [10, 0], [10, 5], [0, 5]],
                [[0, 0], [1, 0], [1, 1], [0, 1]],
                [[0, 10], [9, 10], [9, 15], [0, 15]],
            ],
            dtype=np.float32,
        )
        scores = (0.91, 0.5, 0.8)

    page = to_page(Result(), 20, 20)
    assert page.text == "Total 42\nLisbon" and page.lines[0].score == 0.91
    empty = type("Empty", (), {"txts": None, "boxes": None, "scores": None})()
    assert to_page(empty, 5, 5).lines == ()
    assert lines_from_json(lines_to_json(list(page.lines))) == list(page.lines)
    assert lines_to_json([]) is None and lines_from_json(None) == []
    assert lines_from_json('[["ok", [1, 2, 3, 4], 0.9], ["bad", [1, 2], 0.9], 7]') == [OcrLine("ok", (1, 2, 3, 4), 0.9)]
    assert lines_from_json("not json") == []
