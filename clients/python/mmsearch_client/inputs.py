"""Inputs: plain strings are always text; images are explicit.

    from mmsearch_client import Image, pair

    inputs = [
        "a red bicycle",                               # text
        Image.from_path("photos/bike.jpg"),            # local file -> data: URI
        Path("photos/bike.jpg"),                       # same thing
        Image.url("https://example.com/bike.png"),     # fetched by the server
        pair("a red bicycle", Path("photos/bike.jpg")),  # text + image
    ]

A ``PIL.Image.Image`` may be given directly (sent as PNG). Raw ``bytes`` must be wrapped with
:meth:`Image.from_bytes`, so that nothing is guessed.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, cast

from mmsearch_client.schemas import Item, MetadataValue, UpsertDocument

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = [
    "Document",
    "DocumentLike",
    "Image",
    "ImageLike",
    "InputLike",
    "content_id",
    "detect_image_mime",
    "pair",
    "to_item",
    "to_items",
    "to_wire_document",
    "to_wire_image",
]

_HTTP_PREFIXES = ("http://", "https://")
_DATA_PREFIX = "data:image/"


def detect_image_mime(data: bytes) -> str | None:
    """The ``image/<fmt>`` MIME type of encoded image bytes, from their magic number (``None`` if unknown)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"BM"):
        return "image/bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "image/avif"
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"heim", b"heis"):
            return "image/heic"
    if data[:4] == b"\x00\x00\x01\x00":
        return "image/x-icon"
    return None


def _is_pil_image(value: object) -> bool:
    pil = sys.modules.get("PIL.Image")  # never import Pillow ourselves: if it isn't loaded, value isn't one
    return pil is not None and isinstance(value, pil.Image)


@dataclass(frozen=True, slots=True)
class Image:
    """An image reference as sent on the wire: an ``http(s)://`` URL or a ``data:image/...;base64,`` URI.

    Build it with :meth:`from_path`, :meth:`from_bytes`, :meth:`from_pil` or :meth:`url`.
    """

    uri: str

    def __post_init__(self) -> None:
        if not self.uri.startswith(_HTTP_PREFIXES) and not self.uri.lower().startswith(_DATA_PREFIX):
            raise ValueError("an image is an http(s):// URL or a data:image/...;base64, URI")

    @classmethod
    def url(cls, url: str) -> Image:
        """An ``http(s)://`` URL that the server fetches (under its media policy)."""
        if not url.startswith(_HTTP_PREFIXES):
            raise ValueError(f"Image.url expects an http(s):// URL, got {url[:40]!r}")
        return cls(url)

    @classmethod
    def from_bytes(cls, data: bytes, mime: str | None = None) -> Image:
        """Encoded image bytes (PNG, JPEG, ...); the format is detected from the magic bytes unless given."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"Image.from_bytes expects bytes, got {type(data).__name__}")
        data = bytes(data)
        mime = mime or detect_image_mime(data)
        if mime is None:
            raise ValueError(
                "not a recognised image format (PNG, JPEG, GIF, WebP, BMP, TIFF, AVIF/HEIC, ICO); "
                "pass mime='image/...' to send it anyway"
            )
        if not mime.startswith("image/"):
            raise ValueError(f"mime must be image/..., got {mime!r}")
        return cls(f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}")

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> Image:
        """A local image file, read now and sent inline."""
        p = Path(path)
        data = p.read_bytes()
        try:
            return cls.from_bytes(data)
        except ValueError as e:
            raise ValueError(f"{p}: {e}") from None

    @classmethod
    def from_pil(cls, image: PILImage, format: str = "PNG") -> Image:
        """A ``PIL.Image.Image``, encoded losslessly as PNG (or ``format``)."""
        if not _is_pil_image(image):
            raise TypeError(f"Image.from_pil expects a PIL.Image.Image, got {type(image).__name__}")
        buf = io.BytesIO()
        image.save(buf, format=format)
        return cls.from_bytes(buf.getvalue(), mime=f"image/{format.lower()}")

    @property
    def is_url(self) -> bool:
        return self.uri.startswith(_HTTP_PREFIXES)

    def __repr__(self) -> str:
        shown = self.uri if len(self.uri) <= 60 else f"{self.uri[:45]}...({len(self.uri)} chars)"
        return f"Image({shown!r})"


ImageLike: TypeAlias = "Image | os.PathLike[str] | PILImage | str"
"""An image: :class:`Image`, a local path (``pathlib.Path``), a ``PIL.Image.Image``, or a URL/data-URI string."""

InputLike: TypeAlias = "str | Item | Image | os.PathLike[str] | PILImage"
"""An input: ``str`` (always text), an image, or an ``Item`` (text and/or image)."""


def to_wire_image(image: ImageLike) -> str:
    """The wire string (URL or data URI) of any image kind.

    A ``str`` here must already be an ``http(s)://`` URL or a ``data:image/`` URI: a path must be a ``Path``.
    """
    if isinstance(image, Image):
        return image.uri
    if isinstance(image, str):
        if image.startswith(_HTTP_PREFIXES) or image.lower().startswith(_DATA_PREFIX):
            return image
        raise ValueError(
            f"image string {image[:40]!r} is not an http(s) URL or data URI; "
            "use pathlib.Path(...) or Image.from_path(...) for a local file"
        )
    if isinstance(image, os.PathLike):
        return Image.from_path(image).uri
    if _is_pil_image(image):
        return Image.from_pil(image).uri
    if isinstance(image, (bytes, bytearray, memoryview)):
        raise TypeError("raw bytes are ambiguous: wrap them with Image.from_bytes(...)")
    raise TypeError(f"not an image: {type(image).__name__}")


def pair(text: str, image: ImageLike) -> Item:
    """A text+image input (e.g. a caption with its picture)."""
    if not isinstance(text, str):
        raise TypeError(f"pair(text, image): text must be str, got {type(text).__name__}")
    return Item(text=text, image=to_wire_image(image))


def to_item(value: InputLike) -> str | Item:
    """One input in its wire form: a ``str`` stays text; images become ``Item(image=...)``."""
    if isinstance(value, str):
        return value
    if isinstance(value, Item):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError("raw bytes are ambiguous: wrap them with Image.from_bytes(...) (str is always text)")
    if isinstance(value, Mapping):
        return Item.model_validate(
            {k: (to_wire_image(v) if k == "image" and v is not None else v) for k, v in value.items()}
        )
    return Item(image=to_wire_image(value))


def _is_single_input(value: object) -> bool:
    return isinstance(value, (str, Item, Image, os.PathLike, Mapping)) or _is_pil_image(value)


def to_items(inputs: InputLike | Sequence[InputLike]) -> list[str | Item]:
    """Convert one input or a sequence of inputs to their wire form (always a list)."""
    if _is_single_input(inputs):
        return [to_item(cast("InputLike", inputs))]
    if isinstance(inputs, (bytes, bytearray, memoryview)):
        raise TypeError("raw bytes are ambiguous: wrap them with Image.from_bytes(...)")
    return [to_item(v) for v in cast("Sequence[InputLike]", inputs)]


def item_to_json(item: str | Item) -> str | dict[str, str | float]:
    """The JSON form of a wire input (``None`` fields left out)."""
    if isinstance(item, str):
        return item
    out: dict[str, str | float] = {}
    for key in ("text", "image", "audio", "video", "t0", "t1"):
        value = getattr(item, key)
        if value is not None:
            out[key] = value
    return out


def content_id(data: bytes | str) -> str:
    """A stable id for content: the first 32 hex characters of its SHA-256 (strings hashed as UTF-8)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()[:32]


