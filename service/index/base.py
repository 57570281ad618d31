"""Backend-neutral vector index interface: data types, errors and the ``VectorIndex`` contract.

``service.index.factory.open_index`` picks the backend a URI names.

Scores are cosine similarities (callers pass unit-normalised vectors). Filters are applied inside the index query
(pre-filtering), never to an already truncated top-k; see :mod:`service.index.filters` for the filter language.
Backends that can (``keyword_capable``) also answer keyword queries: BM25 over a document's ``text`` and
``ocr_text`` (the text read from its image), with the same filters.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar

import numpy as np
from mmsearch_schema import fields

from service.ocr import OcrLine

Filter = dict[str, Any]
"""Metadata filter: ``{key: scalar | {"$in": [...]} | {"$gt"|"$gte"|"$lt"|"$lte"|"$eq"|"$ne": value}}``."""

DEFAULT_ANN_THRESHOLD = 50_000
MAX_PROPERTY_BYTES = 1 << 20
"""Largest per-collection property (``VectorIndex.write_property``) a backend is asked to keep."""


@dataclass(frozen=True)
class IndexedCollection:
    name: str
    dimension: int
    model: str
    count: int


@dataclass
class IndexRecord:
    id: str
    text: str | None
    image: str | None
    metadata: dict[str, Any]
    embedding: list[float] | None = None
    ocr_text: str | None = None
    """The text read from the document's image (``None``: not read, or no image)."""
    ocr_lines: list[OcrLine] = field(default_factory=list)
    modality: str = ""
    """``text``, ``image`` or ``text+image`` (``mmsearch_schema.fields.modality_of``). On upsert it matters only
    for a document with neither text nor image (the modality its embedding was made from; ``""``: none); when read
    back it is always set from what the row holds."""


@dataclass
class IndexHit:
    id: str
    score: float
    """Cosine similarity for a vector search, BM25 for a keyword search."""
    text: str | None
    image: str | None
    metadata: dict[str, Any]
    ocr_text: str | None = None
    ocr_lines: list[OcrLine] = field(default_factory=list)
    modality: str = ""


def declared_modality(doc: IndexRecord) -> str | None:
    """The modality stored as a reserved filter term: an audio or video row's, or the one an embedding-only
    document declares; else None."""
    if doc.modality in fields.AV_MODALITIES:
        return doc.modality
    return doc.modality or None if doc.text is None and doc.image is None else None


def record_modality(doc: IndexRecord) -> str:
    """The modality a row is stored with (``filters.stored_modality`` reads it back)."""
    if doc.modality in fields.AV_MODALITIES:
        return doc.modality
    return fields.modality_of(doc.text, doc.image, declared_modality(doc))


SEGMENT_SEPARATOR = "\x1f"
CONTINUATION_TERM = "0segment_more"
"""The reserved filter term of a document's segment rows after its first (``service.segments``): counts leave them
out. Their ids are ``<document id>\\x1f<k>``: no document id holds a control character."""


def is_continuation(row_id: str) -> bool:
    return SEGMENT_SEPARATOR in row_id


def document_page(
    rows_after: Callable[[str | None, int], list[str]], after: str | None, limit: int | None, most: int
) -> list[str]:
    """``VectorIndex.ids``' answer from a backend query ``rows_after(bound, n)``: the first ``n`` (at most ``most``)
    row ids after ``bound`` (None: from the first), sorted. Continuation rows are dropped here; as they sort right
    after their document, a page over clips asks twice the ids it still lacks, again from the last row seen until
    it has ``limit`` documents or the rows end."""
    check_id_page(after, limit)
    out: list[str] = []
    last = after
    while limit is None or len(out) < limit:
        n = most if limit is None else min(most, 2 * (limit - len(out)))
        rows = rows_after(last, n)
        out += [r for r in rows if not is_continuation(r)]
        if len(rows) < n:
            break
        last = rows[-1]
    return out if limit is None else out[:limit]


def check_id_page(after: str | None, limit: int | None) -> None:
    if after is not None and not isinstance(after, str):
        raise TypeError(f"after must be a string or None, got {type(after).__name__}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")


