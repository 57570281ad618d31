"""Model weights estimated from the checkpoint on disk, before loading, and the ``MMSEARCH_MODEL_MEMORY_BUDGET_MB``
check (issue #23): a service whose models do not fit refuses to start with the sizes named, instead of running out of
memory half-way through loading them.

The estimate reads each ``*.safetensors`` header (8-byte little-endian length, then JSON: every tensor's dtype and
shape) and sums dtype size x element count, with floating-point tensors counted at the dtype the model will be
loaded in (``model_kwargs.dtype``; unset or ``auto``: the checkpoint's ``config.json`` dtype, as transformers does).
Checkpoints without safetensors count their ``.bin``/``.pt`` files' sizes (scaled by the dtype change when both
dtypes are known), and an ONNX export its ``.onnx`` files. Only weights are counted: activations, the CUDA context and
the allocator's slack come on top. A hub id counts the snapshot in the local Hugging Face cache (nothing is
downloaded); a model not there has no estimate, which a budget refuses.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from service.config import TINY_MODELS, ModelSpec, Settings

SAFETENSORS_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip
"""Bytes per element of the safetensors dtypes."""
FLOATS = frozenset({"F64", "F32", "F16", "BF16"})
"""The dtypes transformers converts to the requested ``dtype`` (quantised and integer tensors stay as stored)."""
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
MAX_HEADER = 100 * 1024 * 1024
"""safetensors' own limit on a header's length."""
SKIPPED_DIRS = frozenset({"onnx", "openvino"})
"""Exports beside the PyTorch weights, not loaded by sentence-transformers' default backend."""
MB = 1_000_000


class ModelMemoryError(RuntimeError):
    """Models that exceed the memory budget (or cannot be estimated while a budget is set)."""


@dataclass(frozen=True)
class Estimate:
    """A model's estimated weight bytes (``None``: unknown, ``how`` says why)."""

    name: str
    bytes: int | None
    how: str


def read_safetensors_header(path: Path) -> dict[str, dict[str, object]]:
    """The tensors a safetensors file declares (name -> ``{"dtype", "shape", "data_offsets"}``), from its header."""
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path.name}: shorter than a safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER:
            raise ValueError(f"{path.name}: header of {length} bytes is over safetensors' limit")
        header = json.loads(f.read(length))
    if not isinstance(header, dict):
        raise ValueError(f"{path.name}: the header is not a JSON object")
    header.pop("__metadata__", None)
    return header


def safetensors_bytes(path: Path, dtype: str | None) -> int:
    """Bytes of ``path``'s tensors once loaded, floating-point ones in ``dtype`` (``None``: as stored)."""
    total = 0
    for tensor in read_safetensors_header(path).values():
        stored = str(tensor["dtype"])
        shape = tensor["shape"]
        assert isinstance(shape, list)
        size = DTYPE_BYTES[dtype] if dtype and stored in FLOATS else SAFETENSORS_BYTES[stored]
        total += size * math.prod(int(d) for d in shape)
    return total


def config_dtype(directory: Path) -> str | None:
    """The dtype a directory's ``config.json`` declares (``dtype``, or ``torch_dtype`` before transformers 5)."""
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return None
    dtype = config.get("dtype") or config.get("torch_dtype") if isinstance(config, dict) else None
    return dtype if dtype in DTYPE_BYTES else None


def _weight_dirs(root: Path) -> Iterator[tuple[Path, list[Path]]]:
    """Each directory under ``root`` (sentence-transformers keeps modules in subdirectories) with its weight
    files: the safetensors ones when it has any, else the PyTorch pickles."""
    for directory in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        if SKIPPED_DIRS & set(directory.relative_to(root).parts) or ".git" in directory.parts:
            continue
        files = sorted(directory.glob("*.safetensors")) or sorted(
            p for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth") and p.is_file()
        )
        if files:
            yield directory, files


