"""Turn wire ``Item``s into safe model inputs.

User strings never reach sentence-transformers as raw strings: it would treat ``http://...png`` or an existing
file path as an image and fetch or open it. Text is wrapped as ``{"text": s}``; images are fetched and decoded by
``service.media`` and passed as PIL images only; audio and video are fetched by ``service.media`` and decoded by
``service.avmedia`` (``service.avload``) and passed as arrays only: float32 samples with their rate, uint8 frames.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from mmsearch_schema.wire import Item, Modality, as_item
from PIL import Image

from service.avload import AVRef, AVTarget, decode_planned, plan_refs
from service.avmedia import Audio, Video
from service.config import Settings
from service.errors import ApiError, bad_request, too_many
from service.media import MediaLoader
from service.pixels import Lease

_WITH_TEXT: dict[str, Modality] = {"image": "text+image", "audio": "text+audio", "video": "text+video"}


@dataclass(frozen=True, eq=False)
class ModelInput:
    """A validated input: text, one decoded medium (image, audio or video), or text with it."""

    text: str | None = None
    image: Image.Image | None = None
    audio: Audio | None = None
    video: Video | None = None

    @property
    def modality(self) -> Modality:
        media: Modality | None = None
        if self.image is not None:
            media = "image"
        elif self.audio is not None:
            media = "audio"
        elif self.video is not None:
            media = "video"
        if media is None:
            return "text"
        return media if self.text is None else _WITH_TEXT[media]

    def to_st(self, text_only: bool = False) -> str | dict[str, Any] | Image.Image:
        """The sentence-transformers input.

        Multimodal models get text as ``{"text": s}`` so that a URL- or path-like string is never fetched or
        opened. Text-only models take plain strings (their modules reject dicts); they are safe because
        sentence-transformers classifies every string as text when the model has no image modality. Audio is
        ``{"audio": {"array": float32 samples, "sampling_rate": rate}}``, video ``{"video": {"array": uint8
        (T, H, W, 3) frames, "video_metadata": ...}}`` (the frames are already sampled: their rate and indices),
        with ``"text"`` beside it for a pair: the dict forms sentence-transformers reads.
        """
        return self._st(text_only, bare=False)

    def to_pair_st(self, text_only: bool = False) -> str | dict[str, Any] | Image.Image:
        """One side of a CrossEncoder pair: ``to_st``, but audio and video bare, ``{"audio": float32 samples}``
        (already at the model's rate) and ``{"video": uint8 (T, H, W, 3) frames}`` (already sampled): in a pair,
        sentence-transformers (6.2) hands each side's dict to the processor as it is, unwrapping no ``{"array":
        ...}`` dict (which the processor cannot read)."""
        return self._st(text_only, bare=True)

    def _st(self, text_only: bool, *, bare: bool) -> str | dict[str, Any] | Image.Image:
        if self.audio is not None or self.video is not None:
            out = av_to_st(self.audio, self.video, bare=bare)
            return out if self.text is None else {"text": self.text, **out}
        if self.image is None:
            if text_only:
                return self.text or ""
            return {"text": self.text}
        if self.text is None:
            return self.image
        return {"text": self.text, "image": self.image}


def av_to_st(audio: Audio | None, video: Video | None, *, bare: bool = False) -> dict[str, Any]:
    """The sentence-transformers form of decoded audio or video (see ``ModelInput.to_st``; ``bare``:
    ``ModelInput.to_pair_st``'s)."""
    if audio is not None:
        return {"audio": audio.samples if bare else {"array": audio.samples, "sampling_rate": audio.rate}}
    assert video is not None
    if bare:
        return {"video": video.frames}
    n = int(video.frames.shape[0])
    metadata = {"fps": video.fps, "total_num_frames": n, "duration": n / video.fps, "frames_indices": list(range(n))}
    return {"video": {"array": video.frames, "video_metadata": metadata}}


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


def check_av_count(field: str, items: Sequence[str | Item], settings: Settings) -> None:
    """``MMSEARCH_MAX_AV_INPUTS_PER_REQUEST``: audio and video items of one request."""
    n = sum(1 for x in items if isinstance(x, Item) and x.media in ("audio", "video"))
    check_count(field, n, settings.max_av_inputs_per_request, "audio and video inputs")


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
    av: AVTarget | None = None,
) -> list[ModelInput]:
    """Validate items (modality, text size), fetch/decode their media concurrently, and build model inputs.

    ``paths`` names each item in errors (``inputs[3]``, ``query``), e.g. ``inputs[3].image``. ``uploads`` maps an
    index to the bytes of an uploaded file (its item names the medium: ``image``, ``audio`` or ``video``; errors
    name it ``paths[i]``, e.g. ``video[0]``). ``lease``: the request's pixel lease, which holds the decoded pixels
    (and audio samples) until the request ends (``service.pixels``). ``background``: bulk (document) work, whose
    decoding yields to in-flight queries. ``av``: what the model takes of audio and video (``service.avload``);
    ``None`` where audio and video are not served (422).
    """
    normalized = [as_item(x) for x in items]
    refs: list[tuple[str | bytes, str]] = []
    ref_index: list[int] = []
    av_refs: list[AVRef] = []
    for i, item in enumerate(normalized):
        path = paths[i]
        upload = uploads.get(i) if uploads is not None else None
        _check_item(path, item, item.modality, supported, model, settings, served_av=av is not None)
        if upload is not None and item.media in ("audio", "video"):
            av_refs.append(AVRef(i, item.media, "upload", path, data=upload))
        elif upload is not None:
            refs.append((upload, path))
            ref_index.append(i)
        elif item.image is not None:
            if not item.image:
                raise bad_request(f"{path}.image: empty image reference", f"{path}.image")
            refs.append((item.image, f"{path}.image"))
            ref_index.append(i)
        elif item.media is not None:
            av_refs.append(AVRef(i, item.media, str(getattr(item, item.media)), f"{path}.{item.media}", item.window))
    async with contextlib.AsyncExitStack() as stack:
        if lease is None and av_refs:
            lease = await stack.enter_async_context(loader.pixels.lease())
        images, media = await _load(refs, ref_index, av_refs, loader, settings, av, background, lease)
    return [
        ModelInput(
            text=item.text,
            image=images.get(i),
            audio=_of(media.get(i), Audio),
            video=_of(media.get(i), Video),
        )
        for i, item in enumerate(normalized)
    ]


