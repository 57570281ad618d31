"""Loading the embedding and reranking models (hub id or local path, or the offline tiny profile)."""

from __future__ import annotations

import logging
from typing import Any

from service.config import Settings

log = logging.getLogger("mmsearch.models")

TINY_WARNING = "RANDOM-WEIGHT TINY MODEL (MMSEARCH_PROFILE=tiny): smoke tests only, results are meaningless"


class SimulatedOOM(MemoryError):
    """Raised by the test-only ``MMSEARCH_OOM_SIMULATE_BATCH_OVER`` setting."""


def is_oom(exc: BaseException) -> bool:
    """True for CUDA out-of-memory errors and the simulated one."""
    if isinstance(exc, SimulatedOOM):
        return True
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()
        return True
    return False


def _text_chars(payload: Any) -> int:
    if isinstance(payload, str):
        return len(payload)
    if isinstance(payload, dict):
        return len(payload.get("text") or "")
    if isinstance(payload, tuple | list):
        return sum(_text_chars(p) for p in payload)
    return 0


def check_simulated_oom(settings: Settings, payloads: list[Any]) -> None:
    """Test-only fault injection (``MMSEARCH_OOM_SIMULATE_*``): behave like a GPU that is out of memory."""
    if settings.oom_simulate_batch_over and len(payloads) > settings.oom_simulate_batch_over:
        raise SimulatedOOM(f"simulated out of memory at batch size {len(payloads)}")
    limit = settings.oom_simulate_text_chars
    if limit and any(_text_chars(p) >= limit for p in payloads):
        raise SimulatedOOM(f"simulated out of memory: an input has >= {limit} text characters")


def _model_kwargs(settings: Settings) -> dict[str, Any]:
    if settings.dtype == "auto":
        return {}
    import torch

    return {"dtype": getattr(torch, settings.dtype)}


def _tiny_paths(settings: Settings) -> Any:
    from service.tiny import ensure_tiny_models

    log.warning(TINY_WARNING)
    return ensure_tiny_models(settings.tiny_dir)


def configure_torch(settings: Settings) -> None:
    import torch

    torch.set_num_threads(settings.torch_threads)


def _load(cls: Any, settings: Settings, configured: str | None, tiny: str, tiny_name: str, model_id: str) -> Any:
    """Load ``cls`` (SentenceTransformer / CrossEncoder) from ``model_id``, or the tiny model when unconfigured."""
    configure_torch(settings)
    if settings.profile == "tiny" and not configured:
        path, name = str(getattr(_tiny_paths(settings), tiny)), tiny_name
    else:
        path = name = model_id
    model = cls(
        path,
        device=settings.resolved_device(),
        trust_remote_code=settings.trust_remote_code,
        model_kwargs=_model_kwargs(settings),
    )
    model.eval()
    return model, name


def load_embedder(settings: Settings) -> tuple[Any, str]:
    """Load the SentenceTransformer; returns ``(model, name)``. The name says ``tiny-random`` for the tiny profile."""
    from sentence_transformers import SentenceTransformer

    model_id = settings.embedder_model or (settings.embedder_model_id() if settings.profile != "tiny" else "")
    return _load(SentenceTransformer, settings, settings.embedder_model, "clip", "mmsearch/tiny-random-clip", model_id)


def load_reranker(settings: Settings) -> tuple[Any, str]:
    """Load the CrossEncoder (VLM any-to-any with a yes/no head, or a classic text cross-encoder)."""
    from sentence_transformers import CrossEncoder

    return _load(
        CrossEncoder,
        settings,
        settings.reranker_model,
        "vlm_reranker",
        "mmsearch/tiny-random-qwen2vl-reranker",
        settings.reranker_model_id(),
    )
