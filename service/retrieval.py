"""Retrieval modes over one index: ``vector`` (cosine), ``keyword`` (BM25 over text + OCR text) and ``hybrid``
(both candidate lists, fused by :mod:`service.fusion`), each hit with the evidence lines that matched the query.

Plain code: the pipeline runs :func:`retrieve` in a worker thread (it calls the index synchronously).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from service.evidence import Line, find_evidence
from service.fusion import DEFAULT_FUSION, Fusion, fuse
from service.index.base import Filter, IndexHit, UnsupportedMode, VectorIndex
from service.keywords import coverage, term_set

Mode = Literal["vector", "keyword", "hybrid"]


class ModeError(ValueError):
    """A mode the request cannot use (the message says why and what to send instead)."""


@dataclass(frozen=True)
class Query:
    """What retrieval works from: the query's text (its own and any read from its image) and its vector."""

    text: str | None
    vector: Sequence[float] | None


@dataclass
class Candidate:
    """One retrieved document with its scores and evidence."""

    hit: IndexHit
    score: float
    vector_score: float | None = None
    keyword_score: float | None = None
    evidence: list[Line] = field(default_factory=list)


def choose_mode(requested: Mode | None, index: VectorIndex, collection: str, query_text: str | None) -> Mode:
    """The mode to run: ``requested``, or by default ``hybrid`` when the backend does keyword search, the collection
    holds keyword data (some text or OCR text) and the query has text; else ``vector``.

    Raises ``UnsupportedMode`` (keyword/hybrid on a backend without BM25) or ``ModeError`` (keyword with no text).
    """
    has_text = bool(query_text and query_text.strip())
    if requested in ("keyword", "hybrid") and not index.keyword_capable:
        raise UnsupportedMode(index.backend, requested)
    if requested == "keyword" and not has_text:
        raise ModeError("mode 'keyword' needs query text (an image query's text is read only when OCR is on)")
    if requested is not None:
        return requested if has_text else "vector"  # hybrid of an image without text: the vector side alone
    if has_text and index.keyword_capable and index.has_keyword_data(collection):
        return "hybrid"
    return "vector"


def retrieve(
    index: VectorIndex,
    collection: str,
    mode: Mode,
    query: Query,
    k: int,
    filter: Filter | None = None,
    *,
    fusion: Fusion = DEFAULT_FUSION,
    keyword_weight: float | None = None,
) -> list[Candidate]:
    """The best ``k`` candidates of ``mode`` (filters applied inside the index on both sides), with evidence."""
    vector: list[IndexHit] = []
    keyword: list[IndexHit] = []
    if mode != "keyword":
        if query.vector is None:
            raise ValueError(f"mode {mode!r} needs a query vector")
        vector = index.search(collection, query.vector, k, filter)
    if mode != "vector" and query.text:
        keyword = index.keyword_search(collection, query.text, k, filter)
    terms = term_set([query.text]) if query.text else set()
    if mode == "vector":
        out = [Candidate(h, h.score, vector_score=h.score) for h in vector]
    elif mode == "keyword":
        out = [Candidate(h, h.score, keyword_score=h.score) for h in keyword]
    else:
        hits = {h.id: h for h in [*keyword, *vector]}
        doc_terms = {d: term_set([h.text, h.ocr_text]) for d, h in hits.items()}
        fused = fuse(
            [(h.id, h.score) for h in vector],
            [(h.id, h.score) for h in keyword],
            fusion=fusion,
            keyword_weight=keyword_weight,
            coverage=lambda d: coverage(terms, doc_terms[d]),
        )
        out = [Candidate(hits[f.id], f.score, f.vector_score, f.keyword_score) for f in fused[:k]]
    for c in out:
        c.evidence = find_evidence(terms, c.hit.text, c.hit.ocr_lines)
    return out
