"""Unit tests of balanced retrieval's pure parts: ``service.balance`` (statistics, fusion, minimum share),
``service.calibration`` (Platt / isotonic fits, stored form) and the constructed gap
(``mmsearch_client.eval.gap``)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from mmsearch_client.eval.gap import construct_gap, gap_direction

from service import balance, calibration
from service.balance import GroupStats, Ranked, fuse, reserved_slots, shortlist, zscore_scorers
from service.calibration import Calibration, CalibrationError, PairMap, fit, fit_pair

# --- statistics and fusion --------------------------------------------------------------------------------------


def test_moments_are_the_mean_and_std_of_the_query_scores_over_the_sample() -> None:
    rng = np.random.default_rng(0)
    sample = rng.normal(size=(50, 8)).astype(np.float32)
    q = rng.normal(size=8).astype(np.float32)
    mean, sd = GroupStats(50, sample).moments(q)
    scores = sample @ q
    assert mean == pytest.approx(float(scores.mean()), rel=1e-5)
    assert sd == pytest.approx(float(scores.std(ddof=1)), rel=1e-5)


def test_moments_floor_the_std_of_a_degenerate_modality() -> None:
    one = GroupStats(1, np.ones((1, 4), dtype=np.float32) / 2)
    assert one.moments(np.ones(4, dtype=np.float32) / 2) == (pytest.approx(1.0), balance.SIGMA_FLOOR)
    empty = GroupStats(0, np.zeros((0, 4), dtype=np.float32))
    assert empty.moments(np.ones(4, dtype=np.float32)) == (0.0, 1.0)


def test_zscore_cancels_a_constant_offset_between_modalities() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=(200, 16)).astype(np.float32)
    q = rng.normal(size=16).astype(np.float32)
    offset = rng.normal(size=16).astype(np.float32)
    stats = {"text": GroupStats(200, base), "image": GroupStats(200, base + offset)}
    z = zscore_scorers(q, stats)
    raw_text = float(base[3] @ q)
    raw_image = float((base[3] + offset) @ q)
    assert raw_text != pytest.approx(raw_image)
    assert z["text"](raw_text) == pytest.approx(z["image"](raw_image), abs=1e-4)


def test_rrf_interleaves_lists_by_rank() -> None:
    lists = {"text": [("t1", 0.9), ("t2", 0.8)], "image": [("i1", 0.2), ("i2", 0.1)]}
    out = fuse(lists, None)
    assert [r.rank for r in out] == [0, 0, 1, 1]
    assert {out[0].id, out[1].id} == {"t1", "i1"}
    assert out[0].fused == pytest.approx(1 / (balance.RRF_K + 1))
    assert all(r.raw == dict(lists[r.group])[r.id] for r in out)


def test_fuse_orders_by_the_scorers_and_keeps_the_raw_score() -> None:
    lists = {"text": [("t1", 0.9), ("t2", 0.8)], "image": [("i1", 0.3), ("i2", 0.1)]}
    out = fuse(lists, {"text": lambda s: s, "image": lambda s: s + 0.55})
    assert [r.id for r in out] == ["t1", "i1", "t2", "i2"]
    assert [r.raw for r in out] == [0.9, 0.3, 0.8, 0.1]
    assert out[1].fused == pytest.approx(0.85)


def test_fuse_refuses_a_missing_scorer_and_non_finite_scores() -> None:
    with pytest.raises(ValueError, match="image"):
        fuse({"text": [("a", 1.0)], "image": [("b", 1.0)]}, {"text": lambda s: s})
    with pytest.raises(ValueError, match="finite"):
        fuse({"text": [("a", 1.0)]}, {"text": lambda s: math.inf})


def test_a_repeated_id_keeps_its_best_entry() -> None:
    out = fuse({"text": [("a", 0.1)], "image": [("a", 0.9)]}, {"text": lambda s: s, "image": lambda s: s})
    assert [(r.id, r.group, r.fused) for r in out] == [("a", "image", 0.9)]


def _ranked(group: str, scores: list[float]) -> list[Ranked]:
    return [Ranked(f"{group}{i}", group, s, s, i) for i, s in enumerate(scores)]


def test_shortlist_keeps_a_minimum_share_per_modality() -> None:
    text = _ranked("t", [0.9 - i * 0.01 for i in range(20)])
    image = _ranked("i", [0.2 - i * 0.01 for i in range(20)])
    ranked = sorted(text + image, key=lambda r: -r.fused)
    out = shortlist(ranked, 10, 0.2)
    assert len(out) == 10
    assert [r.id for r in out if r.group == "i"] == ["i0", "i1"]  # its own best two, though all others score more
    assert [r.id for r in out if r.group == "t"] == [f"t{i}" for i in range(8)]
    assert [r.fused for r in out] == sorted((r.fused for r in out), reverse=True)


def test_shortlist_gives_unused_reserved_slots_to_the_others() -> None:
    ranked = sorted(_ranked("t", [0.9, 0.8, 0.7, 0.6, 0.5]) + _ranked("i", [0.1]), key=lambda r: -r.fused)
    out = shortlist(ranked, 5, 0.4)
    assert [r.id for r in out] == ["t0", "t1", "t2", "t3", "i0"]
    assert shortlist(ranked, 3, 0.0) == ranked[:3]


def test_reserved_slots_never_exceed_an_equal_share() -> None:
    assert reserved_slots(50, 2, 0.2) == 10
    assert reserved_slots(50, 3, 0.5) == 16
    assert reserved_slots(10, 3, 0.05) == 1  # at least one slot for any positive share
    assert reserved_slots(1, 2, 0.2) == 0
    assert reserved_slots(10, 0, 0.2) == 0


def test_sample_rows_is_seeded_and_bounded() -> None:
    v = np.arange(100, dtype=np.float32).reshape(50, 2)
    a, b = balance.sample_rows(v, 10, seed=3), balance.sample_rows(v, 10, seed=3)
    assert a.shape == (10, 2) and np.array_equal(a, b)
    assert len({tuple(r) for r in a.tolist()}) == 10
    assert balance.sample_rows(v, 100).shape == (50, 2)


# --- the constructed gap ----------------------------------------------------------------------------------------


def test_constructed_gap_shifts_only_the_marked_vectors_by_one_offset() -> None:
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(6, 8)).tolist()
    shifted = [False, False, False, True, True, True]
    out = construct_gap(vectors, shifted, offset=2.0, seed=5)
    assert out == construct_gap(vectors, shifted, offset=2.0, seed=5)
    assert all(abs(math.hypot(*v) - 1.0) < 1e-9 for v in out)
    u = np.asarray(gap_direction(vectors, shifted))
    base = [np.asarray(v) / np.linalg.norm(v) for v in vectors]
    for i, v in enumerate(out):  # without noise: the unit vector plus (offset * u) for the shifted ones, normalised
        expected = base[i] + (2.0 * u if shifted[i] else 0)
        assert np.allclose(v, expected / np.linalg.norm(expected))
    mean_text = np.mean(base[:3], axis=0)
    assert float(u @ mean_text) < 0  # away from the unshifted cone


def test_constructed_gap_noise_spreads_documents_and_bad_arguments_are_refused() -> None:
    vectors = [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    a, b = construct_gap(vectors, [False, False], offset=0.0, noise=0.5, seed=1)
    assert a != b
    with pytest.raises(ValueError):
        construct_gap(vectors, [True], offset=1.0)
    with pytest.raises(ValueError):
        construct_gap(vectors, [True, True], offset=-1.0)
    with pytest.raises(ValueError):
        construct_gap(vectors, [True, True], offset=1.0, direction=[1.0, 0.0])


def test_balanced_fusion_recovers_the_relevant_image_the_gap_hides() -> None:
    """A constructed gap in-process: the raw top-10 holds no image; zscore fusion ranks the relevant one first of
    its modality and inside the top 10."""
    rng = np.random.default_rng(3)
    topics = 1.5 + rng.normal(size=(40, 16))  # like real embeddings, every text shares a common direction
    texts = [t + 0.3 * rng.normal(size=16) for t in topics]
    images = [t + 0.3 * rng.normal(size=16) for t in topics]
    vecs = np.asarray(construct_gap([*texts, *images], [False] * 40 + [True] * 40, offset=1.5, seed=0))
    text_v, image_v = vecs[:40].astype(np.float32), vecs[40:].astype(np.float32)
    q = (topics[7] / np.linalg.norm(topics[7])).astype(np.float32)
    raw = sorted(
        [
            *((f"t{i}", float(s)) for i, s in enumerate(text_v @ q)),
            *((f"i{i}", float(s)) for i, s in enumerate(image_v @ q)),
        ],
        key=lambda x: -x[1],
    )
    assert not any(d.startswith("i") for d, _ in raw[:10])
    lists = {
        "text": sorted(((f"t{i}", float(s)) for i, s in enumerate(text_v @ q)), key=lambda x: -x[1]),
        "image": sorted(((f"i{i}", float(s)) for i, s in enumerate(image_v @ q)), key=lambda x: -x[1]),
    }
    stats = {"text": GroupStats(40, text_v), "image": GroupStats(40, image_v)}
    out = shortlist(fuse(lists, zscore_scorers(q, stats)), 10, 0.2)
    ids = [r.id for r in out]
    assert "i7" in ids and "t7" in ids
    assert ids.index("i7") < 3


# --- calibration ------------------------------------------------------------------------------------------------


def test_platt_recovers_a_logistic_relation() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=4000)
    y = rng.random(4000) < 1 / (1 + np.exp(-(3.0 * x - 1.0)))
    m = fit_pair(x.tolist(), y.tolist(), "platt")
    assert m.params["a"] == pytest.approx(3.0, rel=0.15)
    assert m.params["b"] == pytest.approx(-1.0, abs=0.2)
    assert (m.samples, m.positives) == (4000, int(y.sum()))
    assert m(1 / 3) == pytest.approx(0.5, abs=0.05)


def test_platt_stays_finite_and_increasing_on_separable_or_inverted_data() -> None:
    sep = fit_pair([0.1, 0.2, 0.3, 0.7, 0.8, 0.9], [False, False, False, True, True, True], "platt")
    assert math.isfinite(sep.params["a"]) and sep.params["a"] > 0
    assert sep(0.9) > 0.6 > 0.4 > sep(0.1)
    inv = fit_pair([0.1, 0.2, 0.3, 0.7, 0.8, 0.9], [True, True, True, False, False, False], "platt")
    assert inv.params["a"] > 0 and inv(0.9) >= inv(0.1)  # never "higher score, less relevant"


def test_isotonic_is_monotone_bounded_and_small() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=5000)
    y = rng.random(5000) < 1 / (1 + np.exp(-2 * x))
    m = fit_pair(x.tolist(), y.tolist(), "isotonic")
    xs, ys = m.params["x"], m.params["y"]
    assert len(xs) <= calibration.MAX_POINTS
    assert all(b > a for a, b in itertools.pairwise(xs))
    assert all(b >= a for a, b in itertools.pairwise(ys)) and ys[0] >= 0 and ys[-1] <= 1
    assert m(-3.0) < 0.2 < 0.8 < m(3.0)


def test_fit_skips_pairs_with_too_little_data_and_says_why() -> None:
    good = ([0.1, 0.2, 0.3, 0.6, 0.7, 0.8], [False, False, False, True, True, True])
    cal = fit(
        {"text->text": good, "text->image": ([0.5, 0.6], [True, False])},
        method="platt",
        set_name="val",
        queries=3,
        created="2026-12-03",
    )
    assert list(cal.pairs) == ["text->text"]
    assert "text->image" in cal.skipped and "relevant" in cal.skipped["text->image"]
    with pytest.raises(CalibrationError, match="no modality pair"):
        fit({"text->image": ([0.5], [True])}, method="platt", set_name="v", queries=1, created="")
    with pytest.raises(CalibrationError, match="finite"):
        fit_pair([0.1, math.nan, 0.3, 0.4, 0.5, 0.6], [True, True, True, False, False, False], "platt")


def test_calibration_round_trips_through_json_and_refuses_tampered_forms() -> None:
    good = ([0.1, 0.2, 0.3, 0.6, 0.7, 0.8], [False, False, False, True, True, True])
    for method in calibration.METHODS:
        cal = fit({"text->image": good}, method=method, set_name="val", queries=2, created="t")
        again = Calibration.from_json(cal.to_json())
        assert again == cal
        assert again.map_for("text", "image") is not None and again.map_for("image", "text") is None
    bad_forms = [
        {"method": "platt", "a": -1.0, "b": 0.0, "samples": 1, "positives": 1},
        {"method": "platt", "a": math.inf, "b": 0.0, "samples": 1, "positives": 1},
        {"method": "isotonic", "x": [0.2, 0.1], "y": [0.1, 0.2], "samples": 1, "positives": 1},
        {"method": "isotonic", "x": [0.1, 0.2], "y": [0.5, 0.1], "samples": 1, "positives": 1},
        {"method": "magic", "samples": 1, "positives": 1},
        {"method": "platt", "a": 1.0, "b": 0.0},
    ]
    for form in bad_forms:
        with pytest.raises(CalibrationError):
            PairMap.from_json(form)
    with pytest.raises(CalibrationError):
        Calibration.from_json({"format": 99})
    with pytest.raises(CalibrationError):
        Calibration.from_json({"format": 1, "method": "platt", "pairs": {f"p{i}": {} for i in range(100)}})


def test_a_stored_calibration_loads_back_and_maps_raw_cosine_through_the_modality_standardiser() -> None:
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(2, 1, 40), rng.normal(0, 1, 200)])
    y = np.concatenate([np.ones(40, bool), np.zeros(200, bool)])
    samples = {"text->text": (x.tolist(), y.tolist()), "text->image": (x.tolist(), y.tolist())}
    calib = fit(samples, method="platt", set_name="s", queries=5, created="2026-12-03T00:00:00+00:00")
    loaded = calibration.load(calibration.dump(calib))
    assert loaded is not None and loaded.to_json() == calib.to_json()
    assert calibration.load(None) is None and calibration.load("") is None
    with pytest.raises(CalibrationError, match="unreadable"):
        calibration.load("{not json")
    # the same standardised score gives the same probability whatever the raw scale of the modality
    standardisers = {"text": lambda raw: (raw - 0.8) / 0.05, "image": lambda raw: (raw - 0.2) / 0.01, "audio": float}
    scorers = calibration.scorers(loaded, "text", standardisers)
    assert set(scorers) == {"text", "image"}  # no audio pair fitted: not mapped
    assert scorers["text"](0.9) == pytest.approx(scorers["image"](0.22))
    assert scorers["image"](0.23) > scorers["image"](0.22)  # order within a modality kept
    assert calibration.scorers(loaded, "image", standardisers) == {}  # no image-query pairs
    info = loaded.describe()
    assert info.set == "s" and info.pairs["text->image"].positives == 40


def test_samples_are_collected_per_pair_with_relevance_from_the_labels() -> None:
    into: dict[str, tuple[list[float], list[bool]]] = {}
    scored = {"text": [("a", 0.9), ("b", 0.5)], "image": [("c", 0.3)]}
    calibration.add_samples(into, "text", scored, {"a", "c"}, {"text": lambda r: r * 10, "image": lambda r: r})
    assert into == {"text->text": ([9.0, 5.0], [True, False]), "text->image": ([0.3], [True])}
