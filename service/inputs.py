"""Turn wire ``Item``s into safe model inputs.

User strings never reach sentence-transformers as raw strings: it would treat ``http://...png`` or an existing
file path as an image and fetch or open it. Text is wrapped as ``{"text": s}``; images are fetched and decoded by
``service.media`` and passed as PIL images only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mmsearch_client.schemas import Item, Modality, as_item
from PIL import Image

from service.config import Settings
from service.errors import ApiError, bad_request, too_many
from service.media import MediaLoader


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
    field: str,
    loader: MediaLoader,
    settings: Settings,
    supported: Sequence[str],
    model: str,
    uploads: dict[int, Image.Image] | None = None,
    single: bool = False,
    background: bool = False,
) -> list[ModelInput]:
    """Validate items (modality, text size), fetch/decode their images concurrently, and build model inputs.

    ``field`` is the request field holding the list (``inputs``) for error paths like ``inputs[3].image``.
    ``uploads`` maps an index to an already decoded uploaded image. ``single``: ``field`` names one item
    (e.g. ``query``), so paths read ``query.image`` rather than ``query[0].image``. ``background``: bulk
    (document) work, whose image decoding yields to in-flight queries.
    """
    normalized = [as_item(x) for x in items]
    refs: list[tuple[str, str]] = []
    ref_index: list[int] = []
    for i, item in enumerate(normalized):
        path = field if single else f"{field}[{i}]"
        has_upload = uploads is not None and i in uploads
        modality: Modality = item.modality
        if has_upload:
            modality = "text+image" if item.text is not None else "image"
        check_supported(path, modality, supported, model)
        if item.text is not None and len(item.text) > settings.max_text_chars:
            raise ApiError(
                413,
                "text_too_long",
                f"{path}.text: at most {settings.max_text_chars} characters (got {len(item.text)})",
                field=f"{path}.text",
            )
        if item.image is not None and not has_upload:
            if not item.image:
                raise bad_request(f"{path}.image: empty image reference", f"{path}.image")
            refs.append((item.image, f"{path}.image"))
            ref_index.append(i)
    images: dict[int, Image.Image] = dict(uploads or {})
    if refs:
        for i, img in zip(ref_index, await loader.load_many(refs, background=background), strict=True):
            images[i] = img
    return [ModelInput(text=item.text, image=images.get(i)) for i, item in enumerate(normalized)]


def model_modalities(model: Any) -> list[str]:
    """The wire modalities (``text``, ``image``, ``text+image``) a sentence-transformers model accepts."""
    out = [m for m in ("text", "image") if model.supports(m)]
    if model.supports(("image", "text")):
        out.append("text+image")
    return out
