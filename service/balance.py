"""Balanced retrieval across document modalities: no modality crowds another out of the shortlist.

Embeddings of different modalities cluster apart (the *modality gap*): a text query scores text documents in one
range and image documents in another, even when the ranking within each modality is right. One top-k by raw
score then fills every slot with one modality. Balanced retrieval draws candidates per document modality (each
list with its own top-k and the request's filters), maps each list's raw scores onto one comparable scale, and
fuses them into a shortlist that keeps a minimum share per modality.

The comparable scale, best first:

* **calibrated** (``service.calibration``): the probability of relevance fitted on labelled queries for the
  (query modality -> document modality) pair;
* **zscore** (default, chosen by measurement: ``bench/gap_fusion.py``, ``bench/RESULTS.md``): the raw score
  standardised by the distribution of the query's scores over that modality's documents,
  ``(raw - mean) / std``, the moments computed from a sample of the modality's vectors (collection statistics).
  A constant offset between modalities cancels, and a document that stands out in its own modality stands out in
  the fused list; a modality with nothing relevant to the query does not push its best-of-nothing forward;
* **rrf**: reciprocal rank fusion of the per-modality lists (ranks only; every modality's first candidate ties
  with every other's).

Plain code, no I/O: the pipeline gives it the per-modality lists and the statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Fusion = Literal["zscore", "rrf"]
FUSIONS: tuple[Fusion, ...] = ("zscore", "rrf")
UNLABELLED = ""
"""The group of documents stored without a modality (caller-supplied embedding only, no declared modality)."""
RRF_K = 60
SAMPLE_SIZE = 512
"""Vectors per modality the statistics are computed from (the std of a query's scores to ~3%)."""
SIGMA_FLOOR = 1e-2
"""Smallest standard deviation a modality's scores are divided by (a modality of one or two documents, or of
near-identical ones, would otherwise blow its scores up)."""

Scorer = Callable[[float], float]
"""Maps a raw (cosine) score of one modality onto the comparable scale."""


@dataclass(frozen=True)
class GroupStats:
    """Statistics of one document modality of a collection: its document count and a sample of its unit vectors."""

    count: int
    sample: np.ndarray
    """``(n, dimension)`` float32, ``n <= SAMPLE_SIZE``: the vectors the score moments are computed from."""

    def moments(self, query: np.ndarray) -> tuple[float, float]:
        """Mean and standard deviation (at least ``SIGMA_FLOOR``) of ``query``'s cosine over the modality."""
        if len(self.sample) == 0:
            return 0.0, 1.0
        scores = self.sample @ np.asarray(query, dtype=np.float32)
        sd = float(scores.std(ddof=1)) if len(scores) > 1 else 0.0
        return float(scores.mean()), max(sd, SIGMA_FLOOR)


def zscore_scorers(query: np.ndarray, stats: Mapping[str, GroupStats]) -> dict[str, Scorer]:
    """One standardising scorer per modality, for this query."""
    return {group: _standardiser(*s.moments(query)) for group, s in stats.items()}


def _standardiser(mean: float, sd: float) -> Scorer:
    def scorer(raw: float) -> float:
        return (raw - mean) / sd

    return scorer


@dataclass
class Ranked:
    """A candidate of one modality: its raw score, its fused (comparable) score and its rank in its own list."""

    id: str
    group: str
    raw: float
    fused: float
    rank: int


def fuse(lists: Mapping[str, Sequence[tuple[str, float]]], scorers: Mapping[str, Scorer] | None) -> list[Ranked]:
    """Every candidate of every modality list (``group -> [(id, raw)]``, best first), best fused score first.

    ``scorers``: one per group (zscore or calibrated); ``None``: reciprocal rank fusion. A document is in one
    list only (it has one modality); a repeated id keeps its best entry. Ties: the better rank in its own list,
    then the raw score.
    """
    if scorers is not None:
        missing = sorted(g for g in lists if g not in scorers)
        if missing:
            raise ValueError(f"no scorer for modality group(s) {missing}")
    best: dict[str, Ranked] = {}
    for group, ranked in lists.items():
        for rank, (doc_id, raw) in enumerate(ranked):
            fused = 1.0 / (RRF_K + rank + 1) if scorers is None else float(scorers[group](raw))
            if not math.isfinite(fused):
                raise ValueError(f"fused score of {doc_id!r} is not finite")
            if doc_id not in best or fused > best[doc_id].fused:
                best[doc_id] = Ranked(doc_id, group, raw, fused, rank)
    return sorted(best.values(), key=lambda r: (-r.fused, r.rank, -r.raw))


def reserved_slots(n: int, groups: int, min_share: float) -> int:
    """Slots of an ``n``-candidate shortlist each of ``groups`` modalities is guaranteed (if it has candidates)."""
    if groups <= 0 or n <= 0:
        return 0
    return min(math.ceil(min_share * n), n // groups)


def shortlist(ranked: Sequence[Ranked], n: int, min_share: float) -> list[Ranked]:
    """The best ``n`` of ``ranked`` (best first, as ``fuse`` returns) such that every modality keeps at least
    ``reserved_slots`` of them (its own best ones, when it has that many); best fused score first."""
    groups: dict[str, list[Ranked]] = {}
    for r in ranked:
        groups.setdefault(r.group, []).append(r)
    reserve = reserved_slots(n, len(groups), min_share)
    chosen = {id(r) for members in groups.values() for r in members[:reserve]}
    for r in ranked:
        if len(chosen) >= n:
            break
        chosen.add(id(r))
    return [r for r in ranked if id(r) in chosen][:n]


def sample_rows(vectors: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """At most ``n`` rows of ``vectors``, chosen at random (seeded), as float32."""
    if len(vectors) > n:
        rows = np.sort(np.random.default_rng(seed).choice(len(vectors), size=n, replace=False))
        vectors = vectors[rows]
    return np.ascontiguousarray(vectors, dtype=np.float32)
