"""Test-only fault injection (``MMSEARCH_OOM_SIMULATE_*``): model batches that behave like an out-of-memory GPU.

Off by default. ``oom_check`` returns ``None`` when both settings are 0, and ``service.runtime`` then hands the
batcher the adapter's own ``prepare``/``run``: production batches run no fault code at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from service.config import Settings


class SimulatedOOM(MemoryError):
    """Raised by the test-only ``MMSEARCH_OOM_SIMULATE_*`` settings (a ``MemoryError``: ``is_oom`` splits on it)."""


def _text_chars(payload: Any) -> int:
    if isinstance(payload, str):
        return len(payload)
    if isinstance(payload, dict):
        return len(payload.get("text") or "")
    if isinstance(payload, tuple | list):
        return sum(_text_chars(p) for p in payload)
    return 0


def oom_check(settings: Settings) -> Callable[[list[Any]], None] | None:
    """The check to run on each batch's payloads before the model, or ``None`` when fault injection is off."""
    batch_over, text_chars = settings.oom_simulate_batch_over, settings.oom_simulate_text_chars
    if not batch_over and not text_chars:
        return None

    def check(payloads: list[Any]) -> None:
        if batch_over and len(payloads) > batch_over:
            raise SimulatedOOM(f"simulated out of memory at batch size {len(payloads)}")
        if text_chars and any(_text_chars(p) >= text_chars for p in payloads):
            raise SimulatedOOM(f"simulated out of memory: an input has >= {text_chars} text characters")

    return check
