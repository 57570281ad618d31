"""LanceDB (embedded) backend: one Lance table per collection, in a local directory or on S3-compatible storage.

* Model and dimension live in the table's schema metadata, so any process opening the directory sees them.
* Filters: a ``list<string>`` column of filter terms (``array_has``) plus the metadata as a ``lance.json`` column
  (``json_get`` + ``TRY_CAST`` for numeric ranges); see :mod:`service.index.filters`. They are passed to
  ``where(..., prefilter=True)``, so they restrict the candidate set before the top-k is taken.
* Search is exact (flat scan) until a collection holds more than ``ann_threshold`` rows; once it does, the
  background maintenance thread (:mod:`service.index.maintenance`, never the upsert) builds an IVF_HNSW_SQ cosine
  index (plus a LABEL_LIST index on the filter terms and a BITMAP index on the stored modality); until it
  exists search stays exact. Rows written later are searched exactly until ``optimize()`` folds them into the
  indexes, which that thread runs as they accumulate.
* Exact search runs on an in-memory copy of the vectors and hit columns, per table version. Writers hold their own
  lock (a query never waits for a commit) and patch that copy with the rows they wrote, so queries during an
  ingest do not re-read the table after every write.
* Reads use ``read_consistency_interval=0``: every query sees the latest committed version, including writes by
  other processes. A ``merge_insert`` commit is on disk (or in the bucket) when it returns.
* ``s3://bucket/prefix`` (endpoint and credentials from the standard AWS variables, :mod:`service.objectstore`):
  several processes may write at once. Lance commits are conditional writes; a commit that loses a race is
  retried by Lance and, past its own retries ("too many concurrent writers"), here with backoff (upserts and
  deletes by id are idempotent), so no acknowledged write is lost.
* Several processes may drop and re-create a collection: a handle to a dropped table answers "not found" (the
  collection is forgotten here), and each table carries a creation id in its schema metadata, part of the
  exact-search cache key, so a re-created table never meets the matrix of its predecessor.
* Keyword search: an ``fts`` column (``text`` and ``ocr_text`` joined) with Lance's native inverted index (BM25,
  English stemming and stop words), created with the table. Rows written since the index was last optimised are
  searched too (flat), so an acknowledged upsert is found by keyword at once; upsert folds them into the index as
  they accumulate. Filters apply as prefilters, as for vector search.
* Storage stays bounded: a delete that matches nothing commits nothing, and every ``MAINTAIN_EVERY_WRITES``
  writes to a collection (any size) the background thread compacts its fragments and removes the versions older
  than ``version_retention`` (``MMSEARCH_INDEX_VERSION_RETENTION_S``), off the request path and without the
  writers' lock (a compaction that loses a commit race is retried with backoff). Other processes may still be
  reading a version being removed; the retention must exceed the longest read (minutes by default).
* Format 2 (OCR and keyword columns). A collection written by format 1 is migrated when opened: the new columns
  are added (``fts`` from ``text``), the index built, and the ``fts`` column's metadata records format 2.
* Format 3 (a ``modality`` column: each row's ``filters.stored_modality``, written by upsert). ``$modality``
  filters compare it (a BITMAP index lookup once the ANN index exists) instead of testing the ``text``/``image``
  columns for null, which a prefilter evaluates on every row of every search. A format-1 or 2 table gets the
  column when opened, filled from its content columns and declared-modality terms (no row moves, the ANN index
  stays valid), and the BITMAP index at once if its ANN index exists (the null tests stay for a table without
  the column). Processes from before format 3 must not write to a migrated table: their rows would lack it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property, partial
from typing import Any, TypeVar

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lancedb.expr import col
from lancedb.index import FTS, Bitmap, HnswSq, LabelList
from lancedb.query import ColumnOrdering, MatchQuery
from mmsearch_schema import fields

from service import objectstore
from service.index import base, filters
from service.index.base import Filter, IndexedCollection, IndexHit, IndexRecord, VectorIndex
from service.index.maintenance import Maintenance
from service.ocr import lines_from_json, lines_to_json

log = logging.getLogger(__name__)
T = TypeVar("T")

MODEL_KEY = b"mmsearch.model"
DIMENSION_KEY = b"mmsearch.dimension"
FORMAT_KEY = b"mmsearch.format"
FORMAT_VERSION = b"3"
CREATED_KEY = b"mmsearch.created"
PRIMARY_KEY = b"lance-schema:unenforced-primary-key"
COMMIT_RETRY_S = 120.0
VECTOR = "vector"
TERMS = "_terms"
METADATA = "metadata"
OCR_TEXT = "ocr_text"
OCR_LINES = "ocr_lines"
FTS_COLUMN = "fts"
MODALITY = "modality"
VECTOR_INDEX = "vector_idx"
TERMS_INDEX = "terms_idx"
FTS_INDEX = "fts_idx"
MODALITY_INDEX = "modality_idx"
HIT_COLUMNS = ["id", "text", "image", METADATA, OCR_TEXT, OCR_LINES, TERMS]
"""What a hit carries (the exact-search cache keeps these in memory too)."""
FORMAT_2_COLUMNS = {OCR_TEXT: "CAST(NULL AS STRING)", OCR_LINES: "CAST(NULL AS STRING)", FTS_COLUMN: "text"}
"""Columns format 2 added, and how a format-1 table's rows get them."""


