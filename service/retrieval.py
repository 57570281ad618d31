"""Retrieval modes over one index: ``vector`` (cosine), ``keyword`` (BM25 over text + OCR text) and ``hybrid``
(both candidate lists, fused by :mod:`service.fusion`), each hit with the evidence lines that matched the query.

Balanced retrieval (:mod:`service.balance`, a :class:`Balance` given): the vector side is drawn per document
modality (each draw its own top-``k`` with the request's filters) and fused on a shared scale with a minimum share
per modality; in ``hybrid`` that one balanced list is what meets the keyword list, so every document counts once
on each side (a document has one modality).

Plain code: the pipeline runs :func:`retrieve` in a worker thread (it calls the index synchronously).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from service import balance as bal
from service.evidence import Line, find_evidence
from service.fusion import DEFAULT_FUSION, Fusion, fuse
from service.index.base import Filter, IndexHit, UnsupportedMode, VectorIndex
from service.keywords import coverage, term_set
from service.redundancy import Redundancy

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
    fused_score: float | None = None
    """Balanced retrieval: the score on the scale every modality shares."""


DUPLICATE_COSINE = 0.9999
"""A balanced draw's candidate at least this close to the query is its duplicate and ranks first."""


@dataclass(frozen=True)
class Balance:
    """How one search draws per modality: the modalities to draw and the scorers of this query's raw scores
    (``None``: reciprocal rank fusion)."""

    modalities: tuple[str, ...]
    scorers: Mapping[str, bal.Scorer] | None
    min_share: float


def balanced_vector(
    index: VectorIndex,
    collection: str,
    vector: Sequence[float],
    k: int,
    filter: Filter | None,
    how: Balance,
    redundancy: Redundancy | None = None,
) -> list[tuple[IndexHit, float]]:
    """The ``k`` best of the per-modality draws on the shared scale (each modality keeping its minimum share),
    best first, with their fused scores; hits keep their raw cosine. ``redundancy``: every drawn candidate's cosine
    less its penalty (among all the draws) is what goes onto the shared scale."""
    lists = index.search_by_modality(collection, vector, k, how.modalities, filter)
    hits = {h.id: h for found in lists.values() for h in found}
    penalty = redundancy.penalise(index, collection, list(hits.values())) if redundancy else {}
    scored = {
        m: sorted(((h.id, h.score - penalty.get(h.id, 0.0)) for h in found), key=lambda p: -p[1])
        for m, found in lists.items()
    }
    ranked = bal.fuse(scored, how.scorers)
    chosen = bal.shortlist(ranked, k, how.min_share)
    # A duplicate of the query (cosine ~1) goes first whatever the scale says: no offset between modalities
    # makes it less relevant, and a model that maps a whole modality close together (a random tiny one) would
    # otherwise let another modality's stand-out pass it.
    duplicates = sorted((r for r in chosen if hits[r.id].score >= DUPLICATE_COSINE), key=lambda r: -hits[r.id].score)
    rest = [r for r in chosen if hits[r.id].score < DUPLICATE_COSINE]
    return [(hits[r.id], r.fused) for r in [*duplicates, *rest]]


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
    balance: Balance | None = None,
    redundancy: Redundancy | None = None,
) -> list[Candidate]:
    """The best ``k`` candidates of ``mode`` (filters applied inside the index on both sides), with evidence;
    ``balance``: the vector side drawn per modality (see the module docstring); ``redundancy``: vector candidates
    ordered by their cosine less their redundancy penalty (``service.redundancy``)."""
    vector: list[IndexHit] = []
    keyword: list[IndexHit] = []
    fused: dict[str, float] = {}
    if mode != "keyword":
        vector, fused = _vector_side(index, collection, mode, query, k, filter, balance, redundancy)
    if mode != "vector" and query.text:
        keyword = index.keyword_search(collection, query.text, k, filter)
    terms = term_set([query.text]) if query.text else set()
    if mode == "vector":
        out = [Candidate(h, h.score, vector_score=h.score, fused_score=fused.get(h.id)) for h in vector]
    elif mode == "keyword":
        out = [Candidate(h, h.score, keyword_score=h.score) for h in keyword]
    else:
        out = _hybrid(vector, keyword, fused, terms, k, fusion, keyword_weight)
    for c in out:
        c.evidence = find_evidence(terms, c.hit.text, c.hit.ocr_lines)
    return out


def _vector_side(
    index: VectorIndex,
    collection: str,
    mode: Mode,
    query: Query,
    k: int,
    filter: Filter | None,
    balance: Balance | None,
    redundancy: Redundancy | None = None,
) -> tuple[list[IndexHit], dict[str, float]]:
    """The vector hits in their order and, when it is not the raw cosine's, each hit's score on it (``fused``):
    the balanced scale, and/or the cosine less the redundancy penalty."""
    if query.vector is None:
        raise ValueError(f"mode {mode!r} needs a query vector")
    if balance is None:
        hits = index.search(collection, query.vector, k, filter)
        if redundancy is None or len(hits) < 2:
            return hits, {}
        penalty = redundancy.penalise(index, collection, hits)
        order = {h.id: h.score - penalty[h.id] for h in hits}
        return sorted(hits, key=lambda h: -order[h.id]), order
    drawn = balanced_vector(index, collection, query.vector, k, filter, balance, redundancy)
    return [h for h, _ in drawn], {h.id: f for h, f in drawn}


def _hybrid(
    vector: list[IndexHit],
    keyword: list[IndexHit],
    fused: dict[str, float],
    terms: set[str],
    k: int,
    fusion: Fusion,
    keyword_weight: float | None,
) -> list[Candidate]:
    """Vector and keyword hits fused into one list (a balanced vector list enters on its shared scale)."""
    hits = {h.id: h for h in [*keyword, *vector]}
    cosine = {h.id: h.score for h in vector}
    doc_terms = {d: term_set([h.text, h.ocr_text]) for d, h in hits.items()}
    together = fuse(
        [(h.id, fused.get(h.id, h.score)) for h in vector],  # balanced: its shared scale, in its order
        [(h.id, h.score) for h in keyword],
        fusion=fusion,
        keyword_weight=keyword_weight,
        coverage=lambda d: coverage(terms, doc_terms[d]),
    )
    return [
        Candidate(hits[f.id], f.score, cosine.get(f.id), f.keyword_score, fused_score=fused.get(f.id))
        for f in together[:k]
    ]


def query_modality(text: str | None, image: str | None) -> str:
    """The modality of a query item (the first half of a calibration pair)."""
    return "text+image" if text and image else "image" if image else "text"
