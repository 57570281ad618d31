"""How the ``MMSEARCH_*`` model variables become sentence-transformers' loading arguments: served names, the
pinned revision (through a real offline hub cache), ``model_kwargs`` / ``processor_kwargs``, and the start-up
validation of bad values (a ``ConfigError`` naming the variable)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sentence_transformers import CrossEncoder, SentenceTransformer

from bench.support.images import make_image
from service.config import TINY_NAMES, ConfigError, Settings, load_settings
from service.models import load_model, loading_kwargs
from tests.support.env import no_mmsearch_env  # noqa: F401 (autouse: no MMSEARCH_* of the shell)

HUB_ID = "acme/tiny-clip"
MAIN, PR23 = "a" * 40, "b" * 40  # commit hashes of the two snapshots


def settings(**kw: object) -> Settings:
    return Settings(device="cpu", torch_threads=1, **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ loading kwargs
def test_loading_kwargs_as_the_sentence_transformers_docs_show() -> None:
    spec = settings(
        embedder_model="Qwen/Qwen3-VL-Embedding-2B",
        embedder_revision="refs/pr/23",
        embedder_model_kwargs={"dtype": "bfloat16", "attn_implementation": "sdpa"},
        embedder_processor_kwargs={"min_pixels": 3136},
        embedder_max_pixels=200_704,
    ).model_spec("embedder")
    assert loading_kwargs(spec) == {
        "revision": "refs/pr/23",
        "model_kwargs": {"dtype": torch.bfloat16, "attn_implementation": "sdpa"},
        "processor_kwargs": {"min_pixels": 3136, "max_pixels": 200_704},
    }
    assert spec.describe() == {  # what /info shows: the dtype by name
        "name": "Qwen/Qwen3-VL-Embedding-2B",
        "revision": "refs/pr/23",
        "model_kwargs": {"dtype": "bfloat16", "attn_implementation": "sdpa"},
        "processor_kwargs": {"min_pixels": 3136, "max_pixels": 200_704},
    }
    # MMSEARCH_DTYPE is the default dtype of both models; a model's own kwargs win
    s = settings(dtype="float16", reranker_model_kwargs={"dtype": "float32"})
    assert loading_kwargs(s.model_spec("embedder")) == {"model_kwargs": {"dtype": torch.float16}}
    assert loading_kwargs(s.model_spec("reranker")) == {"model_kwargs": {"dtype": torch.float32}}
    # nothing set: no revision, no processor_kwargs (the loaders' own defaults)
    assert loading_kwargs(settings(reranker_model="org/r").model_spec("reranker")) == {"model_kwargs": {}}


def test_reranker_kwargs_reach_the_cross_encoder(tiny_models) -> None:  # type: ignore[no-untyped-def]
    s = settings(
        reranker_model=str(tiny_models.vlm_reranker),
        reranker_model_kwargs={"dtype": "bfloat16"},
        reranker_max_pixels=256,
    )
    model, name = load_model(CrossEncoder, s, s.model_spec("reranker"))
    assert name == Path(tiny_models.vlm_reranker).name  # a local directory: its own name, never the path
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.max_seq_length == s.max_model_tokens  # the cap on inputs (the model declares none)

    # max_pixels reaches the processor as the documented call does, without a FutureWarning on every request
    image = make_image(5, (96, 80))
    pair = [({"text": "a chart"}, image)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = float(model.predict(pair)[0])
    documented = CrossEncoder(str(tiny_models.vlm_reranker), device="cpu", processor_kwargs={"max_pixels": 256})
    default = CrossEncoder(str(tiny_models.vlm_reranker), device="cpu")
    want, other = float(documented.predict(pair)[0]), float(default.predict(pair)[0])
    assert abs(got - want) <= 1e-5 < abs(want - other)


# ------------------------------------------------------------------------------------------ revision
def hub_cache(root: Path, tiny_clip: Path) -> Path:
    """An offline hub cache holding ``acme/tiny-clip`` at two revisions: ``main`` (the tiny CLIP) and
    ``refs/pr/23`` (the same model with other weights), laid out as ``huggingface_hub`` stores downloads."""
    repo = root / "models--acme--tiny-clip"
    for commit in (MAIN, PR23):
        shutil.copytree(tiny_clip, repo / "snapshots" / commit)
    weights = load_file(tiny_clip / "model.safetensors")
    save_file({k: v + 0.05 for k, v in weights.items()}, repo / "snapshots" / PR23 / "model.safetensors")
    (repo / "refs" / "refs" / "pr").mkdir(parents=True)
    (repo / "refs" / "main").write_text(MAIN)
    (repo / "refs" / "refs" / "pr" / "23").write_text(PR23)
    return repo


def test_revision_reaches_the_hub_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_models) -> None:  # type: ignore[no-untyped-def]
    repo = hub_cache(tmp_path, Path(tiny_models.clip))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # HF_HUB_OFFLINE=1 (conftest)

    def vectors(model: SentenceTransformer) -> np.ndarray:
        return np.asarray(model.encode(["a red bicycle"], convert_to_numpy=True))

    pinned = settings(embedder_model=HUB_ID, embedder_revision="refs/pr/23")
    model, name = load_model(SentenceTransformer, pinned, pinned.model_spec("embedder"))
    assert name == HUB_ID  # the default served name is the hub id
    unpinned = settings(embedder_model=HUB_ID)
    main, _ = load_model(SentenceTransformer, unpinned, unpinned.model_spec("embedder"))

    want = vectors(SentenceTransformer(str(repo / "snapshots" / PR23), device="cpu"))
    assert np.abs(vectors(model) - want).max() <= 1e-6  # the PR's weights, not main's
    assert np.abs(vectors(main) - want).max() > 1e-3


# ------------------------------------------------------------------------------------------ served names
def test_served_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    local = tmp_path / "models" / "my-clip"
    local.mkdir(parents=True)
    assert settings(embedder_model="org/clip-x").model_spec("embedder").name == "org/clip-x"  # a hub id
    assert settings(embedder_model=str(local)).model_spec("embedder").name == "my-clip"  # a directory's name
    assert settings(embedder_model=f"{local}/").model_spec("embedder").name == "my-clip"
    assert settings(profile="tiny").model_spec("reranker").name == TINY_NAMES["reranker"]

    monkeypatch.setenv("MMSEARCH_EMBEDDER_MODEL", str(local))
    monkeypatch.setenv("MMSEARCH_EMBEDDER_NAME", "acme/embedder-v2")
    monkeypatch.setenv("MMSEARCH_RERANKER_NAME", "acme/reranker-v1")
    s = load_settings()
    assert s.model_spec("embedder").name == "acme/embedder-v2"
    assert s.model_spec("reranker").name == "acme/reranker-v1"
    assert str(local) not in str(s.model_spec("embedder").describe())


# ------------------------------------------------------------------------------------------ start-up validation
@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("MMSEARCH_EMBEDDER_MODEL_KWARGS", '{"dtype": ', "not valid JSON"),
        ("MMSEARCH_RERANKER_MODEL_KWARGS", '["dtype", "bfloat16"]', "must be a JSON object"),
        ("MMSEARCH_EMBEDDER_MODEL_KWARGS", '{"dtype": "bfloat17"}', "'bfloat17' is not one of auto, float32"),
        ("MMSEARCH_RERANKER_MODEL_KWARGS", '{"torch_dtype": "int8"}', "'int8' is not one of"),
        ("MMSEARCH_DTYPE", "float8", "Input should be 'auto', 'float32'"),
        ("MMSEARCH_EMBEDDER_MAX_PIXELS", "0", "greater than or equal to 1"),
        ("MMSEARCH_RERANKER_MAX_PIXELS", "-5", "greater than or equal to 1"),
        ("MMSEARCH_RERANKER_PROCESSOR_KWARGS", '{"max_pixels": 0}', "max_pixels must be a positive integer"),
        ("MMSEARCH_EMBEDDER_PROCESSOR_KWARGS", '{"min_pixels": "many"}', "min_pixels must be a positive integer"),
    ],
)
def test_bad_model_settings_stop_the_start_up(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as e:
        load_settings()
    lines = str(e.value).splitlines()
    assert lines[0] == "invalid mmsearch configuration:"
    assert len(lines) == 2 and lines[1].strip().startswith(f"{variable}: ") and says in lines[1], lines


def test_tiny_profile_without_its_builder_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bento leaves ``service/tiny.py`` out (bentofile.yaml): the tiny profile there is a clear start-up error."""
    import sys

    from service.models import ModelLoadError

    monkeypatch.setitem(sys.modules, "service.tiny", None)  # what importing a file the bento lacks does
    s = settings(profile="tiny")
    with pytest.raises(ModelLoadError, match=r"MMSEARCH_PROFILE=tiny: .*service/tiny.py.* the bento does not"):
        load_model(SentenceTransformer, s, s.model_spec("embedder"))


def test_a_renamed_variable_is_still_read_and_named_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSEARCH_MAX_LATENCY_MS", "1234")
    monkeypatch.setenv("MMSEARCH_OCR_MAX_LATENCY_MS", "5678")
    s = load_settings()
    assert (s.max_queue_wait_ms, s.ocr_max_queue_wait_ms) == (1234, 5678)
    monkeypatch.setenv("MMSEARCH_MAX_QUEUE_WAIT_MS", "99")  # the new name wins
    assert load_settings().max_queue_wait_ms == 99
    monkeypatch.setenv("MMSEARCH_OCR_MAX_LATENCY_MS", "0")
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert "MMSEARCH_OCR_MAX_LATENCY_MS:" in str(e.value)  # the variable the operator actually set
