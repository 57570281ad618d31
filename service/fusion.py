"""Hybrid retrieval: fuse the vector and keyword candidate lists into one ranking.

Two fusions, chosen by measurement (``bench/hybrid_fusion.py``, numbers in ``bench/RESULTS.md``):

* ``coverage`` (default): ``score = norm_cos + keyword_weight * coverage ** 2``. ``norm_cos`` is the cosine
  min-max scaled over the vector candidates (0 for a document only keyword search found); ``coverage`` is the
  share of the query's terms (stemmed, stop words dropped) the document's text and OCR text contain, counted only
  from ``COVERAGE_FLOOR`` up (below it, 0). A query that quotes a page finds every term on it and keyword evidence
  decides; a paraphrase shares few terms with anything, so the dense ranking stands. Plain reciprocal rank fusion
  lets the best BM25 hit of a paraphrase (a distractor matching one generic word) outvote the dense ranking;
  without the floor, one-of-three-words matches still reorder the dense list a little (lite profile, screenshot
  set: paraphrase nDCG@10 0.797 vs 0.799 dense-only; with the floor, equal; quotes R@1 1.0 either way). Half the
  terms is not enough either: "which features we will build next year" shares "next" and "year" with a distractor,
  which a floor of 0.5 put above the roadmap slide that bge-small ranks first.
* ``rrf``: reciprocal rank fusion, ``sum(weight / (rrf_k + rank))`` over both lists (vector weight 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

Fusion = Literal["coverage", "rrf"]
DEFAULT_FUSION: Fusion = "coverage"
DEFAULT_KEYWORD_WEIGHT = {"coverage": 2.0, "rrf": 1.0}
COVERAGE_POWER = 2
COVERAGE_FLOOR = 0.6
"""Keyword coverage below this share of the query's terms counts as none: more than half of them must match
(measured on the screenshot set, bench/RESULTS.md: with all-MiniLM-L6-v2 floors 0.3 to 0.75 are equal; with
bge-small-en-v1.5, 0.5 costs one paraphrase at rank 1 and 0.51 to 0.8 keep hybrid equal to vector-only)."""
RRF_K = 60


@dataclass(frozen=True)
class Fused:
    id: str
    score: float
    vector_score: float | None
    keyword_score: float | None


def _order(scores: dict[str, float], first_seen: dict[str, int]) -> list[str]:
    return sorted(scores, key=lambda d: (-scores[d], first_seen[d]))


def fuse(
    vector: Sequence[tuple[str, float]],
    keyword: Sequence[tuple[str, float]],
    *,
    fusion: Fusion = DEFAULT_FUSION,
    keyword_weight: float | None = None,
    coverage: Callable[[str], float] | None = None,
    coverage_floor: float = COVERAGE_FLOOR,
    coverage_power: float = COVERAGE_POWER,
) -> list[Fused]:
    """One ranking of every candidate of both lists (each ``(id, score)``, best first), best first.

    ``coverage(id)`` is the share of query terms the document contains (needed by the ``coverage`` fusion);
    ``coverage_floor`` / ``coverage_power`` are there for ``bench/hybrid_fusion.py`` to replay alternatives.
    Ties keep the order in which candidates were first seen (vector list first).
    """
    weight = DEFAULT_KEYWORD_WEIGHT[fusion] if keyword_weight is None else keyword_weight
    cos = dict(vector)
    bm25 = dict(keyword)
    first_seen: dict[str, int] = {}
    for d, _ in [*vector, *keyword]:
        first_seen.setdefault(d, len(first_seen))
    scores: dict[str, float] = {}
    if fusion == "rrf":
        for weight_of_list, ranked in ((1.0, vector), (weight, keyword)):
            for rank, (d, _) in enumerate(ranked):
                scores[d] = scores.get(d, 0.0) + weight_of_list / (RRF_K + rank + 1)
    else:
        if coverage is None:
            raise ValueError("the coverage fusion needs a coverage function")
        lo, hi = (min(cos.values()), max(cos.values())) if cos else (0.0, 0.0)
        for d in first_seen:
            norm = (cos[d] - lo) / (hi - lo) if d in cos and hi > lo else (1.0 if d in cos else 0.0)
            share = coverage(d)
            scores[d] = norm + (weight * share**coverage_power if share >= coverage_floor else 0.0)
    return [Fused(d, scores[d], cos.get(d), bm25.get(d)) for d in _order(scores, first_seen)]