def extra_terms(doc: IndexRecord) -> list[str]:
    """Reserved terms a row carries besides ``filters.document_terms`` (a segment row's after the first)."""
    return [CONTINUATION_TERM] if is_continuation(doc.id) else []


def keyword_text(text: str | None, ocr_text: str | None) -> str | None:
    """What keyword search indexes for a document: its text and the text read from its image."""
    parts = [t for t in (text, ocr_text) if t and t.strip()]
    return "\n".join(parts) or None


class CollectionNotFound(Exception):
    """The named collection does not exist."""

    def __init__(self, name: str) -> None:
        super().__init__(f"collection {name!r} does not exist")
        self.name = name


class CollectionMismatch(Exception):
    """The collection exists with a different embedding dimension or model, or was not created by mmsearch."""

    @classmethod
    def foreign(cls, name: str) -> CollectionMismatch:
        return cls(f"collection {name!r} exists but was not created by mmsearch")

    @classmethod
    def embedding(cls, name: str, held: tuple[int, str], requested: tuple[int, str]) -> CollectionMismatch:
        """``held`` and ``requested``: (dimension, model)."""
        return cls(
            f"collection {name!r} holds dimension {held[0]} from model {held[1]!r}; "
            f"requested dimension {requested[0]} from model {requested[1]!r}"
        )


class DimensionMismatch(CollectionMismatch, ValueError):
    """A query vector's dimension differs from the collection's."""


class InvalidFilter(ValueError):
    """A filter is malformed; the message names the offending key or operator."""


class UnsupportedMode(Exception):
    """The backend cannot answer this kind of query (e.g. keyword search on a Milvus 2.3 server)."""

    def __init__(self, backend: str, mode: str) -> None:
        super().__init__(f"the {backend} index backend cannot do {mode} retrieval; use mode 'vector' (or LanceDB)")
        self.backend = backend
        self.mode = mode


class InvalidCollectionName(ValueError):
    """A collection name breaks ``mmsearch_schema.fields.check_collection_name``."""


def check_collection_name(name: str) -> str:
    """The wire schema's rule (``mmsearch_schema.fields``), so that every backend agrees with the API."""
    try:
        return fields.check_collection_name(name)
    except ValueError as e:
        raise InvalidCollectionName(str(e)) from None


def dropped(drop: Callable[[], object], gone: Callable[[Exception], bool]) -> bool:
    """Run a backend's ``drop`` of one collection: True, or False when it fails because ``gone`` says the
    collection no longer exists (another process dropped it first). Any other failure is raised."""
    try:
        drop()
    except Exception as e:
        if gone(e):
            return False
        raise
    return True


def check_collection_args(name: str, dimension: int, model: str) -> None:
    """``ensure_collection``'s arguments: a valid name, a positive integer dimension and a model name."""
    check_collection_name(name)
    if isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 1:
        raise ValueError(f"dimension must be a positive integer, got {dimension!r}")
    if not model:
        raise ValueError("model must be a non-empty string")


def check_ids(ids: Sequence[str]) -> list[str]:
    """Validate document ids (``mmsearch_schema.fields.check_id``: 1-512 characters, no control characters), or
    a segment row's (``<document id>\\x1f<k>``, see ``service.segments``)."""
    if isinstance(ids, str):
        raise TypeError("ids must be a sequence of strings, not a single string")
    out = list(ids)
    for i in out:
        doc_id, sep, k = i.partition(SEGMENT_SEPARATOR) if isinstance(i, str) else (i, "", "")
        try:
            if sep and not (k.isdigit() and k.isascii() and len(i) <= fields.MAX_ID_CHARS):
                limit = fields.MAX_ID_CHARS
                raise ValueError(f"a segment row id is <document id>\\x1f<number>, at most {limit} characters")
            fields.check_id(doc_id)
        except ValueError as e:
            raise ValueError(f"invalid document id {i!r}: {e}") from None
    return out


