"""Calibration: per (query modality -> document modality) pair, a fitted map from a score to P(relevant).

Fitted on a labelled query set (``POST /calibrate``, ``mmsearch calibrate``): every candidate a query retrieves
in a modality is a sample, relevant when the set judges it so. The input of the map is the candidate's score
standardised within its modality for that query (``service.balance``: ``(raw - mean) / std`` over the modality's
documents), which removes the gap and the query's own offset; the output is a probability, comparable across
pairs, so one ``min_score`` means the same for text and image documents, and the fused order of a balanced
search ranks every modality on it.

Methods: ``platt`` (default: a logistic curve with Platt's smoothed targets; two numbers per pair, strictly
increasing, so the order within a modality is kept) and ``isotonic`` (a monotone step fit, interpolated; more
flexible, needs more data, ties within a step). Plain code: fitting runs in a worker thread.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np
from mmsearch_schema.wire import CalibrationInfo, CalibrationPair

Method = Literal["platt", "isotonic"]
METHODS: tuple[Method, ...] = ("platt", "isotonic")
FORMAT = 1
MIN_POSITIVES = 3
MIN_NEGATIVES = 3
MAX_POINTS = 256
"""Breakpoints kept of an isotonic fit (evenly thinned): what is stored and sent stays small."""
MAX_PAIRS = 64


class CalibrationError(ValueError):
    """Calibration data or a stored calibration is unusable; the message says why."""


def pair_key(query_modality: str, document_modality: str) -> str:
    return f"{query_modality}->{document_modality}"


@dataclass(frozen=True)
class PairMap:
    """A fitted map for one modality pair, with what it was fitted on."""

    method: Method
    params: dict[str, Any]
    """``platt``: ``{"a", "b"}`` of ``1 / (1 + exp(-(a x + b)))``; ``isotonic``: ``{"x": [...], "y": [...]}``."""
    samples: int
    positives: int

    def __call__(self, x: float) -> float:
        if self.method == "platt":
            z = self.params["a"] * x + self.params["b"]
            return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
        return float(np.interp(x, self.params["x"], self.params["y"]))

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, **self.params, "samples": self.samples, "positives": self.positives}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> PairMap:
        method = raw.get("method")
        samples, positives = raw.get("samples"), raw.get("positives")
        if not isinstance(samples, int) or not isinstance(positives, int):
            raise CalibrationError("a pair needs integer 'samples' and 'positives'")
        parse = _PARAMS.get(str(method))
        if parse is None:
            raise CalibrationError(f"unknown calibration method {method!r} (supported: {', '.join(METHODS)})")
        return cls(cast(Method, method), parse(raw), samples, positives)


def _platt_params(raw: Mapping[str, Any]) -> dict[str, Any]:
    a, b = raw.get("a"), raw.get("b")
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in (a, b)) or a <= 0:  # type: ignore[operator]
        raise CalibrationError("a platt pair needs finite 'a' > 0 and 'b'")
    return {"a": float(a), "b": float(b)}  # type: ignore[arg-type]


def _isotonic_params(raw: Mapping[str, Any]) -> dict[str, Any]:
    xs, ys = raw.get("x"), raw.get("y")
    if not isinstance(xs, list) or not isinstance(ys, list) or not 1 <= len(xs) == len(ys) <= MAX_POINTS:
        raise CalibrationError(f"an isotonic pair needs 'x' and 'y' of equal length 1..{MAX_POINTS}")
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y)) and np.all(np.diff(x) > 0)):
        raise CalibrationError("isotonic 'x' must be finite and strictly increasing, 'y' finite")
    if np.any(np.diff(y) < 0) or y.min() < 0 or y.max() > 1:
        raise CalibrationError("isotonic 'y' must be non-decreasing probabilities")
    return {"x": x.tolist(), "y": y.tolist()}


_PARAMS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "platt": _platt_params,
    "isotonic": _isotonic_params,
}
"""Each stored method's parameter check (``PairMap.from_json``)."""