CLIP_TYPES = {
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".mov": "video/quicktime",
    ".mkv": "video/x-matroska",
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".m4a": "audio/mp4",
}
"""Audio and video files the client sends as data URIs, by extension (the server reads the container from the
bytes, never from this type)."""

ClipLike: TypeAlias = "str | os.PathLike[str]"
"""An audio or video clip: an ``http(s)://`` URL, a ``data:`` URI, a stored ``media://`` clip, or a local file."""


def to_wire_clip(clip: ClipLike, kind: Literal["audio", "video"]) -> str:
    """A clip as the wire takes it: a string as given, a local file read now into a ``data:<kind>/...`` URI."""
    if isinstance(clip, str):
        return clip
    path = Path(clip)
    mime = CLIP_TYPES.get(path.suffix.lower(), f"{kind}/octet-stream")
    if not mime.startswith(kind):
        mime = f"{kind}/{mime.split('/', 1)[1]}"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


@dataclass(slots=True)
class Document:
    """A document to upsert: text, one medium (an image, any :data:`ImageLike`; an audio or video clip, any
    :data:`ClipLike`), or text with it, plus metadata.

        Document("doc-1", text="a red bicycle", image=Path("bike.jpg"), metadata={"shop": "north"})
        Document("talk", video=Path("talk.mp4"))  # indexed as segments when longer than the server's segment

    ``embedding`` stores a precomputed vector instead of embedding the content server-side.
    """

    id: str
    text: str | None = None
    image: ImageLike | None = None
    metadata: dict[str, MetadataValue] = field(default_factory=dict)
    embedding: list[float] | None = None
    modality: Literal["text", "image", "text+image"] | None = None
    """Only for an embedding-only document: the modality its embedding was made from."""
    audio: ClipLike | None = None
    video: ClipLike | None = None

    def to_wire(self) -> UpsertDocument:
        """The ``schemas.UpsertDocument`` sent on the wire (images and clips read and encoded now)."""
        return UpsertDocument.model_construct(
            id=self.id,
            text=self.text,
            image=None if self.image is None else to_wire_image(self.image),
            audio=None if self.audio is None else to_wire_clip(self.audio, "audio"),
            video=None if self.video is None else to_wire_clip(self.video, "video"),
            metadata=dict(self.metadata),
            embedding=self.embedding,
            modality=self.modality,
        )


DocumentLike: TypeAlias = "Document | UpsertDocument | Mapping[str, Any]"
"""A document for upsert: :class:`Document`, a ``schemas.UpsertDocument``, or a mapping with the same keys."""


def to_wire_document(doc: DocumentLike) -> dict[str, Any]:
    """The JSON body of one document (no client-side validation: the server is the authority)."""
    if isinstance(doc, Document):
        wire = doc.to_wire()
    elif isinstance(doc, UpsertDocument):
        wire = doc
    elif isinstance(doc, Mapping):
        d = dict(doc)
        if d.get("image") is not None:
            d["image"] = to_wire_image(d["image"])
        for kind in ("audio", "video"):
            if d.get(kind) is not None:
                d[kind] = to_wire_clip(d[kind], kind)
        return {k: v for k, v in d.items() if v is not None}
    else:
        raise TypeError(f"not a document: {type(doc).__name__}")
    out: dict[str, Any] = {"id": wire.id}
    if wire.text is not None:
        out["text"] = wire.text
    for key in ("image", "audio", "video"):
        if getattr(wire, key) is not None:
            out[key] = getattr(wire, key)
    if wire.metadata:
        out["metadata"] = dict(wire.metadata)
    if wire.embedding is not None:
        out["embedding"] = list(wire.embedding)
    return out
