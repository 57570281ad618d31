"""Milvus backend: Milvus Lite (``*.db`` path, embedded, one process per file) or a Milvus server (http/https).

* One Milvus collection per collection: ``id`` VARCHAR(512) primary key, ``vector`` FLOAT_VECTOR, ``text``/``image``
  VARCHAR(65535 bytes), ``metadata`` JSON and ``terms`` ARRAY<VARCHAR> of filter terms. Model, dimension and format
  are collection properties (Milvus Lite does not persist the description).
* Format 2 (current): ``text``/``image`` are not nullable (nullable fields arrived in Milvus 2.5; the 2.3 server
  refuses a batch mixing null and non-null values) and ``has_text``/``has_image`` BOOL fields say which are
  present. Format 1 collections (nullable ``text``/``image``, written by Milvus Lite before) are read and written
  as they are.
* Filters compile to ``array_contains``/``array_contains_any`` on ``terms`` and ``metadata["key"]`` comparisons
  (see :mod:`service.index.filters`) and are passed as the search ``filter``: Milvus evaluates them before the
  top-k (Milvus Lite builds a row mask and hands it to the brute-force/FAISS search).
* Index: FLAT (exact) cosine. On a Milvus server, once a write takes a collection past ``ann_threshold`` rows,
  the background maintenance thread (:mod:`service.index.maintenance`; the upsert itself returns at once)
  releases it, seals its segments (flush), swaps the index for HNSW (M=16, efConstruction=200) and reloads it
  (searched with ``ef >= 200``; the server falls back to brute force for selective filters); searches and this
  process's writes meanwhile wait for the reload (a failed swap is retried with backoff). Rows written later sit
  in growing segments until Milvus seals them:
  those are searched exactly only with ``queryNode.segcore.interimIndex.enableIndex=false`` on the server (its
  default interim IVF index measured recall@10 0.47; see deploy/kubernetes/README.md). Milvus Lite stays FLAT at
  any size: its FAISS HNSW misses the matches of selective filters, and its per-row Python overhead dominates
  search time anyway.
* Read-your-writes across processes without Strong searches: a write (upsert, delete) is acknowledged only after
  one Strong read of the ids it wrote, which returns once the query node has applied it (about one time tick,
  ~200 ms); every other read uses Bounded consistency, which then sees it, at ~3 ms instead of ~200-400 ms per
  Strong search. Measured on 2.3.5: with a Session-consistency wait instead, 20 of 20 deletes were still visible
  to the next Bounded read (inserts and replacements were not); with the Strong wait, 0 of 20. A server
  acknowledges a write once it is in its WAL. Milvus Lite appends each write to its WAL and flushes it to the OS
  before answering.
* No stale per-process state: dimension, format, load state and index type are cached per collection name, and
  dropped and re-learnt when the server says the collection is gone, not loaded or of another dimension (another
  process dropped or re-created it).
* Document ids reach expressions as string literals escaped here, never through pymilvus' ``ids=`` helpers
  (which do not escape quotes or newlines).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from mmsearch_schema import fields
from pymilvus import DataType, MilvusClient, MilvusException

from service.index import base, filters
from service.index.base import Filter, IndexedCollection, IndexHit, IndexRecord, VectorIndex
from service.index.maintenance import Maintenance

log = logging.getLogger(__name__)
T = TypeVar("T")

MODEL_PROP = "mmsearch.model"
DIMENSION_PROP = "mmsearch.dimension"
FORMAT_PROP = "mmsearch.format"
FORMAT_VERSION = "2"
HAS_TEXT = "has_text"
HAS_IMAGE = "has_image"
VECTOR = "vector"
TERMS = "terms"
METADATA = "metadata"
MAX_VARCHAR_BYTES = 65_535
MAX_TOPK = 16_384
ID_CHUNK = 1000
MAX_BATCH_BYTES = 16 * 1024 * 1024
HNSW_BUILD = {"M": 16, "efConstruction": 200}
MIN_EF = 200
# A filter leaves HNSW fewer neighbours that pass: a filtered search explores wider (recall@10 at a 10 % filter on
# 10k random 64-d vectors: 0.945-1.0 with ef 200 across graph builds; tests/test_index_exactness.py).
MIN_FILTERED_EF = 800
LITE_LOCK_WAIT_S = 5.0
INDEX_BUILD_TIMEOUT_S = 3600.0
LITE_FLUSH_ROWS = 1024

_lite_registry_lock = threading.Lock()
_lite_registry: dict[str, tuple[int, threading.RLock]] = {}


def _string_literal(value: str) -> str:
    """A double-quoted Milvus expression string literal for arbitrary text."""
    escaped = (
        value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    )
    return f'"{escaped}"'


def _ids_expr(ids: Sequence[str]) -> str:
    return f"id in [{', '.join(_string_literal(i) for i in ids)}]"


def _lite_locked_elsewhere(path: str) -> bool:
    lock_path = os.path.join(path, "LOCK")
    if not os.path.exists(lock_path):
        return False
    fd = os.open(lock_path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _acquire_lite(path: str) -> threading.RLock:
    """Start (or reuse) this process's Milvus Lite server for ``path``; wait briefly if another process holds it."""
    with _lite_registry_lock:
        refs, lock = _lite_registry.get(path, (0, threading.RLock()))
        if refs == 0:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            deadline = time.monotonic() + LITE_LOCK_WAIT_S
            while _lite_locked_elsewhere(path):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"Milvus Lite file {path!r} is in use by another process; Milvus Lite serves one process "
                        "per file (use LanceDB or a Milvus server for several workers)"
                    )
                time.sleep(0.1)
        _lite_registry[path] = (refs + 1, lock)
        return lock


