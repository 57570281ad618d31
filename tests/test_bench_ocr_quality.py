"""Unit tests of the screenshot-set measurements: OCR word recall and the hybrid fusion replay."""

from __future__ import annotations

import pytest

from bench.hybrid_fusion import replay
from bench.ocr_recall import recall_table, word_recall, words


def test_words_strip_punctuation_and_case() -> None:
    assert words(["Pastry revenue $1,860", "26.4% (up)"]) == {"pastry": 1, "revenue": 1, "1,860": 1, "26.4": 1, "up": 1}


def test_word_recall_counts_each_occurrence_once() -> None:
    truth = ["Invoice total 418.20 EUR", "total due"]
    assert word_recall(truth, "Invoice total 418.20 EUR\ntotal due") == (6, 6)
    assert word_recall(truth, "Invoicetotal 418.20 EUR\ndue") == (3, 6)  # run-together words are missed
    assert word_recall(truth, None) == (0, 6)


def test_recall_table_per_condition() -> None:
    pages = [
        {"_id": "a", "condition": "clean", "lines": ["one two", "three four"]},
        {"_id": "b", "condition": "hard", "lines": ["five six"]},
    ]
    table = recall_table(pages, {"a": "one two\nthree four", "b": "five"})
    assert table["clean"]["recall"] == 1.0 and table["hard"]["recall"] == 0.5
    assert table["all"]["words"] == 6 and table["all"]["found"] == 5 and table["all"]["worst_page"] == 0.5


def test_fusion_replay_uses_the_service_fusion() -> None:
    data = {
        "lists": {"q": {"vector": [["d1", 0.9], ["d2", 0.5]], "keyword": [["d2", 3.0], ["d3", 2.0]]}},
        "texts": {"d1": ["unrelated page", None], "d2": [None, "nightly backup failed"], "d3": ["backup", None]},
    }
    table = replay(data, {"q": "nightly backup failed"}, {"q": "quote"}, {"q": {"d2": 1.0}})
    assert table["vector only"]["quote"]["r@1"] == 0.0 and table["keyword only"]["quote"]["r@1"] == 1.0
    floor = table["coverage w=2 squared, floor 0.5"]["quote"]
    assert floor["r@1"] == 1.0 and floor["ndcg@10"] == pytest.approx(1.0)  # every term on d2 lifts it first
