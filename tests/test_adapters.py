"""The two-step model adapters (prepare in the preprocessing thread, run in the model thread) give exactly what
sentence-transformers' own one-call APIs give, for every tiny model kind (real ST code, random weights)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image
from sentence_transformers import CrossEncoder, SentenceTransformer

from bench.support.images import make_image
from service.adapters import CrossEncoderScorer, SentenceTransformerEmbedder


def _images(n: int) -> list[Image.Image]:
    return [make_image(i, size=(40 + 8 * i, 32)) for i in range(n)]


def _texts() -> list[dict[str, Any]]:
    return [{"text": t} for t in ("a red car", "quarterly revenue by region, table and chart", "x")]


@pytest.mark.parametrize("model_attr", ["clip", "vlm_embedder"])
@pytest.mark.parametrize("input_type", ["query", "document"])
def test_embedder_matches_encode(tiny_models, model_attr: str, input_type: str) -> None:  # type: ignore[no-untyped-def]
    model = SentenceTransformer(str(getattr(tiny_models, model_attr)), device="cpu")
    adapter = SentenceTransformerEmbedder(model, "tiny")
    encode = model.encode_query if input_type == "query" else model.encode_document
    batches: list[tuple[str, list[Any]]] = [("text", _texts()), ("image", _images(3))]
    if "text+image" in adapter.modalities:
        batches.append(("text+image", [{"text": "chart", "image": im} for im in _images(2)]))
    for modality, inputs in batches:
        lane = (input_type, modality)
        got = np.stack(adapter.run(lane, adapter.prepare(lane, inputs)))
        want = encode(inputs, convert_to_numpy=True, batch_size=len(inputs))
        assert got.dtype == np.float32 and got.shape == (len(inputs), adapter.dimension)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_embedder_query_and_document_prompts_differ_where_the_model_has_them(tiny_models) -> None:  # type: ignore[no-untyped-def]
    model = SentenceTransformer(str(tiny_models.vlm_embedder), device="cpu")
    adapter = SentenceTransformerEmbedder(model, "tiny")
    inputs = _texts()
    q = np.stack(adapter.run(("query", "text"), adapter.prepare(("query", "text"), inputs)))
    d = np.stack(adapter.run(("document", "text"), adapter.prepare(("document", "text"), inputs)))
    assert model.prompts.get("query") != model.prompts.get("document")
    assert not np.allclose(q, d)


@pytest.mark.parametrize("model_attr", ["vlm_reranker", "text_reranker"])
def test_reranker_matches_predict(tiny_models, model_attr: str) -> None:  # type: ignore[no-untyped-def]
    model = CrossEncoder(str(getattr(tiny_models, model_attr)), device="cpu")
    adapter = CrossEncoderScorer(model, "tiny")
    text_only = adapter.modalities == ["text"]
    query: Any = "a red car" if text_only else {"text": "a red car"}
    docs: list[Any] = [t if text_only else {"text": t} for t in ("car", "a long page about revenue", "red")]
    groups: list[list[Any]] = [[(query, d) for d in docs]]
    if "image" in adapter.modalities:
        groups.append([(query, im) for im in _images(3)])
    for pairs in groups:
        got = adapter.run("lane", adapter.prepare("lane", pairs))
        want = model.predict(pairs, convert_to_numpy=True, batch_size=len(pairs))
        assert len(got) == len(pairs) and all(isinstance(s, float) for s in got)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("input_type", ["query", "document"])
def test_a_cpu_text_batch_runs_as_length_groups_with_the_same_vectors(tiny_models, input_type: str) -> None:  # type: ignore[no-untyped-def]
    model = SentenceTransformer(str(tiny_models.clip), device="cpu")
    adapter = SentenceTransformerEmbedder(model, "tiny")
    texts = [
        "x",
        "a red car",
        *[f"quarterly revenue by region, table and chart, page {i} of the report" for i in range(6)],
    ]
    lane = (input_type, "text")
    features = adapter.prepare(lane, [{"text": t} for t in texts])
    parts = getattr(features, "parts", None)
    assert parts is not None and len(parts) >= 2, "short and long texts were not split"
    assert sorted(i for idx, _ in parts for i in idx) == list(range(len(texts)))
    assert min(part["input_ids"].shape[1] for _, part in parts) < max(part["input_ids"].shape[1] for _, part in parts)
    got = np.stack(adapter.run(lane, features))
    encode = model.encode_query if input_type == "query" else model.encode_document
    np.testing.assert_allclose(got, encode(texts, convert_to_numpy=True, batch_size=len(texts)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_attr", ["vlm_reranker", "text_reranker"])
def test_cpu_text_pairs_run_as_length_groups_with_the_same_scores(tiny_models, model_attr: str) -> None:  # type: ignore[no-untyped-def]
    """A reranker's batch of text pairs pads to its longest pair like an embedder's texts: on CPU it runs as groups
    of similar length where the tokenizer pads on the right (the tiny text cross-encoder), as one pass where it pads
    on the left (the tiny Qwen2-VL reranker), and the scores are ``predict``'s either way."""
    model = CrossEncoder(str(getattr(tiny_models, model_attr)), device="cpu")
    adapter = CrossEncoderScorer(model, "tiny")
    text_only = adapter.modalities == ["text"]
    docs = ["x", "red", *[f"quarterly revenue by region, table and chart, page {i} of the report" for i in range(6)]]
    pairs: list[Any] = [("a red car", d) if text_only else ({"text": "a red car"}, {"text": d}) for d in docs]
    features = adapter.prepare("lane", pairs)
    parts = getattr(features, "parts", None)
    if model.tokenizer.padding_side == "right":
        assert parts is not None and len(parts) >= 2, "short and long pairs were not split"
        assert sorted(i for idx, _ in parts for i in idx) == list(range(len(pairs)))
        assert len({part["input_ids"].shape[1] for _, part in parts}) == len(parts)
    else:
        assert parts is None, "a left-padded batch was split (trimming the right would cut real tokens)"
    got = adapter.run("lane", features)
    want = model.predict(pairs, convert_to_numpy=True, batch_size=len(pairs))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    adapter.accelerated = True  # as on a GPU: one pass
    assert not hasattr(adapter.prepare("lane", pairs), "parts")


def test_an_accelerated_text_batch_stays_one_forward_pass(tiny_models) -> None:  # type: ignore[no-untyped-def]
    adapter = SentenceTransformerEmbedder(SentenceTransformer(str(tiny_models.clip), device="cpu"), "tiny")
    adapter.accelerated = True  # as on a GPU, where a batch of 8 costs little more than a batch of 1
    features = adapter.prepare(("query", "text"), [{"text": t} for t in ("x", "a red car " * 6)])
    assert not hasattr(features, "parts") and features["input_ids"].shape[0] == 2
