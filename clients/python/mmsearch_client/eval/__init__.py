"""Retrieval evaluation: BEIR-style datasets, metrics, a synthetic screenshot set and ``mmsearch eval``.

See ``README.md`` in this directory. The metric functions (:mod:`mmsearch_client.eval.metrics`) are pure;
:func:`run_eval` drives a server through :class:`~mmsearch_client.Client`.
"""

from mmsearch_client.eval.dataset import Dataset, DatasetError, EvalItem, Issue, load_dataset
from mmsearch_client.eval.metrics import (
    DEFAULT_METRICS,
    aggregate,
    evaluate_query,
    ndcg_at_k,
    percentile,
    rank_by_score,
    recall_at_k,
    reciprocal_rank_at_k,
)
from mmsearch_client.eval.runner import TINY_WARNING, EvalOptions, run_eval

__all__ = [
    "DEFAULT_METRICS",
    "TINY_WARNING",
    "Dataset",
    "DatasetError",
    "EvalItem",
    "EvalOptions",
    "Issue",
    "aggregate",
    "evaluate_query",
    "load_dataset",
    "ndcg_at_k",
    "percentile",
    "rank_by_score",
    "recall_at_k",
    "reciprocal_rank_at_k",
    "run_eval",
]