def prepare_docs(docs: Sequence[IndexRecord], dimension: int) -> list[IndexRecord]:
    """Validate documents for upsert (every stored field by the API's rules) and drop earlier duplicates of an
    id (the last one wins)."""
    latest: dict[str, IndexRecord] = {}
    for doc in docs:
        check_ids([doc.id])
        try:
            fields.check_stored_text(doc.text, "text")
            fields.check_stored_text(doc.image, "image")
            fields.check_metadata(doc.metadata)
        except ValueError as e:
            raise ValueError(f"document {doc.id!r}: {e}") from None
        if doc.modality not in ("", *fields.MODALITIES):
            raise ValueError(f"document {doc.id!r}: unknown modality {doc.modality!r}")
        if doc.embedding is None:
            raise ValueError(f"document {doc.id!r} has no embedding")
        if len(doc.embedding) != dimension:
            raise ValueError(
                f"document {doc.id!r} embedding has dimension {len(doc.embedding)}, collection expects {dimension}"
            )
        if not all(math.isfinite(x) for x in doc.embedding):
            raise ValueError(f"document {doc.id!r} embedding contains NaN or infinite values")
        latest.pop(doc.id, None)  # keep the position of the last occurrence
        latest[doc.id] = doc
    return list(latest.values())


def order_by_ids(ids: Sequence[str], found: dict[str, IndexRecord]) -> list[IndexRecord]:
    """Documents in the order of ``ids``; missing ids are skipped, repeated ids repeat the document."""
    return [found[i] for i in ids if i in found]