def _stored_modality_sql() -> str:
    """``filters.stored_modality`` of a row in Lance SQL (content first, else the declared term, else ``""``):
    how format 3 fills the ``modality`` column of the rows an older format wrote. (Lance's ``add_columns`` refuses
    a bare ``CASE``; inside ``concat`` it is accepted.)"""
    content = [
        ("text IS NOT NULL AND image IS NOT NULL", "text+image"),
        ("image IS NOT NULL", "image"),
        ("text IS NOT NULL", "text"),
    ]
    declared = [(f"array_has({TERMS}, '{filters.modality_term(m)}')", m) for m in fields.MODALITIES]
    cases = " ".join(f"WHEN {test} THEN '{m}'" for test, m in content + declared)
    return f"concat(CASE {cases} ELSE '' END)"


FORMAT_3_COLUMNS = {MODALITY: _stored_modality_sql()}
"""Format 3 stores each row's modality (``$modality`` filters test it, with a BITMAP index beside the ANN index)."""
ID_CHUNK = 1000
REFINE_FACTOR = 4
MIN_EF = 200
MIN_FILTERED_EF = 800
"""ef of a filtered ANN search. A modality filter on an index partitioned by modality (``ann_partition_size``) searches
one partition's graph: at 100k rows (half text, half image, 384-d random, gap 1.0) ef 400 found 0.39 of the exact
top-50 images, ef 800 0.57 at the same latency (one graph for both: 0.51 at 5x the cost; bench/RESULTS.md 15)."""
MIN_PARTITION_SHARE = 0.05
"""A modality holding at least this share of the rows gets an IVF partition of its own (``ann_partition_size``)."""
MAX_PARTITION_ROWS = 1_000_000
"""Rows per IVF partition at most where ``ann_partition_size`` sets it (each partition one HNSW graph, built in RAM)."""
MAX_SMALL_FRAGMENTS = 32
DEFAULT_VERSION_RETENTION = timedelta(minutes=5)
"""Table versions younger than this are kept (readers in other processes may be on them)."""
MAINTAIN_EVERY_WRITES = 64
"""Writes to a collection (in this process) between two background compactions and version clean-ups."""
BUILD_TIMEOUT_S = 6 * 3600.0
"""A background ANN build taking longer is stopped (and retried with backoff)."""
LOCKED_AFTER_FAILURES = 3
"""Failed maintenance passes in a row after which a compaction holds the writers' lock (see ``_maintain``)."""


NOT_CONTINUATION = f"({TERMS} IS NULL OR NOT array_has({TERMS}, '{base.CONTINUATION_TERM}'))"
"""The rows that are documents: not a segmented document's continuation rows (``service.segments``)."""


def _documents(table: Any) -> int:
    """Rows less a segmented document's continuation rows (``service.segments``): the documents."""
    rows = int(table.count_rows())
    if not rows:
        return 0
    return rows - int(table.count_rows(f"array_has({TERMS}, '{base.CONTINUATION_TERM}')"))


def _schema(dimension: int, model: str) -> pa.Schema:
    return pa.schema(
        [
            # The primary key lets merge_insert detect two writers inserting the same new id at once (a commit
            # conflict, retried) instead of committing both rows.
            pa.field("id", pa.utf8(), nullable=False, metadata={PRIMARY_KEY: b"true"}),
            pa.field(VECTOR, pa.list_(pa.float32(), dimension), nullable=False),
            pa.field("text", pa.utf8()),
            pa.field("image", pa.utf8()),
            pa.field(METADATA, pa.json_(pa.utf8())),
            pa.field(TERMS, pa.list_(pa.utf8())),
            pa.field(OCR_TEXT, pa.utf8()),
            pa.field(OCR_LINES, pa.utf8()),
            pa.field(FTS_COLUMN, pa.utf8()),
            pa.field(MODALITY, pa.utf8()),
        ],
        metadata={
            MODEL_KEY: model.encode(),
            DIMENSION_KEY: str(dimension).encode(),
            FORMAT_KEY: FORMAT_VERSION,
            CREATED_KEY: uuid.uuid4().hex.encode(),
        },
    )


def _conflict(e: Exception) -> bool:
    """A commit that lost a race with another writer (safe to retry: our writes are idempotent). Lance 13 also says
    "Incompatible transaction" (e.g. a CreateIndex against a concurrent Overwrite of a table two processes created
    at once on S3: seen in a clean-clone CI run of the concurrent-writers contract test)."""
    text = str(e).lower()
    markers = (
        "concurrent writer",
        "commit conflict",
        "retryable",
        "conflicting",
        "precondition",
        "incompatible transaction",
    )
    return any(m in text for m in markers)


def _missing(e: Exception) -> bool:
    """The table behind a handle is gone (dropped, possibly by another process)."""
    return isinstance(e, FileNotFoundError) or "not found" in str(e).lower()


def _creation_id(table: Any) -> bytes:
    return (table.schema.metadata or {}).get(CREATED_KEY, b"")


def _dump_metadata(doc: IndexRecord) -> str:
    try:
        return json.dumps(doc.metadata, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"document {doc.id!r} metadata is not JSON-serialisable: {e}") from e