def _of(value: Audio | Video | None, cls: type[Any]) -> Any:
    return value if isinstance(value, cls) else None


def refuse_av(item: str | Item, path: str) -> None:
    """422 for an audio or video item where audio and video are not decoded (a resolve without an ``AVTarget``)."""
    media = item.media if isinstance(item, Item) else None
    if media in ("audio", "video"):
        raise ApiError(
            422,
            "unsupported_modality",
            f"{path}: {media} inputs are accepted by the Embedder's /encode and /v1/embeddings, the Reranker's "
            "/rerank, /v1/rerank and /v2/rerank, and by /search and /upsert",
            field=f"{path}.{media}",
        )


def _check_item(
    path: str,
    item: Item,
    modality: Modality,
    supported: Sequence[str],
    model: str,
    settings: Settings,
    *,
    served_av: bool,
) -> None:
    check_supported(path, modality, supported, model)
    if not served_av:  # a model that takes audio or video, served where they are not wired (yet)
        refuse_av(item, path)
    check_text_length(path, item.text, settings)


async def _load(
    refs: list[tuple[str | bytes, str]],
    ref_index: list[int],
    av_refs: list[AVRef],
    loader: MediaLoader,
    settings: Settings,
    av: AVTarget | None,
    background: bool,
    lease: Lease | None,
) -> tuple[dict[int, Image.Image], dict[int, Audio | Video]]:
    """Plan the audio/video (bytes and headers), reserve it with the images in one reservation, decode both."""
    planned = await plan_refs(av_refs, loader, settings, av, background=background) if av and av_refs else []
    also = [(p.units, p.ref.field) for p in planned]
    images: dict[int, Image.Image] = {}
    if refs:
        loaded = await loader.load_many(refs, background=background, lease=lease, also=also)
        images = dict(zip(ref_index, loaded, strict=True))
    elif planned:
        assert lease is not None
        await loader.reserve(lease, also)
    if not planned:
        return images, {}
    assert av is not None
    decoded = await decode_planned(planned, loader, settings, av, background=background)
    return images, {p.ref.index: d for p, d in zip(planned, decoded, strict=True)}


def item_paths(field: str, n: int) -> list[str]:
    """``field[0]`` ... ``field[n-1]``: where each item of a list field is named in errors."""
    return [f"{field}[{i}]" for i in range(n)]


def model_modalities(model: Any, *, av: bool = False) -> list[str]:
    """The wire modalities (``text``, ``image``, ``text+image``; with ``av`` also ``audio``, ``video``,
    ``text+audio``, ``text+video``) a sentence-transformers model declares (``model.supports``)."""
    singles = ("text", "image", "audio", "video") if av else ("text", "image")
    pairs: list[tuple[tuple[str, str], str]] = [(("image", "text"), "text+image")]
    if av:
        pairs += [(("audio", "text"), "text+audio"), (("text", "video"), "text+video")]
    return [m for m in singles if model.supports(m)] + [name for key, name in pairs if model.supports(key)]