def _release_lite(path: str) -> None:
    with _lite_registry_lock:
        refs, lock = _lite_registry.get(path, (1, threading.RLock()))
        if refs > 1:
            _lite_registry[path] = (refs - 1, lock)
            return
        _lite_registry.pop(path, None)
        try:
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(path)  # frees the file for other processes
        except ImportError:
            pass


@dataclass(frozen=True)
class _Meta:
    """What this process knows about one collection."""

    dimension: int
    model: str
    format: str


_GONE = ("collection not found", "can't find collection", "does not exist")


class _StaleView(Exception):
    """This process's description of a collection no longer matches the server's."""


def _stale(e: MilvusException) -> bool:
    """The server's answer when this process's view of a collection is out of date."""
    text = str(e).lower()
    return any(marker in text for marker in (*_GONE, "not loaded", "dimension", "dim (", "schema"))


def _gone(e: Exception) -> bool:
    """The server's answer about a collection that does not exist (any more)."""
    return isinstance(e, MilvusException) and any(marker in str(e).lower() for marker in _GONE)


class MilvusIndex(VectorIndex):
    backend = "milvus"

    def __init__(self, uri: str, *, ann_threshold: int) -> None:
        self._ann_threshold = ann_threshold
        self._lite_path = None if uri.startswith(("http://", "https://")) else uri
        self._write_lock = _acquire_lite(uri) if self._lite_path else threading.RLock()
        try:
            self._client = MilvusClient(uri=uri)
        except Exception:
            if self._lite_path:
                _release_lite(self._lite_path)
            raise
        self._closed = False
        # Reads: Bounded on a server (every acknowledged write is already served, see the module docstring);
        # Milvus Lite answers every read from its own state.
        self._read: dict[str, Any] = {} if self._lite_path else {"consistency_level": "Bounded"}
        self._known: dict[str, _Meta] = {}
        self._loaded: set[str] = set()
        self._ann: set[str] = set()
        self._unflushed: dict[str, int] = {}
        self._maintenance = Maintenance(self._maintain, thread_name="milvus-maintenance")

    # --- collections ------------------------------------------------------------------------------------------

    def _describe(self, name: str) -> _Meta | None:
        """The collection's mmsearch properties; None if it is not an mmsearch collection."""
        props = self._client.describe_collection(name).get("properties") or {}
        if MODEL_PROP not in props or DIMENSION_PROP not in props:
            return None
        return _Meta(int(props[DIMENSION_PROP]), str(props[MODEL_PROP]), str(props.get(FORMAT_PROP, "1")))

    def _forget(self, name: str) -> None:
        self._known.pop(name, None)
        self._loaded.discard(name)
        self._ann.discard(name)

    def _meta(self, name: str) -> _Meta:
        base.check_collection_name(name)
        known = self._known.get(name)
        if known is not None:
            return known
        if not self._client.has_collection(name):
            raise base.CollectionNotFound(name)
        try:
            described = self._describe(name)
        except MilvusException as e:
            if _gone(e):
                raise base.CollectionNotFound(name) from None
            raise
        if described is None:
            raise base.CollectionNotFound(name)
        self._known[name] = described
        return described

    def _fresh(self, name: str, op: Callable[[_Meta], T]) -> T:
        """Run ``op`` with the cached description; if the server (or the dimension check) says the cache is stale,
        forget it and run once more with a fresh one."""
        try:
            return op(self._meta(name))
        except (MilvusException, base.DimensionMismatch, _StaleView) as e:
            if isinstance(e, MilvusException) and not _stale(e):
                raise
            self._forget(name)
        try:
            return op(self._meta(name))
        except MilvusException as e:
            if _gone(e):
                self._forget(name)
                raise base.CollectionNotFound(name) from None
            raise

    def _ensure_loaded(self, name: str) -> None:
        if name in self._loaded:
            return
        deadline = time.monotonic() + INDEX_BUILD_TIMEOUT_S
        while True:
            index = self._client.describe_index(name, VECTOR)
            state = str(index.get("state", "Finished"))
            if index and not state.endswith("Finished"):
                # Another process is swapping the index (release, rebuild, load): wait for it to reload.
                if time.monotonic() > deadline:
                    raise RuntimeError(f"index of collection {name!r} not built in time ({state})")
                time.sleep(0.2)
                if self._load_state(name) == "Loaded":
                    break
                continue
            if self._load_state(name) != "Loaded":
                self._client.load_collection(name)
            break
        index_type = str(self._client.describe_index(name, VECTOR).get("index_type", "")).upper()
        if index_type not in ("FLAT", ""):
            self._ann.add(name)
        self._loaded.add(name)

    def _load_state(self, name: str) -> str:
        state = self._client.get_load_state(name).get("state")
        return str(getattr(state, "name", state))

    def _count(self, name: str) -> int:
        self._ensure_loaded(name)
        rows = self._client.query(name, filter="", output_fields=["count(*)"], **self._read)
        return int(rows[0]["count(*)"]) if rows else 0

    def _documents(self, name: str) -> int:
        """Rows less a segmented document's continuation rows (``service.segments``): the documents."""
        rows = self._count(name)
        if not rows:
            return 0
        expr = f'array_contains({TERMS}, "{base.CONTINUATION_TERM}")'
        more = self._client.query(name, filter=expr, output_fields=["count(*)"], **self._read)
        return rows - (int(more[0]["count(*)"]) if more else 0)

    def _create(self, name: str, dimension: int, model: str, fmt: str = FORMAT_VERSION) -> None:
        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=fields.MAX_ID_CHARS)
        schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=dimension)
        nullable = fmt == "1"
        schema.add_field("text", DataType.VARCHAR, max_length=MAX_VARCHAR_BYTES, nullable=nullable)
        schema.add_field("image", DataType.VARCHAR, max_length=MAX_VARCHAR_BYTES, nullable=nullable)
        if not nullable:
            schema.add_field(HAS_TEXT, DataType.BOOL)
            schema.add_field(HAS_IMAGE, DataType.BOOL)
        schema.add_field(METADATA, DataType.JSON)
        schema.add_field(
            TERMS,
            DataType.ARRAY,
            element_type=DataType.VARCHAR,
            max_capacity=filters.MAX_TERMS_PER_DOCUMENT,
            max_length=filters.MAX_TERM_CHARS,
        )
        self._client.create_collection(
            name,
            schema=schema,
            consistency_level="Strong" if self._lite_path else "Bounded",
            properties={MODEL_PROP: model, DIMENSION_PROP: str(dimension), FORMAT_PROP: fmt},
        )
        self._build_index(name, "FLAT", {})
        self._ensure_loaded(name)

    def _build_index(self, name: str, index_type: str, params: dict[str, Any]) -> None:
        """Create the vector index and wait for it (pymilvus' own wait sleeps 0.5 s before its first check)."""
        index_params = self._client.prepare_index_params()
        index_params.add_index(VECTOR, index_name=VECTOR, index_type=index_type, metric_type="COSINE", params=params)
        self._client.create_index(name, index_params, sync=False)
        deadline = time.monotonic() + INDEX_BUILD_TIMEOUT_S
        delay = 0.005
        while True:
            state = str(self._client.describe_index(name, VECTOR).get("state", "Finished"))
            if state.endswith("Finished"):
                return
            if state.endswith("Failed") or time.monotonic() > deadline:
                raise RuntimeError(f"building the {index_type} index of collection {name!r} failed ({state})")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def ensure_collection(self, name: str, dimension: int, model: str) -> IndexedCollection:
        base.check_collection_args(name, dimension, model)
        with self._write_lock:
            if not self._client.has_collection(name):
                self._forget(name)
                try:
                    self._create(name, dimension, model)
                except MilvusException:
                    if not self._client.has_collection(name):  # not a concurrent create: a real error
                        raise
            described = self._describe(name)
            if described is None:
                raise base.CollectionMismatch.foreign(name)
            if (described.dimension, described.model) != (dimension, model):
                self._forget(name)
                raise base.CollectionMismatch.embedding(
                    name, (described.dimension, described.model), (dimension, model)
                )
            if self._known.get(name) != described:
                self._forget(name)  # re-created elsewhere since we last looked
            self._known[name] = described
            return IndexedCollection(name=name, dimension=dimension, model=model, count=self._fresh_count(name))

    def _fresh_count(self, name: str) -> int:
        return self._fresh(name, lambda _: self._documents(name))

    def get_collection(self, name: str) -> IndexedCollection:
        meta = self._meta(name)
        count = self._fresh_count(name)
        meta = self._known.get(name, meta)
        return IndexedCollection(name=name, dimension=meta.dimension, model=meta.model, count=count)

    def list_collections(self) -> list[IndexedCollection]:
        infos = []
        for name in sorted(self._client.list_collections()):
            try:
                infos.append(self.get_collection(name))
            except (base.CollectionNotFound, ValueError):
                continue  # not ours, or dropped meanwhile
        return infos

    def read_property(self, name: str, key: str) -> str | None:
        """Properties are Milvus collection properties (kept by Milvus Lite and servers alike)."""
        base.check_property(key, None)

        def read(_: _Meta) -> str | None:
            props = self._client.describe_collection(name).get("properties") or {}
            return str(props.get(key) or "") or None

        return self._fresh(name, read)

    def write_property(self, name: str, key: str, value: str | None) -> None:
        base.check_property(key, value)
        with self._write_lock:
            self._fresh(name, lambda _: self._client.alter_collection_properties(name, properties={key: value or ""}))

    def drop_collection(self, name: str) -> bool:
        base.check_collection_name(name)
        with self._write_lock:
            self._forget(name)
            self._unflushed.pop(name, None)
            self._maintenance.forget(name)
            if not self._client.has_collection(name):
                return False
            if self._describe(name) is None:
                raise base.CollectionMismatch.foreign(name)
            return base.dropped(lambda: self._client.drop_collection(name), _gone)

    # --- documents --------------------------------------------------------------------------------------------

    def _row(self, doc: IndexRecord, meta: _Meta) -> dict[str, Any]:
        for field_name, value in (("text", doc.text), ("image", doc.image)):
            if value is not None and len(value.encode("utf-8", "surrogatepass")) > MAX_VARCHAR_BYTES:
                raise ValueError(f"document {doc.id!r} {field_name} exceeds {MAX_VARCHAR_BYTES} bytes (Milvus limit)")
        try:
            json.dumps(doc.metadata, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"document {doc.id!r} metadata is not JSON-serialisable: {e}") from e
        assert doc.embedding is not None
        row: dict[str, Any] = {
            "id": doc.id,
            VECTOR: [float(x) for x in doc.embedding],
            "text": doc.text,
            "image": doc.image,
            METADATA: doc.metadata,
            TERMS: filters.document_terms(doc.metadata, base.declared_modality(doc)) + base.extra_terms(doc),
        }
        if meta.format != "1":
            row.update(text=doc.text or "", image=doc.image or "")
            row.update({HAS_TEXT: doc.text is not None, HAS_IMAGE: doc.image is not None})
        return row

    def _content_fields(self, meta: _Meta) -> list[str]:
        return ["text", "image", METADATA, TERMS] + ([] if meta.format == "1" else [HAS_TEXT, HAS_IMAGE])

    @staticmethod
    def _content(entity: dict[str, Any], meta: _Meta) -> tuple[str | None, str | None]:
        if meta.format == "1":
            return entity.get("text"), entity.get("image")
        return (
            entity.get("text") if entity.get(HAS_TEXT) else None,
            entity.get("image") if entity.get(HAS_IMAGE) else None,
        )

    def _await_visible(self, name: str, probe_id: str) -> None:
        """Return once the query node has applied every write acknowledged so far (a Strong read waits for it), so
        that Bounded reads by any process include them."""
        if not self._lite_path:
            self._client.query(
                name, filter=_ids_expr([probe_id]), output_fields=["id"], limit=1, consistency_level="Strong"
            )

    def upsert(self, name: str, docs: Sequence[IndexRecord]) -> None:
        with self._write_lock:
            self._fresh(name, lambda meta: self._upsert(name, docs, meta))

    def _upsert(self, name: str, docs: Sequence[IndexRecord], meta: _Meta) -> None:
        rows = [self._row(d, meta) for d in base.prepare_docs(docs, meta.dimension)]
        if not rows:
            return
        self._ensure_loaded(name)
        batch: list[dict[str, Any]] = []
        size = 0
        for row in rows:
            row_size = 4 * meta.dimension + len(row["text"] or "") + len(row["image"] or "") + 64 * len(row[TERMS])
            if batch and size + row_size > MAX_BATCH_BYTES:
                self._client.upsert(name, batch)
                batch, size = [], 0
            batch.append(row)
            size += row_size
        self._client.upsert(name, batch)
        self._await_visible(name, rows[-1]["id"])
        if self._lite_path:
            # Milvus Lite searches its in-memory table row by row in Python (~20 ms per 1k rows); sealing it
            # into a segment keeps searches fast. It would otherwise only flush at 128 MiB.
            pending = self._unflushed.get(name, 0) + len(rows)
            if pending >= LITE_FLUSH_ROWS:
                self._client.flush(name)
                pending = 0
            self._unflushed[name] = pending
        else:
            self._maintenance.wrote(name)  # the HNSW swap past the threshold: in the background (_maintain)

    def _maintain(self, name: str, writes: int, failures: int) -> bool:
        """Background (:mod:`service.index.maintenance`): swap FLAT for HNSW once the collection is past the
        threshold. The count is read without the writers' lock; the swap holds it, because the collection is
        released meanwhile and a write could not be acknowledged (its Strong read needs the collection loaded)."""
        if self._closed:
            return True
        try:
            if name in self._ann or self._fresh(name, lambda _: self._count(name)) <= self._ann_threshold:
                return True
            with self._write_lock:
                self._fresh(name, lambda _: self._maybe_build_ann(name))
        except base.CollectionNotFound:
            self._maintenance.forget(name)
        return True

    def wait_for_maintenance(self, timeout: float = 60.0) -> bool:
        return self._maintenance.wait_idle(timeout)

    def _maybe_build_ann(self, name: str) -> None:
        if self._lite_path:
            # Milvus Lite's FAISS HNSW applies filters as an ID selector during graph traversal and misses matches
            # of selective filters (measured: a 1-in-3000 filter returned nothing), and its per-row Python
            # overhead dominates search time anyway. Lite therefore stays exact (FLAT) at any size.
            return
        if name in self._ann or self._count(name) <= self._ann_threshold:
            return
        if str(self._client.describe_index(name, VECTOR).get("index_type", "")).upper() not in ("FLAT", ""):
            self._ann.add(name)  # swapped by another process
            return
        log.info("switching collection %r to an HNSW index", name)
        self._client.release_collection(name)
        self._loaded.discard(name)
        self._client.flush(name)  # seal the rows written so far, so that the HNSW index covers them
        self._client.drop_index(name, VECTOR)
        self._build_index(name, "HNSW", HNSW_BUILD)
        self._ensure_loaded(name)
        self._ann.add(name)

    def _query_ids(self, name: str, ids: list[str], fields: list[str]) -> list[dict[str, Any]]:
        self._ensure_loaded(name)
        unique = list(dict.fromkeys(ids))
        rows: list[dict[str, Any]] = []
        for start in range(0, len(unique), ID_CHUNK):
            chunk = unique[start : start + ID_CHUNK]
            rows.extend(
                self._client.query(name, filter=_ids_expr(chunk), output_fields=fields, limit=len(chunk), **self._read)
            )
        return rows

    def delete(self, name: str, ids: Sequence[str]) -> int:
        wanted = base.check_ids(ids)
        with self._write_lock:
            return self._fresh(name, lambda _: self._delete(name, wanted))

    def _delete(self, name: str, wanted: list[str]) -> int:
        existing = [row["id"] for row in self._query_ids(name, wanted, ["id"])]
        for start in range(0, len(existing), ID_CHUNK):
            self._client.delete(name, filter=_ids_expr(existing[start : start + ID_CHUNK]))
        if existing:
            self._await_visible(name, existing[-1])
        return len(existing)

    def get(self, name: str, ids: Sequence[str]) -> list[IndexRecord]:
        wanted = base.check_ids(ids)
        return self._fresh(name, lambda meta: self._get(name, wanted, meta))

    def image_refs(self, name: str) -> set[str]:
        def scan(meta: _Meta) -> set[str]:
            rows = self._scan(name, self._content_fields(meta))
            return {image for _, image in (self._content(row, meta) for row in rows) if image}

        return self._fresh(name, scan)

    def ids(self, name: str, after: str | None = None, limit: int | None = None) -> list[str]:
        """Queries ``id > bound`` in iterator mode: Milvus then merges the segments' rows by primary key and answers
        the smallest (pymilvus's query iterator relies on it; without it Milvus Lite answered any ``limit`` matching
        rows, unordered). Continuation rows are dropped by id (``base.document_page``): a filter on the terms array
        made a page over 100k rows take 1.4 s on Milvus Lite instead of 0.3 s."""

        def rows_after(bound: str | None, n: int) -> list[str]:
            expr = 'id != ""' if bound is None else f"id > {_string_literal(bound)}"
            rows = self._client.query(name, filter=expr, output_fields=["id"], limit=n, iterator="True", **self._read)
            return sorted(str(row["id"]) for row in rows)

        def page(_: _Meta) -> list[str]:
            self._ensure_loaded(name)
            return base.document_page(rows_after, after, limit, MAX_TOPK)

        return self._fresh(name, page)

    def _scan(self, name: str, fields: list[str]) -> Iterator[dict[str, Any]]:
        """Every row of ``name`` with ``fields``, a thousand rows per query."""
        self._ensure_loaded(name)
        it = self._client.query_iterator(name, batch_size=1000, filter='id != ""', output_fields=fields)
        try:
            while batch := it.next():
                yield from batch
        finally:
            it.close()

    def _get(self, name: str, wanted: list[str], meta: _Meta) -> list[IndexRecord]:
        rows = self._query_ids(name, wanted, ["id", VECTOR, *self._content_fields(meta)])
        found = {}
        for row in rows:
            text, image = self._content(row, meta)
            found[row["id"]] = IndexRecord(
                id=row["id"],
                text=text,
                image=image,
                metadata=dict(row.get(METADATA) or {}),
                embedding=[float(x) for x in row[VECTOR]],
                modality=filters.stored_modality(text, image, row.get(TERMS)),
            )
        return base.order_by_ids(wanted, found)

    def search(self, name: str, vector: Sequence[float], k: int, filter: Filter | None = None) -> list[IndexHit]:
        clauses = filters.parse_filter(filter)
        return self._fresh(name, lambda meta: self._search(name, vector, k, self._expr(clauses, meta), meta))

    def _expr(self, clauses: list[filters.Clause], meta: _Meta) -> str | None:
        content = None if meta.format == "1" else filters.milvus_content(TERMS, HAS_TEXT, HAS_IMAGE)
        return filters.to_milvus_expr(clauses, terms_field=TERMS, json_field=METADATA, content=content)

    def _search(self, name: str, vector: Sequence[float], k: int, expr: str | None, meta: _Meta) -> list[IndexHit]:
        query_vector = base.check_search_args(vector, k, meta.dimension)
        self._ensure_loaded(name)
        limit = min(k, MAX_TOPK)
        # ef is ignored by FLAT; always sent, so a collection another process switched to HNSW is searched right.
        ef = max(MIN_FILTERED_EF if expr else MIN_EF, limit)
        params: dict[str, Any] = {"metric_type": "COSINE", "params": {"ef": ef}}
        result = self._client.search(
            name,
            data=[query_vector],
            anns_field=VECTOR,
            limit=limit,
            filter=expr or "",
            output_fields=self._content_fields(meta),
            search_params=params,
            **self._read,
        )
        if not (result and result[0]) and self._describe(name) != meta:
            # An empty collection is searched without a dimension check: make sure it is still the one we know.
            raise _StaleView(name)
        hits = []
        for hit in result[0] if result else []:
            entity = hit.get("entity") or {}
            text, image = self._content(entity, meta)
            hits.append(
                IndexHit(
                    id=hit["id"],
                    score=float(hit["distance"]),
                    text=text,
                    image=image,
                    metadata=dict(entity.get(METADATA) or {}),
                    modality=filters.stored_modality(text, image, entity.get(TERMS)),
                )
            )
        hits.sort(key=lambda h: h.score, reverse=True)
        return hits

    def modality_sample(self, name: str, modality: str, n: int) -> tuple[int, np.ndarray]:
        clauses = filters.parse_filter({filters.MODALITY_KEY: modality})

        def sample(meta: _Meta) -> tuple[int, np.ndarray]:
            self._ensure_loaded(name)
            expr = self._expr(clauses, meta) or ""
            rows = self._client.query(name, filter=expr, output_fields=["count(*)"], **self._read)
            count = int(rows[0]["count(*)"]) if rows else 0
            if not count or n < 1:
                return count, np.zeros((0, meta.dimension), np.float32)
            got = self._client.query(name, filter=expr, output_fields=[VECTOR], limit=min(n, MAX_TOPK), **self._read)
            return count, np.asarray([row[VECTOR] for row in got], dtype=np.float32).reshape(-1, meta.dimension)

        return self._fresh(name, sample)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._maintenance.close()
        try:
            self._client.close()
        finally:
            if self._lite_path:
                _release_lite(self._lite_path)
