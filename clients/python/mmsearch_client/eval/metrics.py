"""Retrieval metrics: pure functions of a ranking and the relevance judgements (no I/O, no server).

Conventions (the same as ``trec_eval`` / BEIR unless said otherwise):

* A **ranking** is a sequence of document ids, best first. A repeated id counts only where it first appears.
* **Ties.** A ranking is taken exactly in the order given: documents with equal scores are *not* re-ordered,
  shuffled or averaged over. The evaluator passes the hits in the order the server returned them (the server
  sorts by score, keeping the retrieval order among equal scores). :func:`rank_by_score` turns ``(id, score)``
  pairs into a ranking by a stable sort, so equal scores also keep their given order.
* **Judgements** (``qrels``) map a document id to a graded relevance; a grade ``> 0`` is relevant, ``<= 0``
  (or absent) is not.
* **Missing judgements.** A query with no relevant document has undefined recall, nDCG and reciprocal rank:
  the per-query functions return ``None`` and :func:`aggregate` leaves it out of every average and counts it.
* ``recall@k`` = relevant documents in the top ``k`` / all relevant documents of the query.
* ``nDCG@k`` uses linear gain: ``DCG = sum(grade_i / log2(i + 1))`` over ranks ``i = 1..k``, divided by the DCG
  of the ideal ranking (every judged relevant document, by grade, cut at ``k``).
* ``MRR@k`` = ``1 / rank`` of the first relevant document if it is in the top ``k``, else 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_METRICS",
    "Aggregate",
    "aggregate",
    "dedupe",
    "evaluate_query",
    "first_relevant_rank",
    "ndcg_at_k",
    "percentile",
    "rank_by_score",
    "recall_at_k",
    "reciprocal_rank_at_k",
    "summarize",
]

Qrels = Mapping[str, float]
"""The judgements of one query: document id -> graded relevance (``> 0`` relevant)."""

DEFAULT_METRICS: tuple[str, ...] = ("recall@1", "recall@5", "recall@10", "ndcg@10", "mrr@10")


def rank_by_score(scored: Iterable[tuple[str, float]]) -> list[str]:
    """Ids sorted by score, highest first; equal scores keep their given order (stable sort)."""
    return [doc_id for doc_id, _ in sorted(scored, key=lambda pair: -pair[1])]


def dedupe(ranking: Iterable[str]) -> list[str]:
    """The ranking with every repeated id dropped after its first (best) position."""
    seen: set[str] = set()
    out: list[str] = []
    for doc_id in ranking:
        if doc_id not in seen:
            seen.add(doc_id)
            out.append(doc_id)
    return out


def _relevant(qrels: Qrels) -> dict[str, float]:
    return {d: g for d, g in qrels.items() if g > 0}


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def recall_at_k(ranking: Sequence[str], qrels: Qrels, k: int) -> float | None:
    """Share of the relevant documents found in the top ``k``; ``None`` when nothing is relevant."""
    _check_k(k)
    relevant = _relevant(qrels)
    if not relevant:
        return None
    found = sum(1 for d in dedupe(ranking)[:k] if d in relevant)
    return found / len(relevant)


def ndcg_at_k(ranking: Sequence[str], qrels: Qrels, k: int) -> float | None:
    """Normalised discounted cumulative gain at ``k`` (linear gain); ``None`` when nothing is relevant."""
    _check_k(k)
    relevant = _relevant(qrels)
    if not relevant:
        return None
    dcg = sum(relevant.get(d, 0.0) / math.log2(i + 2) for i, d in enumerate(dedupe(ranking)[:k]))
    ideal = sorted(relevant.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg


def first_relevant_rank(ranking: Sequence[str], qrels: Qrels) -> int | None:
    """1-based rank of the first relevant document, ``None`` if no relevant document was retrieved."""
    relevant = _relevant(qrels)
    for i, d in enumerate(dedupe(ranking), 1):
        if d in relevant:
            return i
    return None


def reciprocal_rank_at_k(ranking: Sequence[str], qrels: Qrels, k: int) -> float | None:
    """``1 / rank`` of the first relevant document within the top ``k`` (else 0); ``None`` if nothing is relevant."""
    _check_k(k)
    if not _relevant(qrels):
        return None
    rank = first_relevant_rank(ranking, qrels)
    return 0.0 if rank is None or rank > k else 1.0 / rank


def _metric(name: str, ranking: Sequence[str], qrels: Qrels) -> float | None:
    kind, _, k_text = name.partition("@")
    try:
        k = int(k_text)
    except ValueError:
        raise ValueError(f"unknown metric {name!r}: expected recall@K, ndcg@K or mrr@K") from None
    if kind == "recall":
        return recall_at_k(ranking, qrels, k)
    if kind == "ndcg":
        return ndcg_at_k(ranking, qrels, k)
    if kind == "mrr":
        return reciprocal_rank_at_k(ranking, qrels, k)
    raise ValueError(f"unknown metric {name!r}: expected recall@K, ndcg@K or mrr@K")


def evaluate_query(
    ranking: Sequence[str], qrels: Qrels, metrics: Sequence[str] = DEFAULT_METRICS
) -> dict[str, float] | None:
    """Every metric of one query (names like ``"recall@5"``), or ``None`` when the query has no relevant document."""
    if not _relevant(qrels):
        return None
    out: dict[str, float] = {}
    for name in metrics:
        value = _metric(name, ranking, qrels)
        assert value is not None
        out[name] = value
    return out


@dataclass(slots=True)
class Aggregate:
    """Mean metrics over the evaluated queries, with what was left out and why."""

    means: dict[str, float] = field(default_factory=dict)
    evaluated: int = 0
    """Queries in the averages."""
    missing_judgements: int = 0
    """Queries with a ranking but no relevant judgement: excluded from the averages."""
    missing_rankings: int = 0
    """Judged queries without a ranking (e.g. the search failed): excluded from the averages."""
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "metrics": dict(self.means),
            "queries": self.evaluated,
            "missing_judgements": self.missing_judgements,
            "missing_rankings": self.missing_rankings,
        }


def aggregate(
    rankings: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Qrels],
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> Aggregate:
    """Average ``metrics`` over the queries that have both a ranking and at least one relevant document.

    ``rankings``: query id -> ranking. ``qrels``: query id -> judgements. A ranked query without a relevant
    judgement counts in ``missing_judgements``; a query with relevant judgements but no ranking counts in
    ``missing_rankings`` (an empty ranking *is* a ranking: it scores 0). Neither enters the averages.
    """
    out = Aggregate()
    sums = dict.fromkeys(metrics, 0.0)
    for qid, ranking in rankings.items():
        scores = evaluate_query(ranking, qrels.get(qid, {}), metrics)
        if scores is None:
            out.missing_judgements += 1
            continue
        out.per_query[qid] = scores
        out.evaluated += 1
        for name, value in scores.items():
            sums[name] += value
    out.missing_rankings = sum(1 for qid, q in qrels.items() if qid not in rankings and _relevant(q))
    if out.evaluated:
        out.means = {name: total / out.evaluated for name, total in sums.items()}
    return out


def percentile(values: Sequence[float], p: float) -> float | None:
    """The ``p``-th percentile (0-100) by linear interpolation between closest ranks; ``None`` if no values."""
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {p}")
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * p / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """``n``, ``min``, ``median`` and ``max`` of ``values`` (``None`` statistics when empty)."""
    if not values:
        return {"n": 0, "min": None, "median": None, "max": None}
    return {"n": len(values), "min": min(values), "median": percentile(values, 50), "max": max(values)}
