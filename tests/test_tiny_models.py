"""Tests of the tiny random-weight model fixtures (service/tiny.py): build, size, determinism, caching."""

from __future__ import annotations

import json
import math
import multiprocessing
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from service.tiny import (
    TINY_FORMAT,
    TinyModels,
    build_tiny_audio_embedder,
    build_tiny_clip,
    build_tiny_text_reranker,
    build_tiny_video_embedder,
    build_tiny_video_reranker,
    build_tiny_vlm_embedder,
    build_tiny_vlm_reranker,
    ensure_tiny_av_models,
    ensure_tiny_models,
)

torch.set_num_threads(1)

NAMES = ("clip", "vlm_reranker", "text_reranker", "vlm_embedder")
BUILDERS = {
    "clip": build_tiny_clip,
    "vlm_reranker": build_tiny_vlm_reranker,
    "text_reranker": build_tiny_text_reranker,
    "vlm_embedder": build_tiny_vlm_embedder,
}


def _image(seed: int, size: tuple[int, int] = (40, 56)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(path.rglob("*.safetensors")):
        for key, value in load_file(str(file)).items():
            tensors[f"{file.relative_to(path)}:{key}"] = value
    return tensors


def _mtimes(models: TinyModels) -> dict[str, int]:
    out = {}
    for name in NAMES:
        model_dir: Path = getattr(models, name)
        for f in [model_dir, *model_dir.rglob("*")]:
            out[str(f)] = f.stat().st_mtime_ns
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    return ensure_tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def clip(models: TinyModels) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(models.clip), device="cpu")


@pytest.fixture(scope="module")
def vlm(models: TinyModels) -> Any:
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(models.vlm_reranker), device="cpu")


@pytest.fixture(scope="module")
def text_reranker(models: TinyModels) -> Any:
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(models.text_reranker), device="cpu")


@pytest.fixture(scope="module")
def embedder(models: TinyModels) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(models.vlm_embedder), device="cpu")


def test_layout_and_sizes(models: TinyModels, tmp_path: Path) -> None:
    root = models.clip.parent
    assert {getattr(models, name).name for name in NAMES} == set(NAMES)
    for name in NAMES:
        model_dir = getattr(models, name)
        assert model_dir == root / name
        assert 0 < _dir_bytes(model_dir) < 1_000_000, name
        assert "RANDOM WEIGHTS" in (model_dir / "README.md").read_text()
    assert not list(root.glob(".building-*")), "temporary build dirs left behind"


