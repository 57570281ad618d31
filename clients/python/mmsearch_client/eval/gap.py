"""A constructed modality gap: shift every vector of one modality by the same offset.

Real multimodal embedders place images and texts in cones apart from each other; a constructed gap reproduces
that on any embedding space (the tiny random test models included), with a known size, so that tests and
``mmsearch eval --gap`` can show what balanced retrieval and calibration recover. Pure Python (the client has
no numpy dependency).

Each vector ``v`` becomes ``normalise(v / |v| + noise * n_i + offset * u)`` where ``n_i`` is a seeded random unit
vector per document (``noise``: documents of one topic spread out, so relevance is not perfectly separable) and
``u`` is the same unit vector for every shifted document. By default ``u`` points away from the mean of the
unshifted vectors (the shifted modality sits in a cone of its own, as images do next to texts).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

__all__ = ["construct_gap", "gap_direction", "unit"]


def unit(v: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    if norm == 0 or not math.isfinite(norm):
        raise ValueError("cannot normalise a zero or non-finite vector")
    return [x / norm for x in v]


def _random_unit(rng: random.Random, dimension: int) -> list[float]:
    return unit([rng.gauss(0.0, 1.0) for _ in range(dimension)])


def gap_direction(vectors: Sequence[Sequence[float]], shifted: Sequence[bool], seed: int = 0) -> list[float]:
    """The offset direction: away from the mean of the unshifted vectors (a seeded random one if there are none,
    or if they average to zero)."""
    dimension = len(vectors[0])
    rest = [unit(v) for v, s in zip(vectors, shifted, strict=True) if not s]
    mean = [-sum(col) for col in zip(*rest, strict=True)] if rest else []
    if mean and any(abs(x) > 1e-9 for x in mean):
        return unit(mean)
    return _random_unit(random.Random(seed), dimension)


def construct_gap(
    vectors: Sequence[Sequence[float]],
    shifted: Sequence[bool],
    *,
    offset: float,
    noise: float = 0.0,
    seed: int = 0,
    direction: Sequence[float] | None = None,
) -> list[list[float]]:
    """The vectors with the gap built in (unit length): ``shifted[i]`` says whether vector ``i`` gets the offset.

    ``offset`` and ``noise`` are lengths relative to a unit vector (``offset=1``: as long as the vector itself).
    Deterministic for a seed.
    """
    if not vectors:
        return []
    if len(vectors) != len(shifted):
        raise ValueError("vectors and shifted must have the same length")
    if offset < 0 or noise < 0 or not math.isfinite(offset + noise):
        raise ValueError("offset and noise must be finite and >= 0")
    dimension = len(vectors[0])
    u = unit(direction) if direction is not None else gap_direction(vectors, shifted, seed)
    if len(u) != dimension:
        raise ValueError(f"direction has {len(u)} dimensions, the vectors {dimension}")
    rng = random.Random(seed + 1)
    out: list[list[float]] = []
    for v, s in zip(vectors, shifted, strict=True):
        if len(v) != dimension:
            raise ValueError("all vectors must have the same dimension")
        n = _random_unit(rng, dimension)
        base = unit(v)
        out.append(unit([x + noise * e + (offset * d if s else 0.0) for x, e, d in zip(base, n, u, strict=True)]))
    return out