def checkpoint_bytes(root: Path, requested: str | None) -> tuple[int, str]:
    """Weight bytes of the checkpoint in ``root`` once loaded with ``model_kwargs.dtype == requested``, and how
    they were counted."""
    total, how = 0, set()
    for directory, files in _weight_dirs(root):
        loaded = requested if requested in DTYPE_BYTES else config_dtype(directory)
        for f in files:
            if f.suffix == ".safetensors":
                total += safetensors_bytes(f, loaded)
                how.add("safetensors headers")
            else:
                stored = config_dtype(directory)
                scale = DTYPE_BYTES[loaded] / DTYPE_BYTES[stored] if loaded and stored else 1.0
                total += round(f.stat().st_size * scale)
                how.add("file sizes")
    if not how:  # an ONNX export (the lite profile's embedder)
        onnx = [p for p in root.rglob("*") if p.is_file() and (p.suffix == ".onnx" or p.name.endswith(".onnx_data"))]
        total, how = sum(p.stat().st_size for p in onnx), {"ONNX file sizes"} if onnx else set()
    return total, " + ".join(sorted(how)) or "no weight files"


def checkpoint_dir(spec: ModelSpec, settings: Settings) -> Path | None:
    """Where ``spec``'s files are on this machine: the tiny profile's build, a local directory, or the hub id's
    snapshot in the local Hugging Face cache (``None`` when it is not there: it would be downloaded at load)."""
    if not spec.source:
        try:
            from service.tiny import ensure_tiny_models
        except ImportError:  # the bento leaves the test models' builder out; loading then says so
            return None
        return Path(getattr(ensure_tiny_models(settings.tiny_dir), TINY_MODELS[spec.kind]))
    local = Path(spec.source).expanduser()
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec.source, revision=spec.revision, local_files_only=True))
    except (OSError, ValueError):  # not cached (or incompletely), a malformed id: its errors derive from these
        return None


def estimate(spec: ModelSpec, settings: Settings) -> Estimate:
    """``spec``'s weight bytes once loaded, from its files on disk (never loading or downloading it)."""
    root = checkpoint_dir(spec, settings)
    if root is None:
        why = f"{spec.source} is not in the local Hugging Face cache" if spec.source else "no service/tiny.py"
        return Estimate(spec.name, None, why)
    dtype = spec.model_kwargs.get("dtype", spec.model_kwargs.get("torch_dtype"))
    try:
        size, how = checkpoint_bytes(root, dtype if isinstance(dtype, str) else None)
    except (OSError, ValueError, KeyError, AssertionError) as e:
        return Estimate(spec.name, None, f"unreadable checkpoint: {type(e).__name__}: {e}")
    return Estimate(spec.name, size, how) if size else Estimate(spec.name, None, "no weight files")


def describe_estimate(e: Estimate) -> str:
    return f"{e.bytes / MB:.2f} MB ({e.how})" if e.bytes is not None else f"size unknown ({e.how})"


def check_budget(settings: Settings, service: str, specs: Sequence[ModelSpec]) -> list[Estimate]:
    """The estimates of the models ``service`` loads; ``ModelMemoryError`` when a budget is set and they exceed
    it, or one of them cannot be estimated. No budget: no check (and nothing is read)."""
    budget = settings.model_memory_budget_mb
    if budget is None or not specs:
        return []
    estimates = [estimate(s, settings) for s in specs]
    known = sum(e.bytes or 0 for e in estimates)
    unknown = any(e.bytes is None for e in estimates)
    if known > budget * MB or unknown:
        listed = "; ".join(f"{e.name}: {describe_estimate(e)}" for e in estimates)
        verdict = "cannot be checked" if unknown else f"is exceeded: {known / MB:.2f} MB of weights"
        raise ModelMemoryError(
            f"MMSEARCH_MODEL_MEMORY_BUDGET_MB={budget} {verdict} for the {service}'s models ({listed}); raise the "
            "budget, serve fewer or smaller models (model_kwargs dtype), or unset it to skip the check"
        )
    return estimates
