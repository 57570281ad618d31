"""Rules for what a collection may store: names, ids, texts, image references and metadata.

One definition, used by the wire schema (so a request that breaks a rule is refused with the field named, and
the client can check before sending) and by the service's index layer (so no other path can store what the API
would refuse). The limits are those of the strictest backend (a Milvus ``VARCHAR`` holds 65,535 bytes, a ``JSON``
value 65,536 bytes, an ``ARRAY`` 4,096 elements), applied on every backend so that all of them agree.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

__all__ = [
    "AV_MODALITIES",
    "COLLECTION_NAME_RE",
    "INT64",
    "MAX_ID_CHARS",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_KEYS",
    "MAX_METADATA_LIST",
    "MAX_METADATA_VALUES",
    "MAX_STORED_TEXT_BYTES",
    "METADATA_KEY_RE",
    "MODALITIES",
    "MODALITY_FILTER_KEY",
    "check_av_ref",
    "check_collection_name",
    "check_declared_modality",
    "check_id",
    "check_metadata",
    "check_stored_text",
    "modality_of",
]

COLLECTION_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
"""Collection names (matched whole: no trailing newline slips through ``$``)."""
METADATA_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
"""Metadata keys, which are also filter keys."""
MAX_ID_CHARS = 512
MAX_STORED_TEXT_BYTES = 65_535
"""A stored ``text`` or image reference, in UTF-8 bytes."""
MAX_METADATA_KEYS = 64
MAX_METADATA_LIST = 1024
"""Elements of one list value."""
MAX_METADATA_VALUES = 4096
"""Keys plus distinct list elements of one document: each is a filter term."""
MAX_METADATA_BYTES = 65_536
"""A document's metadata as compact JSON."""
INT64 = (-(2**63), 2**63 - 1)
AV_MODALITIES = ("audio", "video", "text+audio", "text+video")
"""The modalities of audio and video documents (with or without text)."""
MODALITIES = ("text", "image", "text+image", *AV_MODALITIES)
"""A stored document's modality: what it holds (``text``, ``image``, ``audio``, ``video``, or text with one of
them). A document that brings only its embedding holds none: it has the modality it declares, or none (``""``,
the *unlabelled* group)."""
MODALITY_FILTER_KEY = "$modality"
"""The filter key that selects documents by modality (``{"$modality": "image"}``; ``$in`` and ``$ne`` work too).
Not a metadata key (those cannot start with ``$``), so it never clashes with a document's own metadata."""


def modality_of(text: str | None, image: str | None, declared: str | None = None) -> str:
    """A document's modality from what it stores: ``text``, ``image``, ``text+image``, or for an embedding-only
    document the one it declared (``""`` when none)."""
    if text is not None and image is not None:
        return "text+image"
    if image is not None:
        return "image"
    if text is not None:
        return "text"
    return declared or ""


def check_declared_modality(text: str | None, image: str | None, declared: str | None) -> str | None:
    """A declared modality must be one of ``MODALITIES`` and agree with the content, if the document has some."""
    if declared is None:
        return None
    if declared not in MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)} (got {declared!r})")
    held = modality_of(text, image)
    if held and held != declared:
        raise ValueError(f"modality {declared!r} contradicts the document's content ({held})")
    return declared


def check_av_ref(value: str, kind: str) -> str:
    """An ``audio``/``video`` reference: an ``http(s)://`` URL or a ``data:<kind>/...;base64,`` URI (the server
    reads nothing else: never a path)."""
    head = value[:64].lower()
    if head.startswith(("http://", "https://")):
        return value
    if head.startswith(f"data:{kind}/") and ";base64," in head:
        return value
    if _STORED_AV.fullmatch(value):
        return value
    raise ValueError(
        f"{kind} must be an http(s):// URL, a data:{kind}/...;base64, URI or a stored clip's media://<sha256>.<ext>"
    )


_STORED_AV = re.compile(r"media://[0-9a-f]{64}\.(?:mp4|webm|mov|mkv|wav|flac|mp3|ogg|m4a)")


def _has_control(s: str) -> bool:
    return any(unicodedata.category(c) in ("Cc", "Cs") for c in s)


def check_collection_name(name: Any) -> str:
    if not isinstance(name, str) or not COLLECTION_NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid collection name {name!r}: 1-64 characters, a letter first, then letters, digits or '_'"
        )
    return name


def check_id(value: Any) -> str:
    """A document id: 1-512 characters, no control characters (newlines, tabs, NUL...)."""
    if not isinstance(value, str) or not value:
        raise ValueError("ids are non-empty strings")
    if len(value) > MAX_ID_CHARS:
        raise ValueError(f"ids have at most {MAX_ID_CHARS} characters (got {len(value)})")
    if _has_control(value):
        raise ValueError("ids must not contain control characters (newline, tab, NUL, ...)")
    return value


def check_stored_text(value: str | None, what: str = "text") -> str | None:
    """A stored text or image reference: at most ``MAX_STORED_TEXT_BYTES`` UTF-8 bytes."""
    if value is None:
        return None
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode (lone surrogate)") from None
    if size > MAX_STORED_TEXT_BYTES:
        raise ValueError(f"{what} is stored as at most {MAX_STORED_TEXT_BYTES} UTF-8 bytes (got {size})")
    return value


def _check_scalar(key: str, value: Any) -> None:
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if not INT64[0] <= value <= INT64[1]:
            raise ValueError(f"metadata[{key!r}]: integers must fit in 64 bits (got {value})")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"metadata[{key!r}]: numbers must be finite (got {value})")
    elif isinstance(value, str):
        check_stored_text(value, f"metadata[{key!r}]")
    else:
        raise ValueError(f"metadata[{key!r}]: values are strings, numbers, booleans, null or lists of those")


def check_metadata(metadata: Any) -> dict[str, Any]:
    """Metadata a document may store: at most ``MAX_METADATA_KEYS`` keys matching ``METADATA_KEY_RE``, scalar or
    list values (lists of at most ``MAX_METADATA_LIST``), finite numbers, 64-bit integers, at most
    ``MAX_METADATA_VALUES`` values and ``MAX_METADATA_BYTES`` of JSON in all."""
    if not isinstance(metadata, Mapping):
        raise ValueError("metadata must be an object")
    if len(metadata) > MAX_METADATA_KEYS:
        raise ValueError(f"metadata has at most {MAX_METADATA_KEYS} keys (got {len(metadata)})")
    values = 0
    for key, value in metadata.items():
        if not isinstance(key, str) or not METADATA_KEY_RE.fullmatch(key):
            raise ValueError(f"metadata key {key!r}: use 1-64 letters, digits or '_' (not starting with a digit)")
        if isinstance(value, list | tuple):
            if len(value) > MAX_METADATA_LIST:
                raise ValueError(f"metadata[{key!r}]: lists have at most {MAX_METADATA_LIST} elements")
            for item in value:
                if isinstance(item, list | tuple | Mapping):
                    raise ValueError(f"metadata[{key!r}]: list elements are strings, numbers or booleans")
                _check_scalar(key, item)
            values += 1 + len(value)
        else:
            _check_scalar(key, value)
            values += 2
    if values > MAX_METADATA_VALUES:
        raise ValueError(f"metadata holds at most {MAX_METADATA_VALUES} keys and values in all (got {values})")
    size = len(json.dumps(dict(metadata), ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is at most {MAX_METADATA_BYTES} bytes as JSON (got {size})")
    return dict(metadata)
