"""Turn wire ``Item``s into safe model inputs.

User strings never reach sentence-transformers as raw strings: it would treat ``http://...png`` or an existing
file path as an image and fetch or open it. Text is wrapped as ``{"text": s}``; images are fetched and decoded by
``service.media`` and passed as PIL images only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from mmsearch_client.schemas import Item, Modality, as_item
from PIL import Image

from service.config import Settings
from service.errors import ApiError, bad_request, too_many
from service.media import MediaLoader
from service.pixels import Lease


@dataclass(frozen=True, eq=False)
class ModelInput:
    """A validated input: text, a decoded image, or both."""

    text: str | None = None
    image: Image.Image | None = None

    @property
    def modality(self) -> Modality:
        if self.text is not None and self.image is not None:
            return "text+image"
        return "image" if self.image is not None else "text"

    def to_st(self, text_only: bool = False) -> str | dict[str, Any] | Image.Image:
        """The sentence-transformers input.

        Multimodal models get text as ``{"text": s}`` so that a URL- or path-like string is never fetched or
        opened. Text-only models take plain strings (their modules reject dicts); they are safe because
        sentence-transformers classifies every string as text when the model has no image modality.
        """
        if self.image is None:
            if text_only:
                return self.text or ""
            return {"text": self.text}
        if self.text is None:
            return self.image
        return {"text": self.text, "image": self.image}


def check_count(field: str, n: int, limit: int, what: str = "inputs") -> None:
    if n > limit:
        raise too_many(field, limit, n, what)


def check_text_length(path: str, text: str | None, settings: Settings) -> None:
    """``MMSEARCH_MAX_TEXT_CHARS``, for every text a model may be given (``path``: the item, e.g. ``inputs[3]``)."""
    if text is not None and len(text) > settings.max_text_chars:
        raise ApiError(
            413,
            "text_too_long",
            f"{path}.text: at most {settings.max_text_chars} characters (got {len(text)})",
            field=f"{path}.text",
        )


FLOAT32_TINY = float(np.finfo(np.float32).tiny)
FLOAT32_MAX = float(np.finfo(np.float32).max)


def unit_vector(values: Sequence[float]) -> np.ndarray:
    """A supplied embedding as a unit float32 vector, or ``ValueError`` saying why it cannot be one.

    Components must be finite float32 numbers that are not subnormal, and the squared norm must be a normal
    float32 (so that every backend's float32 cosine arithmetic neither overflows nor underflows). The norm itself
    is computed in float64, so e.g. ``[1e18] * 16`` is exact; ``[1e38] * 16`` is refused instead of being
    stored as zeros.
    """
    v = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError("must contain only finite numbers (no NaN or Infinity)")
    magnitude = np.abs(v)
    if np.any(magnitude > FLOAT32_MAX):
        raise ValueError(f"components must fit in float32 (|x| <= {FLOAT32_MAX:.3g})")
    if np.any((magnitude > 0) & (magnitude < FLOAT32_TINY)):
        raise ValueError(f"components must be 0 or at least {FLOAT32_TINY:.3g} in magnitude (no subnormal floats)")
    squared = float(np.dot(v, v))
    if not FLOAT32_TINY <= squared <= FLOAT32_MAX:
        raise ValueError(
            f"its squared L2 norm must lie in [{FLOAT32_TINY:.3g}, {FLOAT32_MAX:.3g}] (float32), got {squared:.3g}"
        )
    return (v / np.sqrt(squared)).astype(np.float32)


def check_supported(field: str, modality: Modality, supported: Sequence[str], model: str) -> None:
    """Refuse a modality the loaded model cannot encode, naming what it can."""
    if modality not in supported:
        raise ApiError(
            422,
            "unsupported_modality",
            f"{field}: {modality} inputs are not supported by model {model!r} (supported: {', '.join(supported)})",
            field=field,
        )


async def resolve_items(
    items: Sequence[str | Item],
    *,
    paths: Sequence[str],
    loader: MediaLoader,
    settings: Settings,
    supported: Sequence[str],
    model: str,
    uploads: dict[int, bytes] | None = None,
    background: bool = False,
    lease: Lease | None = None,
) -> list[ModelInput]:
    """Validate items (modality, text size), fetch/decode their images concurrently, and build model inputs.

    ``paths`` names each item in errors (``inputs[3]``, ``query``), e.g. ``inputs[3].image``. ``uploads`` maps an
    index to the bytes of an uploaded image. ``lease``: the request's pixel lease, which holds the decoded pixels
    until the request ends (``service.pixels``). ``background``: bulk (document) work, whose image decoding yields
    to in-flight queries.
    """
    normalized = [as_item(x) for x in items]
    refs: list[tuple[str | bytes, str]] = []
    ref_index: list[int] = []
    for i, item in enumerate(normalized):
        path = paths[i]
        upload = uploads.get(i) if uploads is not None else None
        modality: Modality = item.modality
        if upload is not None:
            modality = "text+image" if item.text is not None else "image"
        check_supported(path, modality, supported, model)
        check_text_length(path, item.text, settings)
        if upload is not None:
            refs.append((upload, path))
            ref_index.append(i)
        elif item.image is not None:
            if not item.image:
                raise bad_request(f"{path}.image: empty image reference", f"{path}.image")
            refs.append((item.image, f"{path}.image"))
            ref_index.append(i)
    images: dict[int, Image.Image] = {}
    if refs:
        loaded = await loader.load_many(refs, background=background, lease=lease)
        images = dict(zip(ref_index, loaded, strict=True))
    return [ModelInput(text=item.text, image=images.get(i)) for i, item in enumerate(normalized)]


def item_paths(field: str, n: int) -> list[str]:
    """``field[0]`` ... ``field[n-1]``: where each item of a list field is named in errors."""
    return [f"{field}[{i}]" for i in range(n)]


def model_modalities(model: Any) -> list[str]:
    """The wire modalities (``text``, ``image``, ``text+image``) a sentence-transformers model accepts."""
    out = [m for m in ("text", "image") if model.supports(m)]
    if model.supports(("image", "text")):
        out.append("text+image")
    return out
