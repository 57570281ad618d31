"""Milvus backend: Milvus Lite (``*.db`` path, embedded, one process per file) or a Milvus server (http/https).

* One Milvus collection per collection: ``id`` VARCHAR(512) primary key, ``vector`` FLOAT_VECTOR, nullable
  ``text``/``image`` VARCHAR(65535 bytes), ``metadata`` JSON and ``terms`` ARRAY<VARCHAR> of filter terms.
  Model and dimension are collection properties (Milvus Lite does not persist the description).
* Filters compile to ``array_contains``/``array_contains_any`` on ``terms`` and ``metadata["key"]`` comparisons
  (see :mod:`service.index.filters`) and are passed as the search ``filter``: Milvus evaluates them before the
  top-k (Milvus Lite builds a row mask and hands it to the brute-force/FAISS search).
* Index: FLAT (exact) cosine. On a Milvus server the upsert that takes a collection past ``ann_threshold`` rows
  releases it, swaps the index for HNSW (M=16, efConstruction=200) and reloads it (searched with ``ef >= 200``;
  the server falls back to brute force for selective filters). Milvus Lite stays FLAT at any size: its FAISS
  HNSW misses the matches of selective filters, and its per-row Python overhead dominates search time anyway.
* Consistency level Strong: a search sees every write that returned before it. Milvus Lite appends each write to
  its WAL and flushes it to the OS before answering, so it survives the process being killed; a server
  acknowledges a write once it is in its WAL.
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
from collections.abc import Sequence
from typing import Any

from pymilvus import DataType, MilvusClient, MilvusException

from service.index import filters
from service.index.base import (
    CollectionInfo,
    CollectionMismatch,
    CollectionNotFound,
    Filter,
    IndexHit,
    StoredDocument,
    VectorIndex,
    check_collection_name,
    check_ids,
    check_search_args,
    order_by_ids,
    prepare_docs,
)

log = logging.getLogger(__name__)

MODEL_PROP = "mmsearch.model"
DIMENSION_PROP = "mmsearch.dimension"
FORMAT_PROP = "mmsearch.format"
FORMAT_VERSION = "1"
VECTOR = "vector"
TERMS = "terms"
METADATA = "metadata"
MAX_VARCHAR_BYTES = 65_535
MAX_TOPK = 16_384
ID_CHUNK = 1000
MAX_BATCH_BYTES = 16 * 1024 * 1024
HNSW_BUILD = {"M": 16, "efConstruction": 200}
MIN_EF = 200
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


class MilvusIndex(VectorIndex):
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
        self._known: dict[str, tuple[int, str]] = {}  # name -> (dimension, model)
        self._loaded: set[str] = set()
        self._ann: set[str] = set()
        self._unflushed: dict[str, int] = {}

    # --- collections ------------------------------------------------------------------------------------------

    def _describe(self, name: str) -> tuple[int, str] | None:
        """(dimension, model) from the collection properties; None if it is not an mmsearch collection."""
        props = self._client.describe_collection(name).get("properties") or {}
        if MODEL_PROP not in props or DIMENSION_PROP not in props:
            return None
        return int(props[DIMENSION_PROP]), str(props[MODEL_PROP])

    def _meta(self, name: str) -> tuple[int, str]:
        check_collection_name(name)
        known = self._known.get(name)
        if known is not None:
            return known
        if not self._client.has_collection(name):
            raise CollectionNotFound(name)
        described = self._describe(name)
        if described is None:
            raise CollectionNotFound(name)
        self._known[name] = described
        return described

    def _ensure_loaded(self, name: str) -> None:
        if name in self._loaded:
            return
        state = self._client.get_load_state(name).get("state")
        if str(getattr(state, "name", state)) != "Loaded":
            self._client.load_collection(name)
        index_type = str(self._client.describe_index(name, VECTOR).get("index_type", "")).upper()
        if index_type not in ("FLAT", ""):
            self._ann.add(name)
        self._loaded.add(name)

    def _count(self, name: str) -> int:
        self._ensure_loaded(name)
        rows = self._client.query(name, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def _create(self, name: str, dimension: int, model: str) -> None:
        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
        schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=dimension)
        schema.add_field("text", DataType.VARCHAR, max_length=MAX_VARCHAR_BYTES, nullable=True)
        schema.add_field("image", DataType.VARCHAR, max_length=MAX_VARCHAR_BYTES, nullable=True)
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
            consistency_level="Strong",
            properties={MODEL_PROP: model, DIMENSION_PROP: str(dimension), FORMAT_PROP: FORMAT_VERSION},
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

    def ensure_collection(self, name: str, dimension: int, model: str) -> CollectionInfo:
        check_collection_name(name)
        if isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 1:
            raise ValueError(f"dimension must be a positive integer, got {dimension!r}")
        if not model:
            raise ValueError("model must be a non-empty string")
        with self._write_lock:
            if not self._client.has_collection(name):
                try:
                    self._create(name, dimension, model)
                except MilvusException:
                    if not self._client.has_collection(name):  # not a concurrent create: a real error
                        raise
            described = self._describe(name)
            if described is None:
                raise CollectionMismatch(f"collection {name!r} exists but was not created by mmsearch")
            if described != (dimension, model):
                raise CollectionMismatch(
                    f"collection {name!r} holds dimension {described[0]} from model {described[1]!r}; "
                    f"requested dimension {dimension} from model {model!r}"
                )
            self._known[name] = described
            return CollectionInfo(name=name, dimension=dimension, model=model, count=self._count(name))

    def get_collection(self, name: str) -> CollectionInfo:
        dimension, model = self._meta(name)
        return CollectionInfo(name=name, dimension=dimension, model=model, count=self._count(name))

    def list_collections(self) -> list[CollectionInfo]:
        infos = []
        for name in sorted(self._client.list_collections()):
            try:
                infos.append(self.get_collection(name))
            except (CollectionNotFound, ValueError):
                continue  # not ours
        return infos

    # --- documents --------------------------------------------------------------------------------------------

    def _row(self, doc: StoredDocument) -> dict[str, Any]:
        for field_name, value in (("text", doc.text), ("image", doc.image)):
            if value is not None and len(value.encode("utf-8", "surrogatepass")) > MAX_VARCHAR_BYTES:
                raise ValueError(f"document {doc.id!r} {field_name} exceeds {MAX_VARCHAR_BYTES} bytes (Milvus limit)")
        try:
            json.dumps(doc.metadata, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"document {doc.id!r} metadata is not JSON-serialisable: {e}") from e
        assert doc.embedding is not None
        return {
            "id": doc.id,
            VECTOR: [float(x) for x in doc.embedding],
            "text": doc.text,
            "image": doc.image,
            METADATA: doc.metadata,
            TERMS: filters.document_terms(doc.metadata),
        }

    def upsert(self, name: str, docs: Sequence[StoredDocument]) -> None:
        dimension, _ = self._meta(name)
        rows = [self._row(d) for d in prepare_docs(docs, dimension)]
        if not rows:
            return
        with self._write_lock:
            self._ensure_loaded(name)
            batch: list[dict[str, Any]] = []
            size = 0
            for row in rows:
                row_size = 4 * dimension + len(row["text"] or "") + len(row["image"] or "") + 64 * len(row[TERMS])
                if batch and size + row_size > MAX_BATCH_BYTES:
                    self._client.upsert(name, batch)
                    batch, size = [], 0
                batch.append(row)
                size += row_size
            self._client.upsert(name, batch)
            if self._lite_path:
                # Milvus Lite searches its in-memory table row by row in Python (~20 ms per 1k rows); sealing it
                # into a segment keeps searches fast. It would otherwise only flush at 128 MiB.
                pending = self._unflushed.get(name, 0) + len(rows)
                if pending >= LITE_FLUSH_ROWS:
                    self._client.flush(name)
                    pending = 0
                self._unflushed[name] = pending
            self._maybe_build_ann(name)

    def _maybe_build_ann(self, name: str) -> None:
        if self._lite_path:
            # Milvus Lite's FAISS HNSW applies filters as an ID selector during graph traversal and misses matches
            # of selective filters (measured: a 1-in-3000 filter returned nothing), and its per-row Python
            # overhead dominates search time anyway. Lite therefore stays exact (FLAT) at any size.
            return
        if name in self._ann or self._count(name) <= self._ann_threshold:
            return
        log.info("switching collection %r to an HNSW index", name)
        self._client.release_collection(name)
        self._loaded.discard(name)
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
            rows.extend(self._client.query(name, filter=_ids_expr(chunk), output_fields=fields, limit=len(chunk)))
        return rows

    def delete(self, name: str, ids: Sequence[str]) -> int:
        self._meta(name)
        wanted = check_ids(ids)
        with self._write_lock:
            existing = [row["id"] for row in self._query_ids(name, wanted, ["id"])]
            for start in range(0, len(existing), ID_CHUNK):
                self._client.delete(name, filter=_ids_expr(existing[start : start + ID_CHUNK]))
        return len(existing)

    def get(self, name: str, ids: Sequence[str]) -> list[StoredDocument]:
        self._meta(name)
        wanted = check_ids(ids)
        rows = self._query_ids(name, wanted, ["id", VECTOR, "text", "image", METADATA])
        found = {
            row["id"]: StoredDocument(
                id=row["id"],
                text=row.get("text"),
                image=row.get("image"),
                metadata=dict(row.get(METADATA) or {}),
                embedding=[float(x) for x in row[VECTOR]],
            )
            for row in rows
        }
        return order_by_ids(wanted, found)

    def search(self, name: str, vector: Sequence[float], k: int, filter: Filter | None = None) -> list[IndexHit]:
        dimension, _ = self._meta(name)
        query_vector = check_search_args(vector, k, dimension)
        expr = filters.to_milvus_expr(filters.parse_filter(filter), terms_field=TERMS, json_field=METADATA)
        self._ensure_loaded(name)
        limit = min(k, MAX_TOPK)
        params: dict[str, Any] = {"metric_type": "COSINE"}
        if name in self._ann:
            params["params"] = {"ef": max(MIN_EF, limit)}
        result = self._client.search(
            name,
            data=[query_vector],
            anns_field=VECTOR,
            limit=limit,
            filter=expr or "",
            output_fields=["text", "image", METADATA],
            search_params=params,
        )
        hits = []
        for hit in result[0] if result else []:
            entity = hit.get("entity") or {}
            hits.append(
                IndexHit(
                    id=hit["id"],
                    score=float(hit["distance"]),
                    text=entity.get("text"),
                    image=entity.get("image"),
                    metadata=dict(entity.get(METADATA) or {}),
                )
            )
        hits.sort(key=lambda h: h.score, reverse=True)
        return hits

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._client.close()
        finally:
            if self._lite_path:
                _release_lite(self._lite_path)