def fit_platt(x: np.ndarray, relevant: np.ndarray) -> dict[str, float]:
    """Platt scaling: a logistic curve fitted to smoothed targets (``(N+ + 1) / (N+ + 2)`` and ``1 / (N- + 2)``),
    which stays finite on separable data; the slope is kept positive (a higher score never means less relevant)."""
    from scipy.optimize import minimize

    pos = int(relevant.sum())
    neg = len(relevant) - pos
    target = np.where(relevant, (pos + 1) / (pos + 2), 1 / (neg + 2))
    mean, sd = float(x.mean()), float(x.std()) or 1.0
    u = (x - mean) / sd  # fit on a unit scale, convert back

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = w[0] * u + w[1]
        p = 1.0 / (1.0 + np.exp(-z))
        nll = float(np.sum(np.logaddexp(0.0, z) - target * z))
        g = p - target
        return nll, np.array([float(g @ u), float(g.sum())])

    res = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B", bounds=[(1e-6, None), (None, None)])
    a_u, b_u = float(res.x[0]), float(res.x[1])
    return {"a": a_u / sd, "b": b_u - a_u * mean / sd}


def fit_isotonic(x: np.ndarray, relevant: np.ndarray) -> dict[str, list[float]]:
    """Isotonic regression of relevance on the score (scikit-learn), kept as at most ``MAX_POINTS`` breakpoints."""
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    model.fit(x, relevant.astype(float))
    xs, ys = np.asarray(model.X_thresholds_, dtype=float), np.asarray(model.y_thresholds_, dtype=float)
    if len(xs) > MAX_POINTS:
        keep = np.unique(np.linspace(0, len(xs) - 1, MAX_POINTS).round().astype(int))
        xs, ys = xs[keep], ys[keep]
    keep = np.concatenate([[True], np.diff(xs) > 0])  # strictly increasing x for interpolation
    return {"x": xs[keep].tolist(), "y": ys[keep].tolist()}


def fit_pair(x: Sequence[float], relevant: Sequence[bool], method: Method) -> PairMap:
    """Fit one pair's map; ``CalibrationError`` when there are too few relevant or non-relevant samples."""
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(relevant, dtype=bool)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise CalibrationError("scores and labels must be two lists of equal length")
    if not np.all(np.isfinite(xs)):
        raise CalibrationError("scores must be finite")
    pos = int(ys.sum())
    if pos < MIN_POSITIVES or len(ys) - pos < MIN_NEGATIVES:
        raise CalibrationError(
            f"{pos} relevant and {len(ys) - pos} non-relevant samples: at least {MIN_POSITIVES} and "
            f"{MIN_NEGATIVES} are needed"
        )
    params: dict[str, Any] = fit_platt(xs, ys) if method == "platt" else fit_isotonic(xs, ys)
    return PairMap(method, params, len(ys), pos)


@dataclass(frozen=True)
class Calibration:
    """A collection's calibration: one map per modality pair, and the set it was fitted on."""

    pairs: dict[str, PairMap]
    method: Method
    set_name: str
    queries: int
    created: str
    skipped: dict[str, str] = field(default_factory=dict)
    """Pairs seen in the set but not fitted, with why (too few relevant or non-relevant samples)."""

    def describe(self) -> CalibrationInfo:
        """What ``/collections`` and ``/calibrate`` show of it."""
        pairs = {k: CalibrationPair(samples=p.samples, positives=p.positives) for k, p in sorted(self.pairs.items())}
        return CalibrationInfo(
            set=self.set_name,
            queries=self.queries,
            method=self.method,
            created=self.created,
            pairs=pairs,
            skipped=dict(self.skipped),
        )

    def map_for(self, query_modality: str, document_modality: str) -> PairMap | None:
        return self.pairs.get(pair_key(query_modality, document_modality))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "method": self.method,
            "set": self.set_name,
            "queries": self.queries,
            "created": self.created,
            "pairs": {k: v.to_json() for k, v in sorted(self.pairs.items())},
            "skipped": dict(sorted(self.skipped.items())),
        }

    @classmethod
    def from_json(cls, raw: Any) -> Calibration:
        if not isinstance(raw, Mapping) or raw.get("format") != FORMAT:
            raise CalibrationError(f"not a format-{FORMAT} calibration")
        pairs = raw.get("pairs")
        if not isinstance(pairs, Mapping) or len(pairs) > MAX_PAIRS:
            raise CalibrationError(f"'pairs' must be an object of at most {MAX_PAIRS} pairs")
        method = raw.get("method")
        if method not in METHODS:
            raise CalibrationError(f"unknown calibration method {method!r}")
        skipped = raw.get("skipped") or {}
        return cls(
            pairs={str(k): PairMap.from_json(v) for k, v in pairs.items()},
            method=method,
            set_name=str(raw.get("set", "")),
            queries=int(raw.get("queries", 0)),
            created=str(raw.get("created", "")),
            skipped={str(k): str(v) for k, v in dict(skipped).items()},
        )