def _load_metadata(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    value = json.loads(raw) if isinstance(raw, str | bytes) else raw
    return value if isinstance(value, dict) else {}


def _where(table: Any, clauses: list[filters.Clause]) -> str | None:
    """The table's ``where`` predicate for the clauses: ``$modality`` tests the stored modality column (answered by
    its BITMAP index once the ANN index is built), or the content columns in a table without it."""
    column = MODALITY if MODALITY in table.schema.names else None
    return filters.to_lance_sql(clauses, terms_column=TERMS, json_column=METADATA, modality_column=column)


def _ensure_modality_index(table: Any) -> None:
    """The BITMAP index on the stored modality: a ``$modality`` prefilter is then an index lookup (~1 ms at 100k
    rows) instead of null tests evaluated on every row (~15 ms, bench/RESULTS.md section 15)."""
    if MODALITY in table.schema.names and not any(list(i.columns) == [MODALITY] for i in table.list_indices()):
        table.create_index(MODALITY, config=Bitmap(), name=MODALITY_INDEX)


def _hit(row: dict[str, Any], score: float) -> IndexHit:
    return IndexHit(
        id=row["id"],
        score=score,
        text=row["text"],
        image=row["image"],
        metadata=_load_metadata(row[METADATA]),
        ocr_text=row.get(OCR_TEXT),
        ocr_lines=lines_from_json(row.get(OCR_LINES)),
        modality=filters.stored_modality(row["text"], row["image"], row.get(TERMS)),
    )


EXACT_CACHE_BYTES = 1 << 30
"""Default RAM for in-memory exact search matrices, all collections of one index together."""


@dataclass(frozen=True)
class _Matrix:
    """One collection at one table version: unit vectors plus the columns a hit returns, row-aligned."""

    version: int
    created: bytes
    vectors: np.ndarray
    payload: pa.Table

    @property
    def nbytes(self) -> int:
        return int(self.vectors.nbytes + self.payload.nbytes)

    @cached_property
    def rows(self) -> dict[str, int]:
        """Row number of each document id."""
        return {d: i for i, d in enumerate(self.payload["id"].to_pylist())}

    @cached_property
    def modalities(self) -> dict[str, np.ndarray]:
        """Row numbers of each modality present (``filters.stored_modality`` of every row)."""
        text = self.payload["text"].is_valid().to_numpy(zero_copy_only=False)
        image = self.payload["image"].is_valid().to_numpy(zero_copy_only=False)
        rows = np.full(len(text), "", dtype=object)
        rows[text & ~image] = "text"
        rows[image & ~text] = "image"
        rows[text & image] = "text+image"
        bare = np.flatnonzero(~text & ~image)
        if len(bare):
            terms = self.payload[TERMS].take(pa.array(bare)).to_pylist()
            rows[bare] = [filters.stored_modality(None, None, t) for t in terms]
        terms = self.payload[TERMS].combine_chunks()
        flat, parents = pc.list_flatten(terms), pc.list_parent_indices(terms)
        for term, m in filters.AV_TERMS.items():  # audio and video rows keep their clip in ``image``
            rows[parents.filter(pc.equal(flat, term)).to_numpy(zero_copy_only=False)] = m
        return {str(m): np.flatnonzero(rows == m) for m in np.unique(rows)}


class LanceIndex(VectorIndex):
    backend = "lancedb"
    keyword_capable = True

    def __init__(
        self,
        path: str,
        *,
        ann_threshold: int,
        exact_cache_bytes: int = EXACT_CACHE_BYTES,
        version_retention: timedelta = DEFAULT_VERSION_RETENTION,
    ) -> None:
        options: dict[str, str] = {}
        if objectstore.is_s3(path):
            objectstore.split_s3(path)  # validates the form
            options = objectstore.S3Settings.from_env().lance_storage_options()
        else:
            os.makedirs(path, exist_ok=True)
        self._path = path
        self._ann_threshold = ann_threshold
        self._db = lancedb.connect(path, read_consistency_interval=timedelta(0), storage_options=options or None)
        self._tables: dict[str, Any] = {}
        self._lock = threading.RLock()  # table handles and the exact-search cache (held briefly by queries)
        self._write_lock = threading.Lock()  # writers only: a query never waits for a commit
        self._exact_cache_bytes = exact_cache_bytes
        self._matrices: dict[str, _Matrix] = {}
        self._keyword_data: dict[str, tuple[bytes, int, bool]] = {}  # name -> (creation id, version, any text)
        self._retention = version_retention
        self._maintenance_every = MAINTAIN_EVERY_WRITES
        self._build_proc: subprocess.Popen[bytes] | None = None
        self._closed = False
        self._maintenance = Maintenance(self._maintain, thread_name="lance-maintenance")

    # --- collections ------------------------------------------------------------------------------------------

    def _info(self, name: str, table: Any, *, count: bool = True) -> IndexedCollection | None:
        meta = table.schema.metadata or {}
        if MODEL_KEY not in meta or DIMENSION_KEY not in meta:
            return None
        return IndexedCollection(
            name=name,
            dimension=int(meta[DIMENSION_KEY]),
            model=meta[MODEL_KEY].decode(),
            count=_documents(table) if count else 0,
        )

    def _table(self, name: str) -> Any:
        base.check_collection_name(name)
        table = self._tables.get(name)
        if table is not None:
            return table
        try:
            table = self._db.open_table(name)
        except (ValueError, FileNotFoundError) as e:
            raise base.CollectionNotFound(name) from e
        if self._info(name, table, count=False) is None:
            raise base.CollectionNotFound(name)
        if PRIMARY_KEY not in (table.schema.field("id").metadata or {}):
            try:  # a table written before the key was recorded: record it (see _schema)
                table.set_unenforced_primary_key("id")  # type: ignore[attr-defined]
            except Exception:
                log.warning("could not record the primary key of collection %r", name, exc_info=True)
        if FTS_COLUMN not in table.schema.names or MODALITY not in table.schema.names:
            table = self._upgrade(name, table)
        self._tables[name] = table
        return table

    def _upgrade(self, name: str, table: Any) -> Any:
        """Migrate a format-1 or 2 table: add the OCR and keyword columns and the full-text index (format 2), and
        the stored modality column (format 3; with its BITMAP index if the ANN index exists already). Adding a
        column writes a new data file per fragment and moves no row, so the ANN index stays valid.

        Several processes may open it at once: a writer that loses the race finds the columns there on reopening.
        """
        with self._write_lock:
            try:
                names = table.schema.names
                format_2 = {c: sql for c, sql in FORMAT_2_COLUMNS.items() if c not in names}
                if format_2:
                    table.add_columns(format_2)
                    log.info("collection %r migrated to format 2: added %s", name, sorted(format_2))
                self._ensure_fts_index(table)
                if format_2:
                    table.update_field_metadata({"path": FTS_COLUMN, "metadata": {FORMAT_KEY.decode(): "2"}})
                if MODALITY not in table.schema.names:
                    table.add_columns(FORMAT_3_COLUMNS)
                    table.update_field_metadata({"path": MODALITY, "metadata": {FORMAT_KEY.decode(): "3"}})
                    log.info("collection %r migrated to format 3: added %s", name, MODALITY)
                if self._vector_index(table) is not None:
                    _ensure_modality_index(table)
            except Exception:
                log.warning("migrating collection %r raced another writer; reopening", name, exc_info=True)
                table = self._db.open_table(name)
                if FTS_COLUMN not in table.schema.names or MODALITY not in table.schema.names:
                    raise
        return table

    def _ensure_fts_index(self, table: Any) -> None:
        if not any(list(index.columns) == [FTS_COLUMN] for index in table.list_indices()):
            table.create_index(FTS_COLUMN, config=FTS(with_position=False), name=FTS_INDEX)

    def _forget(self, name: str) -> None:
        with self._lock:
            self._tables.pop(name, None)
            self._matrices.pop(name, None)
            self._keyword_data.pop(name, None)

    def _guard(self, name: str, op: Callable[[Any], T]) -> T:
        """Run ``op`` on the collection's table; a handle whose table was dropped (by any process) is forgotten,
        and the call made once more on a table of that name created since, else ``CollectionNotFound``."""
        try:
            return op(self._table(name))
        except base.CollectionNotFound:
            raise
        except Exception as e:
            if not _missing(e):
                raise
            self._forget(name)
        try:
            return op(self._table(name))
        except base.CollectionNotFound:
            raise
        except Exception as e:
            if _missing(e):
                self._forget(name)
                raise base.CollectionNotFound(name) from None
            raise

    def _commit(self, what: str, fn: Callable[[], T]) -> T:
        """Run a write, retrying commits that lost a race with another writer (Lance's own retries exhausted)."""
        deadline = time.monotonic() + COMMIT_RETRY_S
        delay = 0.05
        while True:
            try:
                return fn()
            except Exception as e:
                if not _conflict(e) or time.monotonic() > deadline:
                    raise
                log.info("%s: commit conflict with another writer, retrying in %.2f s: %s", what, delay, e)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _dimension(self, table: Any) -> int:
        return int(table.schema.metadata[DIMENSION_KEY])

    def ensure_collection(self, name: str, dimension: int, model: str) -> IndexedCollection:
        base.check_collection_args(name, dimension, model)
        with self._lock:
            try:
                table = self._table(name)
                info = self._info(name, table)
            except base.CollectionNotFound:
                table = self._create(name, dimension, model)
                info = self._info(name, table)
            except Exception as e:
                if not _missing(e):
                    raise
                self._forget(name)  # dropped by another process since we opened it
                table = self._create(name, dimension, model)
                info = self._info(name, table)
            if info is None:
                raise base.CollectionMismatch.foreign(name)
            if info.dimension != dimension or info.model != model:
                raise base.CollectionMismatch.embedding(name, (info.dimension, info.model), (dimension, model))
            self._tables[name] = table
            return info

    def _create(self, name: str, dimension: int, model: str) -> Any:
        def create() -> Any:
            try:
                table = self._db.create_table(name, schema=_schema(dimension, model))
            except ValueError:  # created concurrently by another process, or a foreign table
                table = self._db.open_table(name)
                names = table.schema.names
                if self._info(name, table, count=False) is None or (FTS_COLUMN in names and MODALITY in names):
                    return table
                return self._upgrade(name, table)
            self._ensure_fts_index(table)
            return table

        return self._commit(f"create {name!r}", create)

    def get_collection(self, name: str) -> IndexedCollection:
        info = self._guard(name, lambda table: self._info(name, table))
        assert info is not None
        return info

    def read_property(self, name: str, key: str) -> str | None:
        """Properties live in the ``vector`` field's metadata (schema metadata cannot be updated in place)."""
        base.check_property(key, None)

        def read(table: Any) -> str | None:
            raw = (table.schema.field(VECTOR).metadata or {}).get(key.encode())
            return raw.decode() if raw else None

        return self._guard(name, read)

    def write_property(self, name: str, key: str, value: str | None) -> None:
        base.check_property(key, value)

        def write(table: Any) -> None:
            update = {"path": VECTOR, "metadata": {key: value or ""}}  # "" reads as unset
            with self._write_lock:
                self._commit(f"property of {name!r}", lambda: table.update_field_metadata(update))

        self._guard(name, write)

    def drop_collection(self, name: str) -> bool:
        base.check_collection_name(name)
        with self._write_lock:
            try:
                self._table(name)
            except base.CollectionNotFound:
                self._forget(name)
                try:
                    self._db.open_table(name)
                except Exception:
                    return False
                raise base.CollectionMismatch.foreign(name) from None
            self._forget(name)
            self._maintenance.forget(name)
            return base.dropped(lambda: self._db.drop_table(name), _missing)

    def list_collections(self) -> list[IndexedCollection]:
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
            except (base.CollectionNotFound, ValueError):
                continue  # not ours
        return infos

    # --- documents --------------------------------------------------------------------------------------------

    def upsert(self, name: str, docs: Sequence[IndexRecord]) -> None:
        self._guard(name, lambda table: self._upsert(name, table, docs))

    def _upsert(self, name: str, table: Any, docs: Sequence[IndexRecord]) -> None:
        dimension = self._dimension(table)
        batch = base.prepare_docs(docs, dimension)
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
                TERMS: pa.array(
                    [
                        filters.document_terms(d.metadata, base.declared_modality(d)) + base.extra_terms(d)
                        for d in batch
                    ],
                    pa.list_(pa.utf8()),
                ),
                OCR_TEXT: pa.array([d.ocr_text for d in batch], pa.utf8()),
                OCR_LINES: pa.array([lines_to_json(d.ocr_lines) for d in batch], pa.utf8()),
                FTS_COLUMN: pa.array([base.keyword_text(d.text, d.ocr_text) for d in batch], pa.utf8()),
                MODALITY: pa.array([base.record_modality(d) for d in batch], pa.utf8()),
            },
            # The table's field flags (non-nullable primary key) but the *logical* JSON type: the table reports its
            # metadata column in storage form (large_binary), and rows cast to that are not JSONB (range filters fail).
            schema=_schema(dimension, "").remove_metadata(),
        )
        with self._write_lock:
            before = table.version
            merge = table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
            self._commit(f"upsert into {name!r}", lambda: merge.execute(data))
            after = table.version
            self._patch_matrix(name, _creation_id(table), before, after, data)
        self._maintenance.wrote(name)  # index build and compaction: in the background (_maintain)

    def _patch_matrix(
        self,
        name: str,
        created: bytes,
        before: int,
        after: int,
        upserted: pa.Table | None,
        deleted: Sequence[str] = (),
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
            if m.version != before or after != before + 1 or m.created != created:
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
                matrix = _Matrix(after, m.created, vectors, payload)
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

    def _fts_backlog(self, table: Any) -> bool:
        """Whether enough rows are outside the full-text index (searched flat) to fold them in."""
        for index in table.list_indices():
            if list(index.columns) == [FTS_COLUMN]:
                stats = table.index_stats(index.name)
                if stats is not None:
                    return bool(stats.num_unindexed_rows > max(1_000, stats.num_indexed_rows // 10))
        return False

    def _maintain(self, name: str, writes: int, failures: int) -> bool:
        """Background (:mod:`service.index.maintenance`): build the ANN index once the collection is past the
        threshold; compact and fold new rows into the indexes every ``MAINTAIN_EVERY_WRITES`` writes or when a
        backlog builds up. Returns whether it compacted.

        Holds no lock writers take: a write never waits for a build or a compaction. A compaction that loses a
        commit race with a writer fails (retried with backoff); after ``LOCKED_AFTER_FAILURES`` in a row it runs
        holding the writers' lock, so a collection written without pause still gets compacted. Queries re-read
        the exact matrix at the new version (or use the ANN index once it exists)."""
        try:
            table = self._maintenance_handle(name)
            index = self._vector_index(table)
            if index is None and table.count_rows() > self._ann_threshold:
                self._build_ann(name, table)
                return False
            if not (writes >= self._maintenance_every or self._backlog(table, index)):
                return False
            if failures >= LOCKED_AFTER_FAILURES:
                with self._write_lock:
                    table.optimize(cleanup_older_than=self._retention)
            else:
                table.optimize(cleanup_older_than=self._retention)
            return True
        except base.CollectionNotFound:
            self._maintenance.forget(name)
            return True
        except Exception as e:
            if _missing(e):
                self._forget(name)
                self._maintenance.forget(name)
                return True
            raise

    def _maintenance_handle(self, name: str) -> Any:
        """A table handle of its own for a maintenance pass: LanceDB's handle holds its dataset exclusively while
        it builds an index or optimizes (measured: an upsert through the same handle waited 358 s for a 50k-row
        build), so requests keep theirs."""
        base.check_collection_name(name)
        try:
            return self._db.open_table(name)
        except (ValueError, FileNotFoundError) as e:
            raise base.CollectionNotFound(name) from e

    def _build_ann(self, name: str, table: Any) -> None:
        """Build the IVF_HNSW_SQ cosine index (and the filter-term index) in a child process
        (``python -m service.index.lance <path> <name>``): Lance's build occupies the async runtime's worker
        threads, and in this process every query and write through LanceDB waited for it (measured: an upsert
        waited 381 s for a 50k-row build on 2 vCPUs, bench.upsert_growth). Writers go on meanwhile: Lance commits
        the index over the fragments it read; rows written since are searched flat until the next optimize.
        The child runs at a lower CPU priority (nice 10). ``close()`` stops a build in progress (nothing is
        committed then)."""
        log.info("building IVF_HNSW_SQ index on collection %r (in a background process)", name)
        t0 = time.monotonic()
        cmd = [sys.executable, "-m", "service.index.lance", self._path, name]
        with self._lock:
            if self._closed:
                return
            proc = self._build_proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        try:
            _, err = proc.communicate(timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise RuntimeError(f"building the index of collection {name!r} took over {BUILD_TIMEOUT_S:.0f} s") from None
        finally:
            self._build_proc = None
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
            raise RuntimeError(f"building the index of collection {name!r} failed: {tail[0]}")
        with self._lock:
            self._matrices.pop(name, None)  # searches use the index from now on
        log.info("index of collection %r built in %.1f s", name, time.monotonic() - t0)

    def _backlog(self, table: Any, index: Any | None) -> bool:
        """Whether rows outside the vector or full-text index, or small fragments, have piled up."""
        if self._fts_backlog(table):
            return True
        if index is None:
            return False
        stats = table.index_stats(index.name)
        unindexed = stats.num_unindexed_rows if stats is not None else 0
        if unindexed > max(1_000, (stats.num_indexed_rows if stats else 0) // 10):
            return True
        return bool(table.stats()["fragment_stats"]["num_small_fragments"] > MAX_SMALL_FRAGMENTS)

    def _rows_by_id(self, table: Any, ids: list[str], columns: list[str]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), ID_CHUNK):
            chunk = unique[start : start + ID_CHUNK]
            query = table.search().where(col("id").isin(chunk)).select(columns).limit(len(chunk))
            rows.extend(query.to_arrow().to_pylist())
        return rows

    def vectors(self, name: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """From the in-memory matrix while exact search keeps one (unit vectors, ~0.1 ms for 50), else the id and
        vector columns only (reading whole documents for 50 hits took ~10x a search: bench/RESULTS.md section 12)."""
        wanted = base.check_ids(ids)

        def read(table: Any) -> dict[str, np.ndarray]:
            with self._lock:
                matrix = self._exact_matrix(name, table)
            if matrix is not None:
                at = matrix.rows
                return {d: matrix.vectors[at[d]] for d in wanted if d in at}
            rows = self._rows_by_id(table, wanted, ["id", VECTOR])
            return {row["id"]: np.asarray(row[VECTOR], dtype=np.float32) for row in rows}

        return self._guard(name, read)

    def delete(self, name: str, ids: Sequence[str]) -> int:
        wanted = list(dict.fromkeys(base.check_ids(ids)))
        return self._guard(name, lambda table: self._delete(name, table, wanted))

    def _delete(self, name: str, table: Any, wanted: list[str]) -> int:
        """Delete the ids that exist; ids that match nothing commit nothing (no table version, no files)."""
        deleted = 0
        with self._write_lock:
            version = table.version
            for start in range(0, len(wanted), ID_CHUNK):
                chunk = [row["id"] for row in self._rows_by_id(table, wanted[start : start + ID_CHUNK], ["id"])]
                if not chunk:
                    continue
                result = self._commit(f"delete from {name!r}", partial(table.delete, col("id").isin(chunk)))
                deleted += int(getattr(result, "num_deleted_rows", 0))
                before, version = version, table.version
                self._patch_matrix(name, _creation_id(table), before, version, None, chunk)
        if deleted:
            self._maintenance.wrote(name)
        return deleted

    def wait_for_maintenance(self, timeout: float = 60.0) -> bool:
        """Block until no background maintenance is pending or running (tests, shutdown); ``False`` on timeout."""
        return self._maintenance.wait_idle(timeout)

    def get(self, name: str, ids: Sequence[str]) -> list[IndexRecord]:
        wanted = base.check_ids(ids)
        return self._guard(name, lambda table: self._get(table, wanted))

    def image_refs(self, name: str) -> set[str]:
        return self._guard(name, lambda table: {v for v in _column(table, "image") if v})

    def ids(self, name: str, after: str | None = None, limit: int | None = None) -> list[str]:
        """One filtered scan of the id and terms columns with a top-``limit`` sort (Lance's TopK keeps ``limit``
        rows, not the collection); no index orders ids, so a page still reads the column once."""
        base.check_id_page(after, limit)
        where = NOT_CONTINUATION if after is None else f"{(col('id') > after).to_sql()} AND {NOT_CONTINUATION}"

        def page(table: Any) -> list[str]:
            n = limit if limit is not None else table.count_rows()
            if not n:
                return []
            query = table.search().where(where).select(["id"]).order_by([ColumnOrdering(column_name="id")])
            return list(query.limit(n).to_arrow().column("id").to_pylist())

        return self._guard(name, page)

    def _get(self, table: Any, wanted: list[str]) -> list[IndexRecord]:
        found = {
            row["id"]: IndexRecord(
                id=row["id"],
                text=row["text"],
                image=row["image"],
                metadata=_load_metadata(row[METADATA]),
                embedding=[float(x) for x in row[VECTOR]],
                ocr_text=row[OCR_TEXT],
                ocr_lines=lines_from_json(row[OCR_LINES]),
                modality=filters.stored_modality(row["text"], row["image"], row[TERMS]),
            )
            for row in self._rows_by_id(table, wanted, [*HIT_COLUMNS, VECTOR])
        }
        return base.order_by_ids(wanted, found)

    def _exact_matrix(self, name: str, table: Any) -> _Matrix | None:
        """The collection's unit vectors (and hit columns) in RAM for exact search, refreshed per table version.

        Lance's flat KNN decodes the whole vector column on every query (~12x numpy at 100k x 512, see
        bench/RESULTS.md); a matrix kept in memory makes exact search numpy brute force. Only while the
        collection has no ANN index and fits in ``exact_cache_bytes`` (all collections together).
        """
        version = table.version
        created = _creation_id(table)
        cached = self._matrices.get(name)
        if cached is not None and (cached.version, cached.created) == (version, created):
            return cached
        self._matrices.pop(name, None)
        if self._vector_index(table) is not None:
            return None
        rows = table.count_rows()
        need = rows * self._dimension(table) * 4
        if rows == 0 or need + sum(m.nbytes for m in self._matrices.values()) > self._exact_cache_bytes:
            return None
        data = table.search().select([*HIT_COLUMNS, VECTOR]).limit(rows).to_arrow()
        if need + data.nbytes + sum(m.nbytes for m in self._matrices.values()) > self._exact_cache_bytes:
            return None
        vectors = data[VECTOR].combine_chunks().flatten().to_numpy().reshape(len(data), -1).astype(np.float32)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        payload = data.drop_columns([VECTOR]).combine_chunks()
        matrix = _Matrix(version, created, vectors, payload)
        self._matrices[name] = matrix
        return matrix

    def _search_in_memory(
        self,
        matrix: _Matrix,
        query: np.ndarray,
        k: int,
        rows: np.ndarray | None = None,
        scores: np.ndarray | None = None,
    ) -> list[IndexHit]:
        """Exact top-``k`` among ``rows`` (all when None); ``scores``: every row's cosine, if already computed."""
        if scores is None:
            scores = matrix.vectors @ (query / max(float(np.linalg.norm(query)), 1e-12))
        among = scores if rows is None else scores[rows]
        k = min(k, len(among))
        if k == 0:
            return []
        top = np.argpartition(-among, k - 1)[:k]
        top = top[np.argsort(-among[top], kind="stable")]
        picked = top if rows is None else rows[top]
        payload = matrix.payload.take(pa.array(picked)).to_pylist()
        return [_hit(row, float(scores[t])) for row, t in zip(payload, picked, strict=True)]

    def search_by_modality(
        self, name: str, vector: Sequence[float], k: int, modalities: Sequence[str], filter: Filter | None = None
    ) -> dict[str, list[IndexHit]]:
        """Without other conditions and while the collection is searched in memory: one matrix product, then the
        top-``k`` of each modality's rows (a balanced search costs about one plain search)."""
        rest = {key: v for key, v in (filter or {}).items() if key != filters.MODALITY_KEY}
        if not rest:
            filters.parse_filter({filters.MODALITY_KEY: {"$in": list(modalities)}} if modalities else None)

            def draw(table: Any) -> dict[str, list[IndexHit]] | None:
                query_vector = base.check_search_args(vector, k, self._dimension(table))
                with self._lock:
                    matrix = self._exact_matrix(name, table)
                if matrix is None:
                    return None
                q = np.asarray(query_vector, dtype=np.float32)
                scores = matrix.vectors @ (q / max(float(np.linalg.norm(q)), 1e-12))
                groups = matrix.modalities
                empty = np.zeros(0, dtype=np.int64)
                return {m: self._search_in_memory(matrix, q, k, groups.get(m, empty), scores) for m in modalities}

            found = self._guard(name, draw)
            if found is not None:
                return found
        return super().search_by_modality(name, vector, k, modalities, filter)

    def modality_sample(self, name: str, modality: str, n: int) -> tuple[int, np.ndarray]:
        clauses = filters.parse_filter({filters.MODALITY_KEY: modality})

        def sample(table: Any) -> tuple[int, np.ndarray]:
            dimension = self._dimension(table)
            where = _where(table, clauses)
            with self._lock:
                matrix = self._exact_matrix(name, table)
            if matrix is not None:
                rows = matrix.modalities.get(modality, np.zeros(0, dtype=np.int64))
                if len(rows) > n:
                    rows = np.sort(np.random.default_rng(0).choice(rows, size=max(n, 0), replace=False))
                return len(matrix.modalities.get(modality, rows)), np.ascontiguousarray(matrix.vectors[rows])
            count = int(table.count_rows(where))
            if not count or n < 1:
                return count, np.zeros((0, dimension), np.float32)
            data = table.search().where(where).select([VECTOR]).limit(n).to_arrow()
            vectors = data[VECTOR].combine_chunks().flatten().to_numpy().reshape(len(data), -1).astype(np.float32)
            return count, vectors  # the first rows (a scan): cheap, not a random sample

        return self._guard(name, sample)

    def search(self, name: str, vector: Sequence[float], k: int, filter: Filter | None = None) -> list[IndexHit]:
        clauses = filters.parse_filter(filter)
        return self._guard(name, lambda table: self._search(name, table, vector, k, _where(table, clauses)))

    def _search(self, name: str, table: Any, vector: Sequence[float], k: int, where: str | None) -> list[IndexHit]:
        query_vector = base.check_search_args(vector, k, self._dimension(table))
        if where is None:
            with self._lock:
                matrix = self._exact_matrix(name, table)
            if matrix is not None:
                return self._search_in_memory(matrix, np.asarray(query_vector, dtype=np.float32), k)
        query = (
            table.search(np.asarray(query_vector, dtype=np.float32), vector_column_name=VECTOR)
            .distance_type("cosine")
            .limit(k)
            .select([*HIT_COLUMNS, "_distance"])
        )
        if where is not None:
            query = query.where(where, prefilter=True)
        # Only used when an ANN index exists: oversample from the quantised index, then re-rank exactly.
        ef = max(MIN_FILTERED_EF if where is not None else MIN_EF, 2 * k * REFINE_FACTOR)
        query = query.ef(ef).refine_factor(REFINE_FACTOR)
        hits = [_hit(row, 1.0 - float(row["_distance"])) for row in query.to_arrow().to_pylist()]
        hits.sort(key=lambda h: h.score, reverse=True)
        return hits

    def has_keyword_data(self, name: str) -> bool:
        return self._guard(name, lambda table: self._has_keyword_data(name, table))

    def _has_keyword_data(self, name: str, table: Any) -> bool:
        key = (_creation_id(table), table.version)
        cached = self._keyword_data.get(name)
        if cached is not None and cached[:2] == key:
            return cached[2]
        found = bool(table.count_rows(f"{FTS_COLUMN} IS NOT NULL") > 0)
        self._keyword_data[name] = (*key, found)
        return found

    def keyword_search(self, name: str, query: str, k: int, filter: Filter | None = None) -> list[IndexHit]:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        clauses = filters.parse_filter(filter)
        if not query.strip():
            self._table(name)  # still 404 for an unknown collection
            return []
        return self._guard(name, lambda table: self._keyword_search(table, query, k, _where(table, clauses)))

    def _keyword_search(self, table: Any, query: str, k: int, where: str | None) -> list[IndexHit]:
        # MatchQuery: the text is analysed (tokenised, stemmed, stop words dropped), never parsed as query syntax
        match = MatchQuery(query, FTS_COLUMN)  # type: ignore[call-arg]  # pydantic defaults mypy does not see
        search = table.search(match).select([*HIT_COLUMNS, "_score"]).limit(k)
        if where is not None:
            search = search.where(where, prefilter=True)
        hits = [_hit(row, float(row["_score"])) for row in search.to_arrow().to_pylist()]
        hits.sort(key=lambda h: h.score, reverse=True)
        return hits

    def close(self) -> None:
        with self._lock:
            self._closed = True
            proc = self._build_proc
        if proc is not None and proc.poll() is None:
            proc.kill()  # a build cut short commits nothing
        self._maintenance.close()
        with self._lock:
            self._tables.clear()


def ann_partition_size(table: Any) -> int | None:
    """Target rows per IVF partition of the collection's ANN index: at build time, one partition per modality that
    holds at least ``MIN_PARTITION_SHARE`` of the rows (at most ``MAX_PARTITION_ROWS`` rows each); None (Lance's
    default: one partition up to about a million rows) where fewer than two modalities qualify. A target size, not
    a count: LanceDB's ``optimize()`` retrains the index as rows accumulate and keeps the target (measured: with
    ``num_partitions=2`` it went back to one partition, and took 192 s instead of 19 s at 120k rows).

    Embeddings of different modalities cluster apart (the modality gap), so k-means puts each modality in
    partitions of its own, each an HNSW graph, and a ``$modality`` search (balanced retrieval draws one per
    modality) walks only its modality's graph. In one graph for all, a search for the modality far from the query
    wades through the other's nodes (filtered out one by one): at 100k rows (half text, half image, gap 1.0) the
    image-filtered search took 56 ms of graph search against 1.6 ms unfiltered (Lance's ``analyze_plan``). Where
    modalities do not cluster apart, the partitions mix them, and a filtered search finds allowed rows nearby."""
    if MODALITY not in table.schema.names:
        return None
    rows = table.count_rows()
    counts = [table.count_rows(filters.modality_in((m,), MODALITY)) for m in filters.MODALITY_VALUES]
    modalities = sum(1 for c in counts if rows and c >= MIN_PARTITION_SHARE * rows)
    return min(-(-rows // modalities), MAX_PARTITION_ROWS) if modalities > 1 else None


def build_ann_index(path: str, name: str) -> None:
    """Build collection ``name``'s ANN and filter-term indexes (run in a child process by ``_build_ann``)."""
    options = objectstore.S3Settings.from_env().lance_storage_options() if objectstore.is_s3(path) else {}
    table = lancedb.connect(path, storage_options=options or None).open_table(name)
    table.create_index(
        VECTOR,
        config=HnswSq(distance_type="cosine", target_partition_size=ann_partition_size(table)),
        name=VECTOR_INDEX,
    )
    scalar: tuple[tuple[str, LabelList | Bitmap, str], ...] = (
        (TERMS, LabelList(), TERMS_INDEX),
        (MODALITY, Bitmap(), MODALITY_INDEX),
    )
    for column, config, index in scalar:
        try:
            table.create_index(column, config=config, name=index)
        except Exception as e:  # an optimisation only; filters work without it
            print(f"could not build the {column} index of collection {name!r}: {e}", file=sys.stderr)


if __name__ == "__main__":
    os.nice(10)  # a background build yields the CPU to the service's requests
    build_ann_index(sys.argv[1], sys.argv[2])


def _column(table: Any, field: str) -> list[Any]:
    """Every row's ``field`` (a scan of that column alone)."""
    rows = table.count_rows()
    return table.search().select([field]).limit(rows).to_arrow().column(field).to_pylist() if rows else []
