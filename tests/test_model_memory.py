"""Model weights estimated from the checkpoint on disk (``service.model_memory``) against the bytes the loaded model
really holds, and the ``MMSEARCH_MODEL_MEMORY_BUDGET_MB`` refusal at start-up (issue #23)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer

from service.config import ModelSpec, Settings
from service.model_memory import MB, ModelMemoryError, check_budget, checkpoint_bytes, estimate
from service.models import ModelLoadError, load_embedder, load_reranker
from tests.support.env import no_mmsearch_env  # noqa: F401 (autouse: no MMSEARCH_* of the shell)
from tests.test_model_settings import HUB_ID, hub_cache

TOLERANCE = 0.01
"""The estimate counts every tensor of the checkpoint: buffers saved beside the parameters may add a little."""


def settings(**kw: object) -> Settings:
    return Settings(device="cpu", torch_threads=1, **kw)  # type: ignore[arg-type]


def parameter_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def spec(source: str, kind: str = "embedder", **model_kwargs: Any) -> ModelSpec:
    return ModelSpec(kind, source, Path(source).name or source, None, model_kwargs, {})  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [None, "float32", "bfloat16", "float16"])
@pytest.mark.parametrize(("which", "loader"), [("clip", SentenceTransformer), ("text_reranker", CrossEncoder),
                                               ("vlm_reranker", CrossEncoder)])  # fmt: skip
def test_estimate_matches_the_loaded_parameters(tiny_models: Any, which: str, loader: Any, dtype: str | None) -> None:
    path = str(getattr(tiny_models, which))
    kwargs = {"dtype": dtype} if dtype else {}
    got = estimate(spec(path, **kwargs), settings())
    model = loader(path, device="cpu", model_kwargs={"dtype": getattr(torch, dtype)} if dtype else {})
    real = parameter_bytes(model)
    assert got.bytes is not None and got.how == "safetensors headers"
    assert abs(got.bytes - real) <= TOLERANCE * real, (got.bytes, real)
    if dtype in ("bfloat16", "float16"):  # the tiny models are stored in float32: half the bytes once converted
        assert got.bytes < 0.6 * estimate(spec(path), settings()).bytes  # type: ignore[operator]


def test_a_hub_id_is_estimated_from_the_local_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_models: Any
) -> None:
    hub_cache(tmp_path, Path(tiny_models.clip))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # HF_HUB_OFFLINE=1 (conftest)
    local = estimate(spec(str(tiny_models.clip)), settings())
    for revision in (None, "refs/pr/23"):
        hub = ModelSpec("embedder", HUB_ID, HUB_ID, revision, {}, {})
        assert estimate(hub, settings()).bytes == local.bytes
    absent = ModelSpec("embedder", "acme/absent", "acme/absent", None, {}, {})
    missing = estimate(absent, settings())
    assert missing.bytes is None and "not in the local Hugging Face cache" in missing.how
    with pytest.raises(ModelMemoryError, match=r"=100000 cannot be checked .*acme/absent: size unknown"):
        check_budget(settings(model_memory_budget_mb=100_000), "Embedder", [hub, absent])


def test_pickles_and_onnx_count_their_file_sizes(tmp_path: Path) -> None:
    pickled = tmp_path / "pt"
    pickled.mkdir()
    torch.save({"w": torch.zeros(1000, 100)}, pickled / "pytorch_model.bin")
    (pickled / "config.json").write_text(json.dumps({"dtype": "float32"}))
    size = (pickled / "pytorch_model.bin").stat().st_size
    assert checkpoint_bytes(pickled, None) == (size, "file sizes")
    assert checkpoint_bytes(pickled, "bfloat16") == (round(size / 2), "file sizes")

    onnx = tmp_path / "onnx-model"
    (onnx / "onnx").mkdir(parents=True)
    (onnx / "onnx" / "model.onnx").write_bytes(b"\0" * 4096)
    assert checkpoint_bytes(onnx, "float16") == (4096, "ONNX file sizes")  # ONNX Runtime takes no dtype


def test_safetensors_win_over_duplicate_exports(tmp_path: Path, tiny_models: Any) -> None:
    """A hub repository often holds the same weights as safetensors, a pickle and ONNX: counted once."""
    import shutil

    copy = tmp_path / "clip"
    shutil.copytree(tiny_models.clip, copy)
    (copy / "pytorch_model.bin").write_bytes(b"\0" * 10_000_000)
    (copy / "onnx").mkdir()
    (copy / "onnx" / "model.safetensors").write_bytes((copy / "model.safetensors").read_bytes())
    assert estimate(spec(str(copy)), settings()).bytes == estimate(spec(str(tiny_models.clip)), settings()).bytes

    (copy / "model.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{")  # truncated header
    broken = estimate(spec(str(copy)), settings())
    assert broken.bytes is None and broken.how.startswith("unreadable checkpoint")


def padded(tmp_path: Path, model: Path, extra_bytes: int) -> Path:
    """A copy of ``model`` whose checkpoint carries ``extra_bytes`` more of float32 weights (a model over a
    budget of 1 MB: the tiny models are about 0.25 MB)."""
    import shutil

    from safetensors.torch import load_file, save_file

    copy = tmp_path / model.name
    shutil.copytree(model, copy)
    weights = load_file(model / "model.safetensors")
    save_file({**weights, "padding": torch.zeros(extra_bytes // 4)}, copy / "model.safetensors")
    return copy


def test_a_budget_too_small_refuses_at_start_up(tmp_path: Path, tiny_models: Any) -> None:
    path = str(tiny_models.clip)
    weights = estimate(spec(path), settings()).bytes
    assert weights is not None and weights < MB

    # fits: checked, then loaded; no budget: no check at all (a source that does not exist is not even looked at)
    assert check_budget(settings(model_memory_budget_mb=1), "Embedder", [spec(path)])[0].bytes == weights
    assert check_budget(settings(), "Embedder", [spec("/nonexistent/model")]) == []
    assert load_embedder(settings(embedder_model=path, model_memory_budget_mb=1)).name == "clip"

    # together over the budget: one message naming every model, its estimate and the budget
    big = padded(tmp_path, Path(path), 2 * MB)
    with pytest.raises(ModelMemoryError) as e:
        check_budget(settings(model_memory_budget_mb=2), "Embedder", [spec(str(big)), spec(path)])
    total = (weights + 2 * MB + weights) / MB
    assert str(e.value).startswith(
        f"MMSEARCH_MODEL_MEMORY_BUDGET_MB=2 is exceeded: {total:.2f} MB of weights for the Embedder's models "
        f"(clip: {(weights + 2 * MB) / MB:.2f} MB (safetensors headers); clip: {weights / MB:.2f} MB (safetensors"
    )
    assert check_budget(settings(model_memory_budget_mb=3), "Embedder", [spec(str(big)), spec(path)])

    # at start-up: each model service stops with that message instead of loading
    over = re.escape(f"BUDGET_MB=1 is exceeded: {(weights + 2 * MB) / MB:.2f} MB of weights for the Embedder's")
    with pytest.raises(ModelLoadError, match=over):
        load_embedder(settings(embedder_model=str(big), model_memory_budget_mb=1))
    reranker = padded(tmp_path, Path(tiny_models.text_reranker), 2 * MB)
    with pytest.raises(ModelLoadError, match=r"BUDGET_MB=1 is exceeded: .* for the Reranker's models"):
        load_reranker(settings(reranker_model=str(reranker), model_memory_budget_mb=1))