def fit(
    samples: Mapping[str, tuple[Sequence[float], Sequence[bool]]],
    *,
    method: Method,
    set_name: str,
    queries: int,
    created: str,
) -> Calibration:
    """Fit every pair of ``samples`` (``pair -> (scores, relevant)``); pairs with too little data are skipped and
    said so. ``CalibrationError`` when no pair can be fitted."""
    pairs: dict[str, PairMap] = {}
    skipped: dict[str, str] = {}
    for key, (x, relevant) in sorted(samples.items()):
        try:
            pairs[key] = fit_pair(x, relevant, method)
        except CalibrationError as e:
            skipped[key] = str(e)
    if not pairs:
        why = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "no samples"
        raise CalibrationError(f"no modality pair could be calibrated ({why})")
    return Calibration(pairs, method, set_name, queries, created, skipped)


PROPERTY = "mmsearch.calibration"
"""The collection property a calibration is stored under (``VectorIndex.write_property``), as JSON."""

Scorer = Callable[[float], float]


def load(raw: str | None) -> Calibration | None:
    """A stored calibration (``None``: none stored); ``CalibrationError`` when it cannot be read."""
    if not raw:
        return None
    try:
        return Calibration.from_json(json.loads(raw))
    except (ValueError, TypeError) as e:
        raise CalibrationError(f"stored calibration is unreadable: {e}") from None


def dump(calibration: Calibration) -> str:
    return json.dumps(calibration.to_json(), allow_nan=False, separators=(",", ":"))


def scorers(calibration: Calibration, query_modality: str, standardisers: Mapping[str, Scorer]) -> dict[str, Scorer]:
    """Raw cosine -> probability of relevance, per document modality the calibration covers for this query
    modality (``standardisers``: each modality's ``(raw - mean) / std`` for this query, ``service.balance``)."""
    out: dict[str, Scorer] = {}
    for modality, standardise in standardisers.items():
        pair = calibration.map_for(query_modality, modality)
        if pair is not None:
            out[modality] = _compose(pair, standardise)
    return out


def _compose(pair: PairMap, standardise: Scorer) -> Scorer:
    return lambda raw: pair(standardise(raw))


def add_samples(
    into: dict[str, tuple[list[float], list[bool]]],
    query_modality: str,
    scored: Mapping[str, Sequence[tuple[str, float]]],
    relevant: set[str],
    standardisers: Mapping[str, Scorer],
) -> None:
    """One labelled query's samples: ``scored`` holds, per document modality, ``(id, raw cosine)`` of the
    candidates drawn and of the relevant documents (each id once); every one is a sample of the
    (query modality -> document modality) pair, relevant when its id is in ``relevant``."""
    for modality, items in scored.items():
        xs, ys = into.setdefault(pair_key(query_modality, modality), ([], []))
        for doc_id, raw in items:
            xs.append(standardisers[modality](raw))
            ys.append(doc_id in relevant)