def test_builders_are_bit_reproducible(models: TinyModels, clip: Any, embedder: Any, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    for name, build in BUILDERS.items():
        again = build(tmp_path / name)
        first, second = _tensors(getattr(models, name)), _tensors(again)
        assert first and first.keys() == second.keys(), name
        for key in first:
            assert first[key].dtype == second[key].dtype and torch.equal(first[key], second[key]), (name, key)

    clip2 = SentenceTransformer(str(tmp_path / "clip"), device="cpu")
    texts = [{"text": "a red cat"}, {"text": "a blue car"}]
    images = [_image(1), _image(2)]
    np.testing.assert_array_equal(clip.encode_query(texts), clip2.encode_query(texts))
    np.testing.assert_array_equal(clip.encode_document(images), clip2.encode_document(images))

    embedder2 = SentenceTransformer(str(tmp_path / "vlm_embedder"), device="cpu")
    mixed = [texts[0], images[0], {"text": "a caption", "image": images[1]}]
    np.testing.assert_array_equal(embedder.encode_query(mixed), embedder2.encode_query(mixed))
    np.testing.assert_array_equal(embedder.encode_document(mixed), embedder2.encode_document(mixed))


def test_clip_encodes_text_and_images(clip: Any) -> None:
    assert clip.get_embedding_dimension() == 16
    assert clip.supports("text") and clip.supports("image")
    assert not clip.supports(("image", "text")), "CLIP cannot embed a combined text+image input"

    texts = [{"text": "a photo of a cat"}, {"text": "a dog"}, {"text": "ünïcödé ✓ 漢字"}]
    images = [_image(3), _image(4, (20, 90)), _image(5, (64, 64)).convert("L").convert("RGB")]
    for encode in (clip.encode_query, clip.encode_document):
        t = encode(texts)
        i = encode(images)
        assert t.shape == (3, 16) and i.shape == (3, 16)
        assert np.isfinite(t).all() and np.isfinite(i).all()
        assert not np.allclose(t[0], t[1]) and not np.allclose(i[0], i[1])
    # No prompts: query and document embeddings of the same input coincide.
    np.testing.assert_allclose(clip.encode_query(texts), clip.encode_document(texts), rtol=1e-6, atol=1e-6)
    # Batching does not change a text's embedding (padding is masked).
    np.testing.assert_allclose(clip.encode_query(texts[:1])[0], clip.encode_query(texts)[0], rtol=1e-5, atol=1e-5)


def test_vlm_reranker_scores_every_modality_pairing(vlm: Any) -> None:
    assert vlm.supports("text") and vlm.supports("image") and vlm.supports(("image", "text"))
    img_a, img_b = _image(6), _image(7, (100, 30))
    pairs = [
        ({"text": "a cat"}, {"text": "a cat sitting on a mat"}),
        ({"text": "a cat"}, img_a),
        (img_b, {"text": "a caption"}),
        ({"text": "a cat"}, {"text": "a caption", "image": img_a}),
        ({"text": "query", "image": img_b}, img_a),
    ]
    scores = vlm.predict(pairs)
    assert len(scores) == len(pairs)
    for score in scores:
        assert math.isfinite(float(score)) and 0.0 < float(score) < 1.0
    assert len({float(s) for s in scores}) > 1
    # One pair alone scores like it does inside the mixed batch.
    assert float(vlm.predict([pairs[1]])[0]) == pytest.approx(float(scores[1]), abs=1e-4)


def test_vlm_embedder_encodes_text_images_and_combined(embedder: Any) -> None:
    assert embedder.get_embedding_dimension() == 32
    assert embedder.supports("text") and embedder.supports("image") and embedder.supports(("image", "text"))

    texts = [{"text": "a photo of a cat"}, {"text": "a dog"}, {"text": "ünïcödé ✓ 漢字"}]
    images = [_image(3), _image(4, (20, 90)), _image(5, (64, 64)).convert("L").convert("RGB")]
    combined = [{"text": "a cat", "image": images[0]}, {"text": "a cat", "image": images[1]}]
    for encode in (embedder.encode_query, embedder.encode_document):
        for inputs in (texts, images, combined):
            emb = encode(inputs)
            assert emb.shape == (len(inputs), 32) and np.isfinite(emb).all()
            np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
            assert not np.allclose(emb[0], emb[1])
    # The combined input is neither its text nor its image alone.
    text_only, image_only, both = embedder.encode_document([{"text": "a cat"}, images[0], combined[0]])
    assert not np.allclose(both, text_only) and not np.allclose(both, image_only)


def test_vlm_embedder_mixed_batch_matches_separate_encodes(embedder: Any) -> None:
    inputs = [
        {"text": "a red cat"},
        _image(10),
        {"text": "a much longer caption, to make this row the longest in the batch", "image": _image(11, (100, 30))},
        {"text": "x"},
        _image(12, (64, 64)),
        {"text": "dog", "image": _image(13, (24, 24))},
    ]
    for encode in (embedder.encode_query, embedder.encode_document):
        batch = encode(inputs)
        alone = np.stack([encode([item])[0] for item in inputs])
        diff = float(np.abs(batch - alone).max())
        assert diff <= 1e-5, f"{encode.__name__}: mixed batch differs from separate encodes by {diff}"


def test_vlm_embedder_query_and_document_prompts_differ(embedder: Any) -> None:
    assert set(embedder.prompts) >= {"query", "document"}
    for item in ({"text": "a red cat"}, _image(14), {"text": "a red cat", "image": _image(14)}):
        query, document = embedder.encode_query([item])[0], embedder.encode_document([item])[0]
        assert float(np.abs(query - document).max()) > 1e-3, item


def test_text_reranker_scores_text_pairs(text_reranker: Any) -> None:
    assert text_reranker.supports("text") and not text_reranker.supports("image")
    scores = text_reranker.predict([("a red cat", "a photo of a cat"), ("a car", "the blue dog"), ("x", "")])
    assert len(scores) == 3
    assert all(math.isfinite(float(s)) and 0.0 < float(s) < 1.0 for s in scores)
    assert len({float(s) for s in scores}) > 1


def _ensure_in_child(root: str, barrier: Any) -> dict[str, str]:
    torch.set_num_threads(1)
    barrier.wait(timeout=60)
    models = ensure_tiny_models(Path(root))
    return {name: str(getattr(models, name)) for name in NAMES}


def test_ensure_is_process_safe_and_cached(models: TinyModels, tmp_path: Path) -> None:
    from sentence_transformers import CrossEncoder, SentenceTransformer

    root = tmp_path / "shared"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Manager().Barrier(2)  # two builders racing for every model: each child imports torch (~8 CPU-s)
    with ctx.Pool(2) as pool:
        results = pool.starmap(_ensure_in_child, [(str(root), barrier)] * 2)
    built = root / f"v{TINY_FORMAT}"
    assert all(r == {name: str(built / name) for name in NAMES} for r in results)
    assert not list(built.glob(".building-*"))

    cached = ensure_tiny_models(root)
    before = _mtimes(cached)
    start = time.perf_counter()
    again = ensure_tiny_models(root)
    assert time.perf_counter() - start < 0.5
    assert again == cached
    assert _mtimes(again) == before, "second call rebuilt a model"

    for name in NAMES:  # the racing builds produced the same bits as the single-process build
        first, raced = _tensors(getattr(models, name)), _tensors(built / name)
        assert first.keys() == raced.keys() and all(torch.equal(first[k], raced[k]) for k in first), name

    assert SentenceTransformer(str(again.clip), device="cpu").encode_query([{"text": "hi"}]).shape == (1, 16)
    embedder = SentenceTransformer(str(again.vlm_embedder), device="cpu")
    assert embedder.encode_document([{"text": "hi", "image": _image(8)}]).shape == (1, 32)
    vlm = CrossEncoder(str(again.vlm_reranker), device="cpu")
    assert 0.0 < float(vlm.predict([({"text": "q"}, _image(8))])[0]) < 1.0
    text = CrossEncoder(str(again.text_reranker), device="cpu")
    assert 0.0 < float(text.predict([("q", "d")])[0]) < 1.0


def test_abandoned_partial_build_is_never_used(tmp_path: Path) -> None:
    root = tmp_path / "root"
    built = root / f"v{TINY_FORMAT}"
    (built / "clip").mkdir(parents=True)
    (built / "clip" / "config.json").write_text("{half-written")  # no completion marker
    (built / ".building-clip-dead").mkdir()
    models = ensure_tiny_models(root)
    assert models.clip == built / "clip"
    assert (models.clip / "model.safetensors").is_file()
    assert json.loads((models.clip / "config.json").read_text())["projection_dim"] == 16
    assert not list(built.glob(".building-*"))


# --- audio and video embedders (issue #21) -------------------------------------------------------------------


@pytest.fixture(scope="module")
def av_models(models: TinyModels) -> Any:
    return ensure_tiny_av_models(models.clip.parent.parent)  # the same root (v<TINY_FORMAT> is added again)


def _clip_audio(seed: int, n: int) -> dict[str, Any]:
    samples = (0.1 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)
    return {"audio": {"array": samples, "sampling_rate": 16_000}}


def test_audio_embedder_is_audio_capable_by_sentence_transformers_own_account(av_models: Any, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    assert av_models.audio_embedder.parent == av_models.video_embedder.parent
    assert 0 < _dir_bytes(av_models.audio_embedder) < 1_000_000
    assert "RANDOM WEIGHTS" in (av_models.audio_embedder / "README.md").read_text()
    model = SentenceTransformer(str(av_models.audio_embedder), device="cpu")
    assert model.modalities == ["audio", ("audio", "text")]
    assert model.supports("audio") and not model.supports("text") and not model.supports("image")
    clips = [_clip_audio(1, 16_000), _clip_audio(2, 16_000)]
    emb = model.encode_document(clips)
    assert emb.shape == (2, 32) and np.all(np.isfinite(emb))
    assert np.abs(emb[0] - emb[1]).max() > 1e-3, "different clips, different vectors"
    with pytest.raises(ValueError, match="Modality 'text' is not supported"):
        model.encode_document(["some text"])
    again = SentenceTransformer(str(build_tiny_audio_embedder(tmp_path / "audio")), device="cpu")
    first, second = _tensors(av_models.audio_embedder), _tensors(tmp_path / "audio")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    np.testing.assert_array_equal(again.encode_document(clips), emb)


def test_audio_padding_changes_a_clip_vector(av_models: Any) -> None:
    """Why the Embedder batches audio clips by length (service.adapters): mean pooling reads no frame mask, so a
    clip padded to a longer batch-mate's length gets another vector; clips of one length batch exactly."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(av_models.audio_embedder), device="cpu")
    short, long_, same = _clip_audio(1, 8_000), _clip_audio(2, 16_000), _clip_audio(3, 8_000)
    alone = model.encode_document([short])[0]
    assert np.abs(model.encode_document([short, long_])[0] - alone).max() > 1e-3
    assert np.abs(model.encode_document([short, same])[0] - alone).max() <= 1e-6


def test_video_embedder_encodes_video_and_pairs(av_models: Any, models: TinyModels, embedder: Any) -> None:
    from sentence_transformers import SentenceTransformer

    from service.adapters import embedder_modalities

    model = SentenceTransformer(str(av_models.video_embedder), device="cpu")
    assert model.supports("video") and model.supports(("text", "video"))
    frames = np.random.default_rng(4).integers(0, 256, (4, 32, 48, 3), dtype=np.uint8)
    video = {"video": {"array": frames, "video_metadata": None}}
    mixed = [video, {"text": "a clip", "video": frames}, {"text": "only text"}, _image(5)]
    emb = model.encode_document(mixed)
    assert emb.shape == (4, 32) and np.all(np.isfinite(emb))
    for i, x in enumerate(mixed):  # a mixed batch gives each input its own vector
        assert np.abs(model.encode_document([x])[0] - emb[i]).max() <= 1e-5
    # the same weights as the tiny VLM embedder: only the chat template differs (text and images agree)
    np.testing.assert_allclose(embedder.encode_document(mixed[2:]), emb[2:], atol=1e-6)
    assert _tensors(models.vlm_embedder).keys() == _tensors(av_models.video_embedder).keys()
    # the VLM embedder declares video too, but its template has no video branch: the Embedder does not serve it
    assert embedder.supports("video")
    with pytest.raises(ValueError):
        embedder.encode_document([video])
    assert embedder_modalities(embedder) == ["text", "image", "text+image"]
    assert embedder_modalities(model) == ["text", "image", "video", "text+image", "text+video"]


def test_video_embedder_is_bit_reproducible(av_models: Any, tmp_path: Path) -> None:
    first, second = _tensors(av_models.video_embedder), _tensors(build_tiny_video_embedder(tmp_path / "video"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_video_reranker_scores_text_against_video(av_models: Any, models: TinyModels, vlm: Any) -> None:
    """sentence-transformers loads the tiny video reranker as video-capable and scores (text, video) pairs given
    bare frames (``ModelInput.to_pair_st``); the image reranker, same weights, declares video but cannot render it."""
    from sentence_transformers import CrossEncoder

    from service.adapters import reranker_modalities

    model = CrossEncoder(str(av_models.video_reranker), device="cpu")
    assert model.supports("video") and model.supports(("text", "video"))
    frames = np.random.default_rng(5).integers(0, 256, (4, 32, 48, 3), dtype=np.uint8)
    pairs = [
        ({"text": "a clip"}, {"video": frames}),
        ({"text": "a clip"}, {"text": "a caption", "video": frames[:2]}),
        ({"video": frames}, {"text": "a caption"}),
        ({"text": "a cat"}, {"text": "a cat sitting on a mat"}),
    ]
    scores = model.predict(pairs)
    assert all(0.0 < float(x) < 1.0 for x in scores) and len({float(x) for x in scores}) == len(pairs)
    for i, pair in enumerate(pairs):  # a mixed batch gives each pair its own score
        assert abs(float(model.predict([pair])[0]) - float(scores[i])) <= 1e-5
    assert abs(float(vlm.predict([pairs[3]])[0]) - float(scores[3])) <= 1e-6  # text pairs: the same weights
    assert _tensors(models.vlm_reranker).keys() == _tensors(av_models.video_reranker).keys()
    with pytest.raises(KeyError):  # ST 6.2 does not unwrap {"array": ...} video in a pair (when it does, pass metadata)
        model.predict([({"text": "a clip"}, {"video": {"array": frames, "video_metadata": None}})])
    assert vlm.supports("video")
    with pytest.raises(ValueError):
        vlm.predict([pairs[0]])
    assert reranker_modalities(vlm) == ["text", "image", "text+image"]
    assert reranker_modalities(model) == ["text", "image", "video", "text+image", "text+video"]


def test_video_reranker_is_bit_reproducible(av_models: Any, tmp_path: Path) -> None:
    first, second = _tensors(av_models.video_reranker), _tensors(build_tiny_video_reranker(tmp_path / "video"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
