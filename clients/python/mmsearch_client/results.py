"""Client-side result types (the wire responses themselves are in :mod:`mmsearch_client.schemas`)."""

from __future__ import annotations

import array
import base64
import binascii
import sys
from dataclasses import dataclass, field

from pydantic import BaseModel

from mmsearch_client.errors import MMSearchError

__all__ = ["BatchFailure", "EncodeResult", "HealthStatus", "UpsertSummary", "decode_embedding"]


def decode_embedding(data: str) -> list[float]:
    """Decode one base64 string of little-endian float32 values."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"invalid base64 embedding: {e}") from None
    if len(raw) % 4:
        raise ValueError(f"base64 embedding is {len(raw)} bytes, not a multiple of 4")
    values = array.array("f")
    values.frombytes(raw)
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()


class EncodeResult(BaseModel):
    """Embeddings in input order, as float lists (``len(embeddings[i]) == dimensions``)."""

    embeddings: list[list[float]]
    model: str
    dimensions: int

    def __len__(self) -> int:
        return len(self.embeddings)


@dataclass(frozen=True, slots=True)
class HealthStatus:
    """Liveness and readiness of the service; truthy when it is ready to serve.

    ``detail`` explains a failed probe (the server's message or the connection error).
    """

    live: bool
    ready: bool
    detail: str | None = None

    def __bool__(self) -> bool:
        return self.live and self.ready


@dataclass(frozen=True, slots=True)
class BatchFailure:
    """Documents that ``upsert_many`` could not store, and why."""

    ids: list[str]
    error: MMSearchError

    @property
    def message(self) -> str:
        return str(self.error)


@dataclass(slots=True)
class UpsertSummary:
    """What ``upsert_many`` did: ``upserted`` documents stored, ``failed`` not, with each failure's reason."""

    collection: str
    upserted: int = 0
    failed: int = 0
    batches: int = 0
    ids: list[str] = field(default_factory=list)
    failures: list[BatchFailure] = field(default_factory=list)
    ocr_images: int = 0
    """Images whose text the server read (OCR) while ingesting them."""
    ocr_lines: int = 0

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def __str__(self) -> str:
        return f"upserted {self.upserted}, failed {self.failed} ({self.batches} batches) into {self.collection!r}"
