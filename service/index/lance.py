"""LanceDB (embedded) backend: one Lance table per collection in a local directory.

* Model and dimension live in the table's schema metadata, so any process opening the directory sees them.
* Filters: a ``list<string>`` column of filter terms (``array_has``) plus the metadata as a ``lance.json`` column
  (``json_get`` + ``TRY_CAST`` for numeric ranges); see :mod:`service.index.filters`. They are passed to
  ``where(..., prefilter=True)``, so they restrict the candidate set before the top-k is taken.
* Search is exact (flat scan) until a collection holds more than ``ann_threshold`` rows; the upsert that crosses
  it builds an IVF_HNSW_SQ cosine index (plus a LABEL_LIST index on the filter terms). Rows written later are
  searched exactly until ``optimize()`` folds them into the index, which upsert triggers as they accumulate.
* Exact search runs on an in-memory copy of the vectors and hit columns, per table version. Writers hold their own
  lock (a query never waits for a commit) and patch that copy with the rows they wrote, so queries during an
  ingest do not re-read the table after every write.
* Reads use ``read_consistency_interval=0``: every query sees the latest committed version, including writes by
  other processes. A ``merge_insert`` commit is on disk when it returns.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lancedb.expr import col
from lancedb.index import HnswSq, LabelList

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

MODEL_KEY = b"mmsearch.model"
DIMENSION_KEY = b"mmsearch.dimension"
FORMAT_KEY = b"mmsearch.format"
FORMAT_VERSION = b"1"
VECTOR = "vector"
TERMS = "_terms"
METADATA = "metadata"
VECTOR_INDEX = "vector_idx"
TERMS_INDEX = "terms_idx"
ID_CHUNK = 1000
REFINE_FACTOR = 4
MIN_EF = 200
MAX_SMALL_FRAGMENTS = 32
CLEANUP_OLDER_THAN = timedelta(hours=1)


def _schema(dimension: int, model: str) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.utf8(), nullable=False),
            pa.field(VECTOR, pa.list_(pa.float32(), dimension), nullable=False),
            pa.field("text", pa.utf8()),
            pa.field("image", pa.utf8()),
            pa.field(METADATA, pa.json_(pa.utf8())),
            pa.field(TERMS, pa.list_(pa.utf8())),
        ],
        metadata={
            MODEL_KEY: model.encode(),
            DIMENSION_KEY: str(dimension).encode(),
            FORMAT_KEY: FORMAT_VERSION,
        },
    )


def _dump_metadata(doc: StoredDocument) -> str:
    try:
        return json.dumps(doc.metadata, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"document {doc.id!r} metadata is not JSON-serialisable: {e}") from e


def _load_metadata(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    value = json.loads(raw) if isinstance(raw, str | bytes) else raw
    return value if isinstance(value, dict) else {}


EXACT_CACHE_BYTES = 1 << 30
"""Default RAM for in-memory exact search matrices, all collections of one index together."""


@dataclass(frozen=True)
class _Matrix:
    """One collection at one table version: unit vectors plus the columns a hit returns, row-aligned."""

    version: int
    vectors: np.ndarray
    payload: pa.Table

    @property
    def nbytes(self) -> int:
        return int(self.vectors.nbytes + self.payload.nbytes)


class LanceIndex(VectorIndex):
    def __init__(self, path: str, *, ann_threshold: int, exact_cache_bytes: int = EXACT_CACHE_BYTES) -> None:
        os.makedirs(path, exist_ok=True)
        self._path = path
        self._ann_threshold = ann_threshold
        self._db = lancedb.connect(path, read_consistency_interval=timedelta(0))
        self._tables: dict[str, Any] = {}
        self._lock = threading.RLock()  # table handles and the exact-search cache (held briefly by queries)
        self._write_lock = threading.Lock()  # writers only: a query never waits for a commit
        self._exact_cache_bytes = exact_cache_bytes
        self._matrices: dict[str, _Matrix] = {}

    # --- collections ------------------------------------------------------------------------------------------

    def _info(self, name: str, table: Any, *, count: bool = True) -> CollectionInfo | None:
        meta = table.schema.metadata or {}
        if MODEL_KEY not in meta or DIMENSION_KEY not in meta:
            return None
        return CollectionInfo(
            name=name,
            dimension=int(meta[DIMENSION_KEY]),
            model=meta[MODEL_KEY].decode(),
            count=table.count_rows() if count else 0,
        )

    def _table(self, name: str) -> Any:
        check_collection_name(name)
        table = self._tables.get(name)
        if table is not None:
            return table
        try:
            table = self._db.open_table(name)
        except (ValueError, FileNotFoundError) as e:
            raise CollectionNotFound(name) from e
        if self._info(name, table, count=False) is None:
            raise CollectionNotFound(name)
        self._tables[name] = table
        return table

    def _dimension(self, table: Any) -> int:
        return int(table.schema.metadata[DIMENSION_KEY])

    def ensure_collection(self, name: str, dimension: int, model: str) -> CollectionInfo:
        check_collection_name(name)
        if isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 1:
            raise ValueError(f"dimension must be a positive integer, got {dimension!r}")
        if not model:
            raise ValueError("model must be a non-empty string")
        with self._lock:
            try:
                table = self._table(name)
            except CollectionNotFound:
                try:
                    table = self._db.create_table(name, schema=_schema(dimension, model))
                except ValueError:  # created concurrently by another process, or a foreign table
                    table = self._db.open_table(name)
            info = self._info(name, table)
            if info is None:
                raise CollectionMismatch(f"collection {name!r} exists but was not created by mmsearch")
            if info.dimension != dimension or info.model != model:
                raise CollectionMismatch(
                    f"collection {name!r} holds dimension {info.dimension} from model {info.model!r}; "
                    f"requested dimension {dimension} from model {model!r}"
                )
            self._tables[name] = table
            return info

    def get_collection(self, name: str) -> CollectionInfo:
        info = self._info(name, self._table(name))
        assert info is not None
        return info

    def list_collections(self) -> list[CollectionInfo]:
        names: list[str] = []
        token: str | None = None
        while True:
            page = self._db.list_tables(page_token=token)
            names.extend(page.tables)
            token = page.page_token
            if not token:
                break
        infos = []
        for name in sorted(set(names)):
            try:
                infos.append(self.get_collection(name))
            except (CollectionNotFound, ValueError):
                continue  # not ours
        return infos

    # --- documents --------------------------------------------------------------------------------------------

    def upsert(self, name: str, docs: Sequence[StoredDocument]) -> None:
        table = self._table(name)
        dimension = self._dimension(table)
        batch = prepare_docs(docs, dimension)
        if not batch:
            return
        vectors = np.asarray([d.embedding for d in batch], dtype=np.float32).reshape(-1)
        data = pa.table(
            {
                "id": pa.array([d.id for d in batch], pa.utf8()),
                VECTOR: pa.FixedSizeListArray.from_arrays(pa.array(vectors, pa.float32()), dimension),
                "text": pa.array([d.text for d in batch], pa.utf8()),
                "image": pa.array([d.image for d in batch], pa.utf8()),
                METADATA: pa.array([_dump_metadata(d) for d in batch], pa.json_(pa.utf8())),
                TERMS: pa.array([filters.document_terms(d.metadata) for d in batch], pa.list_(pa.utf8())),
            }
        )
        with self._write_lock:
            before = table.version
            table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(data)
            after = table.version
            self._patch_matrix(name, before, after, data)
            self._maintain(name, table)
            if table.version != after:  # an index build or compaction: rebuilt lazily by the next query
                with self._lock:
                    self._matrices.pop(name, None)

    def _patch_matrix(
        self, name: str, before: int, after: int, upserted: pa.Table | None, deleted: Sequence[str] = ()
    ) -> None:
        """Bring the in-memory exact matrix from version ``before`` to ``after`` with the rows this process just
        wrote, so that queries during an ingest do not re-read the table after every write.

        Copy-on-write (queries may be scoring the old arrays). Dropped instead (rebuilt by the next query) when the
        cache is not at ``before``, another writer committed in between, or anything does not line up.
        """
        with self._lock:
            m = self._matrices.get(name)
            if m is None or m.version == after:
                return
            self._matrices.pop(name, None)
            if m.version != before or after != before + 1:
                return
            try:
                gone = list(deleted) + (upserted["id"].to_pylist() if upserted is not None else [])
                keep = pc.invert(pc.is_in(m.payload["id"], value_set=pa.array(gone, pa.utf8())))
                keep_np = keep.to_numpy(zero_copy_only=False)
                vectors = m.vectors[keep_np]
                payload = m.payload.filter(keep)
                if upserted is not None and upserted.num_rows:
                    new = upserted[VECTOR].combine_chunks().flatten().to_numpy().reshape(upserted.num_rows, -1)
                    new = new.astype(np.float32)
                    new /= np.maximum(np.linalg.norm(new, axis=1, keepdims=True), 1e-12)
                    vectors = np.concatenate([vectors, new])
                    rows = upserted.select(list(payload.column_names)).cast(payload.schema)
                    payload = pa.concat_tables([payload, rows]).combine_chunks()
                matrix = _Matrix(after, vectors, payload)
            except (pa.ArrowException, ValueError, KeyError):
                log.debug("exact-search cache of %r dropped: could not patch it", name, exc_info=True)
                return
            others = sum(x.nbytes for k, x in self._matrices.items() if k != name)
            if matrix.nbytes + others <= self._exact_cache_bytes:
                self._matrices[name] = matrix

    def _vector_index(self, table: Any) -> Any | None:
        for index in table.list_indices():
            if list(index.columns) == [VECTOR]:
                return index
        return None

    def _maintain(self, name: str, table: Any) -> None:
        """Build the ANN index past the threshold; fold new rows into it and compact small fragments."""
        index = self._vector_index(table)
        if index is None:
            if table.count_rows() > self._ann_threshold:
                log.info("building IVF_HNSW_SQ index on collection %r", name)
                table.create_index(VECTOR, config=HnswSq(distance_type="cosine"), name=VECTOR_INDEX)
                try:
                    table.create_index(TERMS, config=LabelList(), name=TERMS_INDEX)
                except Exception:  # an optimisation only; filters work without it
                    log.exception("could not build the filter-term index on collection %r", name)
            return
        stats = table.index_stats(index.name)
        unindexed = stats.num_unindexed_rows if stats is not None else 0
        small = table.stats()["fragment_stats"]["num_small_fragments"]
        if unindexed > max(1_000, (stats.num_indexed_rows if stats else 0) // 10) or small > MAX_SMALL_FRAGMENTS:
            table.optimize(cleanup_older_than=CLEANUP_OLDER_THAN)

    def _rows_by_id(self, table: Any, ids: list[str], columns: list[str]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), ID_CHUNK):
            chunk = unique[start : start + ID_CHUNK]
            query = table.search().where(col("id").isin(chunk)).select(columns).limit(len(chunk))
            rows.extend(query.to_arrow().to_pylist())
        return rows

    def delete(self, name: str, ids: Sequence[str]) -> int:
        table = self._table(name)
        wanted = list(dict.fromkeys(check_ids(ids)))
        deleted = 0
        with self._write_lock:
            version = table.version
            for start in range(0, len(wanted), ID_CHUNK):
                chunk = wanted[start : start + ID_CHUNK]
                result = table.delete(col("id").isin(chunk))
                deleted += int(getattr(result, "num_deleted_rows", 0))
                before, version = version, table.version
                self._patch_matrix(name, before, version, None, chunk)
        return deleted

    def get(self, name: str, ids: Sequence[str]) -> list[StoredDocument]:
        table = self._table(name)
        wanted = check_ids(ids)
        found = {
            row["id"]: StoredDocument(
                id=row["id"],
                text=row["text"],
                image=row["image"],
                metadata=_load_metadata(row[METADATA]),
                embedding=[float(x) for x in row[VECTOR]],
            )
            for row in self._rows_by_id(table, wanted, ["id", "text", "image", METADATA, VECTOR])
        }
        return order_by_ids(wanted, found)

    def _exact_matrix(self, name: str, table: Any) -> _Matrix | None:
        """The collection's unit vectors (and hit columns) in RAM for exact search, refreshed per table version.

        Lance's flat KNN decodes the whole vector column on every query (~12x numpy at 100k x 512, see
        bench/RESULTS.md); a matrix kept in memory makes exact search numpy brute force. Only while the
        collection has no ANN index and fits in ``exact_cache_bytes`` (all collections together).
        """
        version = table.version
        cached = self._matrices.get(name)
        if cached is not None and cached.version == version:
            return cached
        self._matrices.pop(name, None)
        if self._vector_index(table) is not None:
            return None
        rows = table.count_rows()
        need = rows * self._dimension(table) * 4
        if rows == 0 or need + sum(m.nbytes for m in self._matrices.values()) > self._exact_cache_bytes:
            return None
        data = table.search().select(["id", VECTOR, "text", "image", METADATA]).limit(rows).to_arrow()
        if need + data.nbytes + sum(m.nbytes for m in self._matrices.values()) > self._exact_cache_bytes:
            return None
        vectors = data[VECTOR].combine_chunks().flatten().to_numpy().reshape(len(data), -1).astype(np.float32)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        payload = data.drop_columns([VECTOR]).combine_chunks()
        matrix = _Matrix(version, vectors, payload)
        self._matrices[name] = matrix
        return matrix

    def _search_in_memory(self, matrix: _Matrix, query: np.ndarray, k: int) -> list[IndexHit]:
        q = query / max(float(np.linalg.norm(query)), 1e-12)
        scores = matrix.vectors @ q
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        rows = matrix.payload.take(pa.array(top)).to_pylist()
        return [
            IndexHit(
                id=row["id"],
                score=float(scores[t]),
                text=row["text"],
                image=row["image"],
                metadata=_load_metadata(row[METADATA]),
            )
            for row, t in zip(rows, top, strict=True)
        ]

    def search(self, name: str, vector: Sequence[float], k: int, filter: Filter | None = None) -> list[IndexHit]:
        table = self._table(name)
        query_vector = check_search_args(vector, k, self._dimension(table))
        where = filters.to_lance_sql(filters.parse_filter(filter), terms_column=TERMS, json_column=METADATA)
        if where is None:
            with self._lock:
                matrix = self._exact_matrix(name, table)
            if matrix is not None:
                return self._search_in_memory(matrix, np.asarray(query_vector, dtype=np.float32), k)
        query = (
            table.search(np.asarray(query_vector, dtype=np.float32), vector_column_name=VECTOR)
            .distance_type("cosine")
            .limit(k)
            .select(["id", "text", "image", METADATA, "_distance"])
        )
        if where is not None:
            query = query.where(where, prefilter=True)
        # Only used when an ANN index exists: oversample from the quantised index, then re-rank exactly.
        query = query.ef(max(MIN_EF, 2 * k * REFINE_FACTOR)).refine_factor(REFINE_FACTOR)
        hits = [
            IndexHit(
                id=row["id"],
                score=1.0 - float(row["_distance"]),
                text=row["text"],
                image=row["image"],
                metadata=_load_metadata(row[METADATA]),
            )
            for row in query.to_arrow().to_pylist()
        ]
        hits.sort(key=lambda h: h.score, reverse=True)
        return hits

    def close(self) -> None:
        with self._lock:
            self._tables.clear()