class VectorIndex(ABC):
    """A set of named collections of documents with one embedding each, searchable by cosine similarity."""

    backend: ClassVar[str] = "index"
    """The backend's name, as error messages and ``/info`` give it."""
    keyword_capable: ClassVar[bool] = False
    """Whether :meth:`keyword_search` works on this backend."""

    def has_keyword_data(self, name: str) -> bool:
        """Whether keyword search can find anything in the collection (some document has text or OCR text)."""
        return False

    def keyword_search(self, name: str, query: str, k: int, filter: Filter | None = None) -> list[IndexHit]:
        """Top-``k`` documents by BM25 of ``query`` over their text and OCR text (descending), among those matching
        ``filter``; documents matching no query term are not returned."""
        raise UnsupportedMode(self.backend, "keyword")

    def image_refs(self, name: str) -> set[str]:
        """Every distinct stored ``image`` value of the collection (the media garbage collector's mark phase)."""
        raise NotImplementedError(f"{self.backend} cannot list image references")

    def ids(self, name: str, after: str | None = None, limit: int | None = None) -> list[str]:
        """The collection's document ids in id order (code point order, which is UTF-8 byte order): those after
        ``after`` (None: from the first), at most ``limit`` (None: all). A segmented document is listed once, by its
        own id: its continuation rows (``CONTINUATION_TERM``) are not documents. ``/ids``' pages; a reindex reads a
        collection through them, so a page costs one ordered, limited query, not a listing of the collection."""
        raise NotImplementedError(f"{self.backend} cannot list document ids")

    def wait_for_maintenance(self, timeout: float = 60.0) -> bool:
        """Block until background maintenance (ANN index builds, compaction) has nothing running or pending;
        ``False`` on timeout. Writes never wait for it; tests and benchmarks that need the index call this."""
        return True

    @abstractmethod
    def ensure_collection(self, name: str, dimension: int, model: str) -> IndexedCollection:
        """Create the collection on first use; raise ``CollectionMismatch`` if it exists with another dim/model."""

    @abstractmethod
    def get_collection(self, name: str) -> IndexedCollection:
        """Describe a collection (with its current document count); raise ``CollectionNotFound``."""

    @abstractmethod
    def list_collections(self) -> list[IndexedCollection]:
        """All collections created through this layer, sorted by name."""

    @abstractmethod
    def upsert(self, name: str, docs: Sequence[IndexRecord]) -> None:
        """Insert or replace documents by id (embedding required); durable once it returns."""

    @abstractmethod
    def delete(self, name: str, ids: Sequence[str]) -> int:
        """Delete documents by id; return how many existed and were deleted."""

    @abstractmethod
    def get(self, name: str, ids: Sequence[str]) -> list[IndexRecord]:
        """Fetch documents (with embeddings) in the order of ``ids``, skipping missing ones."""

    @abstractmethod
    def search(self, name: str, vector: Sequence[float], k: int, filter: Filter | None = None) -> list[IndexHit]:
        """Top-``k`` documents by cosine similarity (descending), restricted to those matching ``filter``."""

    def vectors(self, name: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors (float32) of the documents of ``ids`` that exist: what the redundancy penalty compares
        (``service.redundancy``). A backend may answer from memory; this default reads the documents."""
        return {r.id: np.asarray(r.embedding, dtype=np.float32) for r in self.get(name, ids) if r.embedding is not None}

    def modality_sample(self, name: str, modality: str, n: int) -> tuple[int, np.ndarray]:
        """How many documents of ``modality`` (``""``: unlabelled) the collection holds, and up to ``n`` of their
        vectors (``(m, dimension)`` float32): balanced retrieval's collection statistics."""
        raise NotImplementedError(f"{self.backend} cannot sample a modality")

    def search_by_modality(
        self, name: str, vector: Sequence[float], k: int, modalities: Sequence[str], filter: Filter | None = None
    ) -> dict[str, list[IndexHit]]:
        """Top-``k`` by cosine within each modality, each restricted by ``filter`` too (its own ``$modality``
        condition is replaced). One filtered search per modality, run concurrently (backends do the work outside
        the GIL or over the network); a backend may answer all at once."""
        rest = {key: v for key, v in (filter or {}).items() if key != fields.MODALITY_FILTER_KEY}
        if len(modalities) <= 1:
            return {m: self.search(name, vector, k, {**rest, fields.MODALITY_FILTER_KEY: m}) for m in modalities}
        futures = {
            m: _modality_pool().submit(self.search, name, vector, k, {**rest, fields.MODALITY_FILTER_KEY: m})
            for m in modalities
        }
        return {m: f.result() for m, f in futures.items()}

    def read_property(self, name: str, key: str) -> str | None:
        """A per-collection property stored with the collection (``write_property``), ``None`` if unset; it goes
        when the collection is dropped. Raises ``CollectionNotFound``."""
        raise NotImplementedError(f"{self.backend} cannot store collection properties")

    def write_property(self, name: str, key: str, value: str | None) -> None:
        """Store (``None``: remove) a small per-collection property (at most ``MAX_PROPERTY_BYTES``), durable once
        it returns and seen by every process sharing the storage. Raises ``CollectionNotFound``."""
        raise NotImplementedError(f"{self.backend} cannot store collection properties")

    @abstractmethod
    def drop_collection(self, name: str) -> bool:
        """Delete a collection and its documents; return whether it existed. Every process sharing the storage
        sees it gone (and a re-created collection of that name as new) on its next call."""

    @abstractmethod
    def close(self) -> None:
        """Release resources; the object must not be used afterwards."""

    def __enter__(self) -> VectorIndex:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


_pool: ThreadPoolExecutor | None = None


def _modality_pool() -> ThreadPoolExecutor:
    """Threads shared by every index's per-modality searches (a search's few draws run side by side)."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="modality-search")
    return _pool


def check_property(key: str, value: str | None) -> None:
    if not key.startswith("mmsearch."):
        raise ValueError(f"collection property keys start with 'mmsearch.' (got {key!r})")
    if value is not None and len(value.encode()) > MAX_PROPERTY_BYTES:
        raise ValueError(f"a collection property is at most {MAX_PROPERTY_BYTES} bytes")


def check_search_args(vector: Sequence[float], k: int, dimension: int) -> list[float]:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    vec = [float(x) for x in vector]
    if len(vec) != dimension:
        raise DimensionMismatch(f"query vector has dimension {len(vec)}, collection expects {dimension}")
    if not all(math.isfinite(x) for x in vec):
        raise ValueError("query vector contains NaN or infinite values")
    return vec
