"""Redundancy penalty: a vector candidate with many near-copies among the query's candidates moves down.

A dense text embedder scores every member of a family of templated documents ("Customer email about <topic>:
the order arrived late ...", "Invoice summary for <topic>: ...") almost alike, and a paraphrased query that shares
a topic word with one of them puts that one above the page it describes. Such documents are *hubs* for the query:
each lies close to many other candidates. Following hubness reduction (CSLS: a score less the document's mean
similarity to its nearest neighbours), each of the query's vector candidates loses ``weight`` times its mean cosine to
its ``neighbours`` most similar fellow candidates, and the candidates are ordered by ``cosine - penalty``.

Only the query's own candidates are compared (their stored vectors, fetched once per search), so the penalty
needs no collection statistics, does not depend on ingest order, and costs one ``(n, n)`` product for ``n``
candidates. Measured on the screenshot set (``bench/redundancy.py``, ``bench/RESULTS.md`` section 12): lite
(bge-small-en-v1.5) paraphrase R@1 0.846 -> 0.885 at weight 0.25 with 10 neighbours, end to end; in process,
every weight of 0.1 or 0.25 with 3 to 10 neighbours is at least as good as none on two seeds of the set, with 52 or
320 distractors (0.5 loses a query in two of twelve settings).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.index.base import IndexHit, VectorIndex

DEFAULT_NEIGHBOURS = 10


def penalties(vectors: np.ndarray, weight: float, neighbours: int = DEFAULT_NEIGHBOURS) -> np.ndarray:
    """``weight`` x each row's mean cosine to its ``neighbours`` most similar other rows (all others when there are
    fewer); zeros for fewer than two rows or a zero weight."""
    n = len(vectors)
    if n < 2 or weight == 0:
        return np.zeros(n, dtype=np.float32)
    unit = np.asarray(vectors, dtype=np.float32)
    unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    k = min(max(neighbours, 1), n - 1)
    nearest = np.partition(sims, n - k, axis=1)[:, n - k :]
    out: np.ndarray = (weight * nearest.mean(axis=1)).astype(np.float32)
    return out


@dataclass(frozen=True)
class Redundancy:
    """The penalty's settings (``MMSEARCH_REDUNDANCY_WEIGHT`` / ``_NEIGHBOURS``)."""

    weight: float
    neighbours: int = DEFAULT_NEIGHBOURS

    def penalise(self, index: VectorIndex, collection: str, hits: Sequence[IndexHit]) -> dict[str, float]:
        """Each hit's penalty, from the vectors the index holds for them (``VectorIndex.vectors``; a hit deleted
        meanwhile gets none)."""
        if len(hits) < 2 or self.weight == 0:
            return {h.id: 0.0 for h in hits}
        stored = index.vectors(collection, [h.id for h in hits])
        ids = [h.id for h in hits if h.id in stored]
        matrix = np.stack([stored[i] for i in ids]) if ids else np.zeros((0, 0), dtype=np.float32)
        found = penalties(matrix, self.weight, self.neighbours)
        out = {h.id: 0.0 for h in hits}
        out.update(zip(ids, found.tolist(), strict=True))
        return out
