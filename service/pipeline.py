"""Search's ingest and search flows as plain code: what ``service.search.Search`` (a thin BentoML class) runs.

The pipeline talks to the models through ports (``service.ports``), to the vector index through ``VectorIndex``
and to stored media through ``MediaStore``, so unit tests reach every rule here without a server.

Ingest (``upsert``): validate -> media (check / store images) -> read (the text in images, when OCR is on) ->
embed (documents without an ``embedding``; a text-only embedder gets an image's text) -> write (index).
Search (``search``): read the query image's text (when needed) -> choose the mode -> embed the query (unless
keyword) -> retrieve candidates (vector, keyword or hybrid, with evidence; ``service.retrieval``) -> rerank the
shortlist (a text reranker scores image documents by their text and OCR text) -> respond.
Each step is one method, so later stages slot in between.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict, TypeVar

import numpy as np
from mmsearch_schema.errors import field_to_loc
from mmsearch_schema.fields import MODALITIES
from mmsearch_schema.wire import (
    AliasDeleteRequest,
    AliasDeleteResponse,
    AliasesResponse,
    AliasInfo,
    AliasRequest,
    AliasResponse,
    CollectionInfo,
    CollectionsResponse,
    DeleteRequest,
    DeleteResponse,
    DropRequest,
    DropResponse,
    Evidence,
    GetRequest,
    GetResponse,
    IdsRequest,
    IdsResponse,
    Item,
    Modality,
    SearchHit,
    SearchRequest,
    SearchResponse,
    SearchTimings,
    SearchWarning,
    StoredDocument,
    UpsertDocument,
    UpsertRequest,
    UpsertResponse,
    as_item,
)

from service import avingest, balance, bindings, calibration, mediagc, segments
from service.aliases import ALIASES_COLLECTION, AliasStore
from service.config import Settings
from service.embedcache import EmbeddingCache, cache_key
from service.errors import ApiError, Loc, unprocessable
from service.index import base as index_base
from service.index import filters as index_filters
from service.inputs import check_count, check_supported, check_text_length, unit_vector
from service.media import MediaError, MediaLoader, content_hash
from service.mediastore import SCHEME as MEDIA_SCHEME
from service.mediastore import MediaStore, content_type, join_ref, name_of, split_ref, thumbnail_name
from service.ocr import OcrPage
from service.ports import EmbedderPort, Embeddings, ReaderPort, RerankerPort
from service.priority import PriorityGate
from service.reading import TextReader, modality_paths
from service.redundancy import Redundancy
from service.retrieval import Balance, Candidate, Mode, ModeError, Query, choose_mode, query_modality, retrieve
from service.storage import StorageHealth, is_storage_fault

T = TypeVar("T")
log = logging.getLogger("mmsearch.search")
_WITH_TEXT: dict[str, Modality] = {"audio": "text+audio", "video": "text+video"}
STAGES = ("read", "embed", "retrieve", "rerank", "total")
SEGMENT_DRAW_FACTOR = 4
"""How many more rows a search draws, once, when one document's segments crowd its shortlist (``_draw``)."""
MAX_RERANK_ROUNDS = 4
"""Reranker calls per search at most when it refuses candidates one by one (their media unreadable)."""


@dataclass
class IngestDoc:
    """One document on its way into the index."""

    position: int
    """Index in the request's ``documents`` (for error paths)."""
    doc: UpsertDocument
    image: str | None = None
    """The stored image's ``media://`` reference."""
    inline: str | None = None
    """The image as the Embedder and Reader get it at ingest: a data URI of the stored bytes (they need no access
    to the media store; only the Reranker reads it, at every search)."""
    source: str | None = None
    """The URL the image was fetched from (once, at ingest)."""
    vector: np.ndarray | None = None
    ocr: OcrPage | None = None
    """The text read from the image (OCR on)."""
    clip: avingest.Clip | None = None
    """An audio or video document's stored clip and its windows (``service.avingest``)."""
    vectors: list[np.ndarray] = field(default_factory=list)
    """One vector per window of ``clip``."""

    @property
    def is_clip(self) -> bool:
        """An audio or video document (embedded per window, ``_embed_windows``)."""
        return self.doc.media in ("audio", "video")

    @property
    def needs_vector(self) -> bool:
        """A document ``_embed_documents`` embeds: no vector yet, not a clip."""
        return self.vector is None and not self.is_clip

    @property
    def modality(self) -> str:
        """``audio``, ``video`` (or with ``text+``) for a clip document, else ``""`` (the index derives it)."""
        if self.clip is None:
            return self.doc.modality or ""
        kind = self.clip.source.kind
        return kind if self.doc.text is None else f"text+{kind}"


@dataclass
class SearchRun:
    """One search on its way through the stages: the request, its deadline and the stage clock."""

    req: SearchRequest
    query: Item
    deadline: float | None
    clock: Callable[[], float] = time.perf_counter
    started: float = 0.0
    marks: dict[str, float] = field(default_factory=dict)
    text: str | None = None
    """The query's text for keyword retrieval and evidence: its own and the text read from its image."""
    ocr_text: dict[str, str | None] = field(default_factory=dict)
    """OCR text of the candidates, by id (a text reranker scores image documents by it)."""
    warnings: list[SearchWarning] = field(default_factory=list)
    balanced: bool = False

    def warn(self, doc_id: str | None, code: str, message: str) -> None:
        self.warnings.append(SearchWarning(id=doc_id, code=code, message=message))

    def __post_init__(self) -> None:
        self.started = self.clock()

    def mark(self, stage: str) -> None:
        """Close ``stage`` now: its time is from the previous mark (or the start) to here."""
        self.marks[stage] = self.clock()

    def timings(self) -> SearchTimings:
        out: dict[str, float] = {}
        last = self.started
        for stage in STAGES[:-1]:
            end = self.marks.get(stage, last)
            out[stage] = (end - last) * 1000
            last = end
        out["total"] = (last - self.started) * 1000
        return SearchTimings(**out)

    def remaining(self) -> float | None:
        return remaining(self.deadline)


class SearchPipeline:
    """Ingest and search over one vector index, with the Embedder and Reranker behind ports."""

    def __init__(
        self,
        settings: Settings,
        *,
        embedder: EmbedderPort,
        reranker: RerankerPort,
        reader: ReaderPort | None = None,
        index: index_base.VectorIndex,
        media: MediaStore,
        loader: MediaLoader,
        gate: PriorityGate,
        observe_stage: Callable[[str, float], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        storage: StorageHealth | None = None,
        cache: EmbeddingCache | None = None,
        on_cache_hits: Callable[[int], None] | None = None,
    ) -> None:
        """``reader``: reads the text in images (None: OCR off). ``observe_stage(stage, seconds)`` records stage
        latencies (a metric); ``clock`` times the stages; ``storage`` is told of storage faults (``/readyz`` reads
        it)."""
        self.settings = settings
        self.embedder = embedder
        self.reranker = reranker
        self.reader = TextReader(reader)
        self.index = index
        self.aliases = AliasStore(index)
        self.media = media
        self.loader = loader  # validates inline images that skip the embedder
        self.gate = gate  # ingest work (storing images, index writes) yields to in-flight searches
        self.observe_stage = observe_stage
        self.clock = clock
        self.storage = storage if storage is not None else StorageHealth([])
        self.cache = cache
        self._inline_media = False
        """Set once the Reranker shows it cannot read the media store: candidate images then go inline."""
        self._gc_task: asyncio.Task[None] | None = None
        self._gc_again = False
        self._gc_last = -math.inf
        """Document embeddings by content (``service.embedcache``); None: every document goes to the model."""
        self.on_cache_hits = on_cache_hits
        self._write_locks: dict[str, asyncio.Lock] = {}
        self._embedder_info: dict[str, Any] | None = None
        self._reranker_info: dict[str, Any] | None = None
        # (dimension, model), looked up once per collection; forgotten when the index says the collection is gone
        # or of another dimension or model (dropped or re-created, possibly through another replica).
        self._dimensions: dict[str, tuple[int, str]] = {}
        self._modality_stats: dict[str, tuple[float, dict[str, balance.GroupStats]]] = {}
        self._calibrations: dict[str, tuple[float, calibration.Calibration | None]] = {}
        self._generations: dict[str, int] = {}
        """Per collection, how many times its cached statistics were forgotten (see ``forget_statistics``)."""

    # ------------------------------------------------------------------------------------------- plumbing
    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking index (or media store) call in a worker thread; its errors become their API answers."""
        try:
            return await asyncio.to_thread(fn, *args)
        except ApiError:
            raise
        except index_base.InvalidCollectionName as e:
            raise ApiError(400, "invalid_collection", str(e), field="collection") from None
        except index_base.CollectionNotFound as e:
            raise ApiError(404, "collection_not_found", str(e), field="collection") from None
        except index_base.CollectionMismatch as e:
            raise ApiError(409, "collection_mismatch", str(e), field="collection") from None
        except index_base.InvalidFilter as e:
            raise ApiError(400, "invalid_filter", f"filter: {e}", field="filter") from None
        except index_base.UnsupportedMode as e:
            raise ApiError(422, "unsupported_mode", str(e), field="mode") from None
        except ModeError as e:
            raise ApiError(422, "unsupported_mode", str(e), field="mode") from None
        except Exception as e:
            if not is_storage_fault(e):
                raise
            self.storage.fault(e)
            raise ApiError(
                503,
                "storage_unavailable",
                "the index or media storage cannot be written (disk full or read-only); retry later",
                retry_after=5,
            ) from None

    async def embedder_info(self, *, refresh: bool = False) -> dict[str, Any]:
        """The embedder's model and dimension, cached; ``refresh`` when an answer shows another model."""
        if self._embedder_info is None or refresh:
            self._embedder_info = await self.embedder.info()
        return self._embedder_info

    async def reranker_info(self) -> dict[str, Any] | None:
        """The Reranker's ``/info`` (``model`` None: none configured), cached; None while it cannot be asked."""
        if self._reranker_info is None:
            try:
                self._reranker_info = await self.reranker.info()
            except ApiError:
                return None
        return self._reranker_info

    def describe(self, embedder_modalities: Sequence[str]) -> dict[str, Any]:
        """What ``/info`` adds about retrieval: OCR, keyword search, the fusion, and which path each modality
        takes."""
        return {
            "ocr": self.reader.enabled,
            "modality_paths": modality_paths(embedder_modalities, self.reader.enabled),
            "index_backend": self.index.backend,
            "keyword_search": self.index.keyword_capable,
            "hybrid_fusion": self.settings.hybrid_fusion,
        }

    async def collection_dimension(self, name: str) -> int:
        """A collection's dimension (404 if unknown), looked up once: a search must not count rows every time."""
        return (await self._collection(name))[0]

    async def _collection(self, name: str) -> tuple[int, str]:
        known = self._dimensions.get(name)
        if known is None:
            info = await self.in_thread(self.index.get_collection, name)
            known = self._dimensions[name] = (info.dimension, info.model)
        return known

    async def _binding(self, collection: str, requested: str | None, *, refresh: bool = False) -> bindings.Binding:
        """The model an upsert into ``collection`` embeds with: the collection's own, else the requested one."""
        info = await self.embedder_info(refresh=refresh)
        if refresh:
            self._dimensions.pop(collection, None)
        try:
            held: tuple[int, str] | None = await self._collection(collection)
        except ApiError as e:
            if e.code != "collection_not_found":
                raise
            held = None
        return bindings.choose(info, collection, held, requested)

    async def _rebind(self, req: UpsertRequest, bound: bindings.Binding, embedded: Embeddings) -> bindings.Binding:
        """The Embedder answered with another model than the binding's (replaced behind Search): a new collection
        takes the model that answered, if /info now says so; an existing one keeps its own (409)."""
        answered = (embedded.model, embedded.vectors.shape[1])
        if not bound.new:
            self.embedder_info_stale()
            raise bindings.mismatch(req.collection, bound.name, embedded.model, answered=True)
        bound = await self._binding(req.collection, req.model, refresh=True)
        if answered != (bound.name, bound.dimension):
            raise ApiError(503, "embedder_changed", "the embedder changed model during the request", retry_after=1)
        return bound

    def embedder_info_stale(self) -> None:
        """Ask the Embedder's /info again next time (it answered with a model /info did not list)."""
        self._embedder_info = None

    async def resolve(self, name: str) -> str:
        """The collection a request's ``collection`` names: an alias's target, else the name itself (from the
        cached table without a thread hop while it is fresh)."""
        fresh = self.aliases.cached(name)
        return fresh if fresh is not None else await self.in_thread(self.aliases.resolve, name)

    async def alias_table(self) -> AliasesResponse:
        """Every alias with the collection it points at."""
        table = await self.in_thread(self.aliases.table)
        return AliasesResponse(aliases=[AliasInfo(alias=a, collection=c) for a, c in sorted(table.items())])

    async def set_alias(self, req: AliasRequest) -> AliasResponse:
        """Point an alias at a collection: created, or switched in one atomic write (``previous``: its old target).
        An alias cannot shadow a collection (409) nor point at another alias (422)."""
        previous = await self.in_thread(self.aliases.set, req.alias, req.collection)
        return AliasResponse(alias=req.alias, collection=req.collection, previous=previous)

    async def delete_alias(self, req: AliasDeleteRequest) -> AliasDeleteResponse:
        """Delete an alias (``deleted`` False if there was none); its collection stays."""
        deleted = await self.in_thread(self.aliases.delete, req.alias)
        return AliasDeleteResponse(alias=req.alias, deleted=deleted)

    def _lock(self, collection: str) -> asyncio.Lock:
        return self._write_locks.setdefault(collection, asyncio.Lock())

    # ------------------------------------------------------------------------------------------- ingest
    async def upsert(self, req: UpsertRequest) -> UpsertResponse:
        """Embed (document prompt) and store documents; an existing id is replaced. A new collection is bound to
        ``model`` (default: the Embedder's default model), an existing one embeds with its own."""
        self._check_upsert(req)
        req = req.model_copy(update={"collection": await self.resolve(req.collection)})
        bound = await self._binding(req.collection, req.model)
        dim, model = bound.dimension, bound.name
        self._check_clip_documents(req, bindings.model_info(await self.embedder_info(), model))
        batch = [IngestDoc(i, d) for i, d in enumerate(req.documents)]
        self._take_supplied_embeddings(batch, dim, model)
        await self._store_media(batch)
        await self._store_clips(batch)
        await self._read_text(batch)
        embedded = await self._embed_documents(batch, bound.text_only, model, dim, bound.revision)
        await self._embed_windows(batch, model)
        if embedded is not None and (embedded.model, embedded.vectors.shape[1]) != (model, dim):
            bound = await self._rebind(req, bound, embedded)  # the Embedder was replaced by another model
            dim, model = bound.dimension, bound.name
            self._take_supplied_embeddings(batch, dim, model)
        await self._write(req.collection, batch, dim, model, bound.revision if bound.new else None)
        self.schedule_media_gc()  # a replaced document may have left its old image unreferenced
        read = [d.ocr for d in batch if d.ocr is not None]
        return UpsertResponse(
            collection=req.collection,
            upserted=len(batch),
            ids=[d.doc.id for d in batch],
            ocr_images=len(read),
            ocr_lines=sum(len(p.lines) for p in read),
        )

    def _check_upsert(self, req: UpsertRequest) -> None:
        """Every document, embedded here or not, is checked by the same rules (a document that brings its own
        embedding must not store a text the embedder would have refused)."""
        docs = req.documents
        check_count("documents", len(docs), self.settings.max_documents_per_request, "documents")
        ids = [d.id for d in docs]
        if len(set(ids)) != len(ids):
            raise ApiError(400, "duplicate_id", "documents: ids must be unique within a request", field="documents")
        for i, d in enumerate(docs):
            check_text_length(f"documents[{i}]", d.text, self.settings)

    def _check_clip_documents(self, req: UpsertRequest, info: dict[str, Any]) -> None:
        """Audio and video documents: a modality the Embedder serves (422 naming its modalities), an id that leaves
        room for its segment rows' suffix, at most ``max_av_inputs_per_request`` clips per request."""
        clips = 0
        for i, d in enumerate(req.documents):
            kind = d.media
            if kind not in ("audio", "video"):
                continue
            clips += 1
            path = f"documents[{i}]"
            modality: Modality = kind if d.text is None else _WITH_TEXT[kind]
            check_supported(f"{path}.{kind}", modality, list(info.get("modalities") or []), str(info.get("model")))
            if len(d.id) > segments.MAX_DOCUMENT_ID_CHARS:
                raise unprocessable(
                    f"{path}.id: an audio or video document's id has at most {segments.MAX_DOCUMENT_ID_CHARS} "
                    "characters (its segments' rows add a suffix)",
                    f"{path}.id",
                )
        check_count("documents", clips, self.settings.max_av_inputs_per_request, "audio and video documents")

    async def _store_clips(self, batch: Sequence[IngestDoc]) -> None:
        """Fetch every clip once under the media policy, check its headers, cut it into windows and store it (with
        a keyframe preview per video window) in the media store: searches and the Embedder read it there."""
        todo = [d for d in batch if d.doc.media in ("audio", "video")]
        if not todo:
            return
        refs = [
            avingest.ClipRef(
                str(getattr(d.doc, str(d.doc.media))), str(d.doc.media), f"documents[{d.position}].{d.doc.media}"
            )
            for d in todo
        ]
        try:
            clips = await avingest.fetch_clips(refs, self.loader, self.settings)
        except MediaError as e:
            raise ApiError(e.status, e.reason, str(e), field=e.field) from None
        await self.gate.background_turn("store")
        try:
            await self.in_thread(avingest.store_clips, self.media, clips)
        except ApiError:
            raise
        except Exception as e:  # object storage unreachable or refusing
            raise ApiError(
                503, "storage_unavailable", f"the media store cannot be written ({type(e).__name__})", retry_after=5
            ) from None
        for d, clip in zip(todo, clips, strict=True):
            d.clip = clip
            ref = clip.source.ref
            d.source = ref if ref[:8].lower().startswith(("http://", "https://")) else None

    async def _embed_windows(self, batch: Sequence[IngestDoc], model: str) -> None:
        """One vector per window of every clip: the Embedder reads the stored clip and decodes only the window
        (``t0``/``t1`` items), in requests of at most ``max_av_inputs_per_request`` windows."""
        todo = [(d, w) for d in batch if d.clip is not None for w in d.clip.windows]
        chunk = self.settings.max_av_inputs_per_request
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            items = [_window_item(d, w) for d, w in part]
            try:
                out = await self.embedder.encode(items, "document", None, model)
            except ApiError as e:
                raise remap_inputs(e, [d.position for d, _ in part], "documents") from None
            for (d, _), v in zip(part, out.vectors, strict=True):
                d.vectors.append(v)

    def _take_supplied_embeddings(self, batch: Sequence[IngestDoc], dim: int, model: str) -> None:
        """Check and normalise the embeddings callers supplied (they skip the embedder)."""
        for d in batch:
            emb = d.doc.embedding
            if emb is None:
                continue
            path = f"documents[{d.position}].embedding"
            if len(emb) != dim:
                raise ApiError(
                    422,
                    "dimension_mismatch",
                    f"{path}: expected {dim} dimensions (model {model!r}), got {len(emb)}",
                    field=path,
                )
            try:
                d.vector = unit_vector(emb)
            except ValueError as e:
                raise ApiError(422, "invalid_embedding", f"{path}: {e}", field=path) from None

    async def _read_text(self, batch: Sequence[IngestDoc]) -> None:
        """Read the text in every document image (OCR on), document priority; cached by image content."""
        todo = [d for d in batch if d.image is not None]
        if not todo or not self.reader.enabled:
            return
        images = [(_image_key(str(d.image)), str(d.inline)) for d in todo]
        try:
            pages = await self.reader.read(images, "document", None)
        except ApiError as e:
            raise remap_inputs(e, [d.position for d in todo], "documents") from None
        for d, page in zip(todo, pages, strict=True):
            d.ocr = page

    def _embedding_item(self, d: IngestDoc, text_only: bool, model: str) -> Item:
        """What the embedder gets: the document, or for a text-only embedder an image's text (with its own)."""
        if not text_only or d.image is None or not self.reader.enabled:
            return Item(text=d.doc.text, image=d.inline)
        text = index_base.keyword_text(d.doc.text, d.ocr.text if d.ocr else None)
        if text is None:
            path = f"documents[{d.position}].image"
            raise ApiError(
                422,
                "no_text_in_image",
                f"{path}: no text was read from the image and the document has none; the embedder ({model}) reads "
                "text only, so images are represented by their text",
                field=path,
            )
        return Item(text=text)

    async def _embed_documents(
        self, batch: Sequence[IngestDoc], text_only: bool, model: str, dim: int, revision: str | None
    ) -> Embeddings | None:
        """Embed the documents without a vector. With the embedding cache, inputs already seen (same model and
        served revision, image bytes and text, under any id or URL) are not sent to the model, and one request's
        duplicates are sent once."""
        todo = [d for d in batch if d.needs_vector]
        if not todo:
            return None
        items = [self._embedding_item(d, text_only, model) for d in todo]
        weights = _weights(model, revision)
        keys = [cache_key(weights, "document", _image_sha(d.image), it.text) for d, it in zip(todo, items, strict=True)]
        await self._take_cached(todo, keys, dim)
        send = _first_of_each_key(todo, keys)
        if not send:
            return None
        try:
            out = await self.embedder.encode([items[i] for i in send], "document", None, model)
        except ApiError as e:
            raise remap_inputs(e, [todo[i].position for i in send], "documents") from None
        by_key = {keys[i]: v for i, v in zip(send, out.vectors, strict=True)}
        for d, k in zip(todo, keys, strict=True):
            if d.vector is None:
                d.vector = by_key[k]
        if self.cache is not None and out.model == model:
            await asyncio.to_thread(self.cache.put_many, list(by_key.items()))
        return out

    async def _take_cached(self, todo: Sequence[IngestDoc], keys: Sequence[str], dim: int) -> None:
        """Vectors the embedding cache holds for these keys (of this dimension), counted as cache hits."""
        if self.cache is None:
            return
        found = await asyncio.to_thread(self.cache.get_many, keys)
        hits = 0
        for d, k in zip(todo, keys, strict=True):
            v = found.get(k)
            if v is not None and v.shape[0] == dim:
                d.vector, hits = v, hits + 1
        if hits and self.on_cache_hits is not None:
            self.on_cache_hits(hits)

    async def _store_media(self, batch: Sequence[IngestDoc]) -> None:
        """Keep a copy of every image, content-addressed, with its thumbnail: a URL is fetched here, once, under
        the media policy; a data URI is decoded; a ``media://`` reference is read from the store. The caps are
        checked from the header, so a refused image fails the request before any model work. From here on the
        document's image is its ``media://`` reference (what every search reads; the Embedder and Reader get the
        same bytes inline, once)."""
        todo = [d for d in batch if d.doc.image is not None]
        if not todo:
            return
        try:
            got = await self.loader.fetch_images([(str(d.doc.image), f"documents[{d.position}].image") for d in todo])
        except MediaError as e:
            raise ApiError(e.status, e.reason, str(e), field=e.field) from None
        await self.gate.background_turn("store")
        try:
            stored = await self.in_thread(lambda: [self.media.put_image(data, fmt) for data, fmt in got])
        except ApiError:
            raise
        except Exception as e:  # object storage unreachable or refusing (a local disk fault is a storage fault above)
            raise ApiError(
                503, "storage_unavailable", f"the media store cannot be written ({type(e).__name__})", retry_after=5
            ) from None
        inline = await asyncio.to_thread(
            lambda: [_inline(str(d.doc.image), data, fmt) for d, (data, fmt) in zip(todo, got, strict=True)]
        )
        for d, s, uri in zip(todo, stored, inline, strict=True):
            d.image, d.inline = s.ref, uri
            image = str(d.doc.image)
            d.source = image if image[:8].lower().startswith(("http://", "https://")) else None

    async def _write(
        self, collection: str, batch: Sequence[IngestDoc], dim: int, model: str, revision: str | None
    ) -> None:
        """Write the documents' rows (a clip document: one per window); rows of the former versions' segments
        beyond the new ones are deleted after the write, so a replaced document never leaves one behind.
        ``revision``: the model's, recorded with the collection when this write creates it."""
        stored = [row for d in batch for row in _rows(d)]
        async with self._lock(collection):
            await self.in_thread(self.index.ensure_collection, collection, dim, model)
            if revision is not None:
                await self.in_thread(bindings.record_revision, self.index, collection, revision)
            await self.gate.background_turn("index")
            self.forget_statistics(collection)
            before = await self._segment_rows(collection, [d.doc.id for d in batch])
            await self.in_thread(self.index.upsert, collection, stored)
            written = {r.id for r in stored}
            stale = [rid for rid in before if rid not in written]
            if stale:
                await self.in_thread(self.index.delete, collection, stale)

    async def _segment_rows(self, collection: str, ids: Sequence[str]) -> list[str]:
        """The continuation rows (``service.segments``) the stored versions of these documents have."""
        firsts = await self.in_thread(self.index.get, collection, list(ids))
        out: list[str] = []
        for r in firsts:
            seg = segments.parse_ref(split_ref(r.image)[0])
            if seg is not None and seg.n > 1:
                out.extend(segments.row_ids(r.id, seg.n)[1:])
        return out

    # ------------------------------------------------------------------------------------------- documents
    async def delete(self, req: DeleteRequest) -> DeleteResponse:
        """Delete documents by id; ``deleted`` counts those that existed."""
        check_count("ids", len(req.ids), self.settings.max_ids_per_request, "ids")
        req = req.model_copy(update={"collection": await self.resolve(req.collection)})
        async with self._lock(req.collection):
            more = await self._segment_rows(req.collection, req.ids)
            n = await self.in_thread(self.index.delete, req.collection, req.ids)
            if more:  # a segmented document's other rows: it counts once
                await self.in_thread(self.index.delete, req.collection, more)
            self.forget_statistics(req.collection)
        if n:
            self.schedule_media_gc()
        return DeleteResponse(collection=req.collection, deleted=n)

    async def drop(self, req: DropRequest) -> DropResponse:
        """Drop a collection and all its documents (404 if it does not exist; 409 while an alias points at it)."""
        await self.in_thread(self.aliases.check_droppable, req.collection)
        async with self._lock(req.collection):
            self._dimensions.pop(req.collection, None)
            self.forget_statistics(req.collection)
            dropped = await self.in_thread(self.index.drop_collection, req.collection)
        if not dropped:
            raise ApiError(
                404, "collection_not_found", f"collection {req.collection!r} does not exist", field="collection"
            )
        self.schedule_media_gc()
        return DropResponse(collection=req.collection, dropped=True)

    async def get(self, req: GetRequest) -> GetResponse:
        """Documents by id, in the order asked (missing ids are skipped)."""
        check_count("ids", len(req.ids), self.settings.max_ids_per_request, "ids")
        req = req.model_copy(update={"collection": await self.resolve(req.collection)})
        found = await self.in_thread(self.index.get, req.collection, req.ids)
        return GetResponse(
            collection=req.collection,
            documents=[
                StoredDocument(
                    id=d.id,
                    text=d.text,
                    **_stored_media_fields(d.image, d.modality),
                    ocr_text=d.ocr_text,
                    modality=d.modality,
                    metadata=d.metadata,
                    embedding=d.embedding if req.include_embedding else None,
                )
                for d in found
            ],
        )

    async def ids(self, req: IdsRequest) -> IdsResponse:
        """A page of the collection's document ids in id order: a segmented document once, by its own id (its
        continuation rows are not documents: a reindex reads each id back with ``/get``). One ordered query of
        ``limit + 1`` ids per page (the extra one says whether there is a next)."""
        name = await self.resolve(req.collection)
        page = await self.in_thread(self.index.ids, name, req.after, req.limit + 1)
        more = len(page) > req.limit
        page = page[: req.limit]
        return IdsResponse(collection=name, ids=page, next=page[-1] if more else None)

    def schedule_media_gc(self) -> None:
        """Collect unreferenced media in the background (``service.mediagc``), at most once per
        ``media_gc_interval_s``; a request arriving during a collection asks for one more after it."""
        if not self.settings.media_gc:
            return
        if self._gc_task is not None and not self._gc_task.done():
            self._gc_again = True
            return
        self._gc_task = asyncio.get_running_loop().create_task(self._media_gc())

    async def _media_gc(self) -> None:
        while True:
            wait = self._gc_last + self.settings.media_gc_interval_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._gc_again = False
            self._gc_last = time.monotonic()
            try:
                await asyncio.to_thread(mediagc.collect, self.index, self.media, self.settings.media_gc_grace_s)
            except Exception as e:  # the next delete or upsert tries again
                log.warning("media gc failed: %s: %s", type(e).__name__, e)
            if not self._gc_again:
                return

    async def media_gc_idle(self) -> None:
        """Wait for a collection in progress (tests)."""
        while self._gc_task is not None and not self._gc_task.done():
            await asyncio.shield(self._gc_task)

    async def listed_collections(self) -> list[index_base.IndexedCollection]:
        """The index's collections less Search's own alias table."""
        infos = await self.in_thread(self.index.list_collections)
        return [c for c in infos if c.name != ALIASES_COLLECTION]

    async def collections(self) -> CollectionsResponse:
        """Every collection with its document count, dimension, embedding model and calibration (if any)."""
        out = []
        for c in await self.listed_collections():
            try:
                calib = await self.collection_calibration(c.name)
                revision = await self.in_thread(bindings.read_revision, self.index, c.name)
            except ApiError:
                calib, revision = None, None  # dropped meanwhile
            out.append(
                CollectionInfo(
                    name=c.name,
                    count=c.count,
                    dimension=c.dimension,
                    model=c.model,
                    revision=revision,
                    calibration=calib.describe() if calib is not None else None,
                )
            )
        return CollectionsResponse(collections=out)

    # ------------------------------------------------------------------------------------------- search
    def check_search(self, req: SearchRequest) -> None:
        """Refuse shortlist sizes the service does not serve (before any work). A shortlist smaller than ``top_k``
        is raised to it (``search``), as every client and the CLI expect."""
        if req.top_k > self.settings.max_candidates:
            raise unprocessable(
                f"top_k: at most {self.settings.max_candidates} (MMSEARCH_MAX_CANDIDATES; got {req.top_k})", "top_k"
            )
        if req.candidates > self.settings.max_candidates:
            raise unprocessable(
                f"candidates: at most {self.settings.max_candidates} (got {req.candidates})", "candidates"
            )

    async def search(self, req: SearchRequest) -> SearchResponse:
        """Embed the query, retrieve ``candidates``, rerank them and return the best ``top_k``.

        The request's ``timeout`` bounds the whole search (504); its deadline also travels to the model services.
        """
        self.check_search(req)
        update: dict[str, Any] = {"collection": await self.resolve(req.collection)}  # once: one collection answers
        if req.top_k > req.candidates:  # the shortlist is never smaller than the answer
            update["candidates"] = req.top_k
        req = req.model_copy(update=update)
        deadline = time.monotonic() + req.timeout if req.timeout else None
        try:
            async with asyncio.timeout(req.timeout), self.gate.interactive():
                return await self._search(SearchRun(req, as_item(req.query), deadline, self.clock))
        except TimeoutError:
            raise ApiError(504, "deadline_exceeded", f"search did not finish within timeout={req.timeout}s") from None

    async def _search(self, run: SearchRun) -> SearchResponse:
        req = run.req
        _, model = await self._collection(req.collection)  # 404 before any model work
        text_only = bindings.text_only(await self.embedder_info(), model)
        await self._read_query(run, text_only)
        run.mark("read")
        mode = await self.in_thread(choose_mode, req.mode, self.index, req.collection, run.text)
        qvec = None if mode == "keyword" else await self._embed_query(run, text_only, model)
        run.mark("embed")
        hits = await self._retrieve(run, mode, qvec)
        run.mark("retrieve")
        hits, reranked = await self._rerank_stage(run, hits)
        run.mark("rerank")
        timings = run.timings()
        if self.observe_stage is not None:
            for stage in STAGES:
                self.observe_stage(stage, getattr(timings, stage) / 1000)
        return SearchResponse(
            hits=hits[: req.top_k],
            mode=mode,
            reranked=reranked,
            balanced=run.balanced,
            timings_ms=timings,
            warnings=run.warnings,
            collection=req.collection,
            model=model,
        )

    async def _read_query(self, run: SearchRun, text_only: bool) -> None:
        """The query's text: its own, plus the text in its image when the embedder reads text only or keyword
        retrieval was asked for (read at query priority)."""
        query = run.query
        run.text = query.text
        if query.image is None or not self.reader.enabled:
            return
        if not text_only and run.req.mode not in ("keyword", "hybrid"):
            return
        try:
            pages = await self.reader.read([(_image_key(query.image), query.image)], "query", run.remaining())
        except ApiError as e:
            raise remap_inputs(e, [0], "query", single=True) from None
        run.text = index_base.keyword_text(query.text, pages[0].text)

    async def _embed_query(self, run: SearchRun, text_only: bool, model: str) -> np.ndarray:
        """The query's vector by ``model`` (its collection's)."""
        item = run.query
        if text_only and item.image is not None and self.reader.enabled:
            if not run.text:
                raise ApiError(
                    422,
                    "no_text_in_image",
                    "query.image: no text was read from the image; the embedder reads text only, so an image query "
                    "is represented by its text",
                    field="query.image",
                )
            item = Item(text=run.text)
        try:
            out = await self.embedder.encode([item], "query", run.remaining(), model)
        except ApiError as e:
            raise remap_inputs(e, [0], "query", single=True) from None
        qvec: np.ndarray = out.vectors[0]
        if self._embedder_info is not None and out.model not in _served_names(self._embedder_info):
            self.embedder_info_stale()  # replaced by another model: /info and the next upsert ask again
        name = run.req.collection
        if (qvec.shape[0], out.model) != await self._collection(name):
            self._dimensions.pop(name, None)  # re-created elsewhere? look again, once
            dimension, model = await self._collection(name)
            if qvec.shape[0] != dimension:
                raise ApiError(
                    409,
                    "collection_mismatch",
                    f"collection {name!r} has dimension {dimension}, the embedder gives {qvec.shape[0]}",
                    field="collection",
                )
            if model != out.model:  # same dimension, another vector space: its hits would be meaningless
                raise ApiError(
                    409,
                    "collection_mismatch",
                    f"collection {name!r} was embedded by model {model!r}, the embedder is {out.model!r}: re-ingest "
                    "it, or search it by keyword",
                    field="collection",
                )
        return qvec

    async def _retrieve(self, run: SearchRun, mode: Mode, qvec: np.ndarray | None) -> list[SearchHit]:
        req = run.req
        options = req.hybrid
        fusion = options.fusion if options and options.fusion else self.settings.hybrid_fusion
        weight = options.keyword_weight if options and options.keyword_weight is not None else None
        query = Query(run.text, qvec.tolist() if qvec is not None else None)
        try:
            how = await self._balance(run, mode, qvec)
            penalty, neighbours = self.settings.redundancy()
            fn = functools.partial(
                retrieve,
                fusion=fusion,
                keyword_weight=weight if weight is not None else self.settings.hybrid_keyword_weight,
                balance=how,
                redundancy=Redundancy(penalty, neighbours) if penalty > 0 else None,
            )
            found = await self._draw(fn, req, mode, query)
        except ApiError as e:
            if e.code in ("collection_not_found", "collection_mismatch"):
                self._dimensions.pop(req.collection, None)  # dropped or re-created, possibly by another replica
                self.forget_statistics(req.collection)
            raise
        run.balanced = how is not None
        run.ocr_text = {c.hit.id: c.hit.ocr_text for c in found}
        hits = await self._apply_min_score(run, qvec, [_search_hit(c) for c in found])
        return _group(hits, req.segments)[: req.candidates]

    async def _draw(
        self, fn: Callable[..., list[Candidate]], req: SearchRequest, mode: Mode, query: Query
    ) -> list[Candidate]:
        """``candidates`` rows; when segments of one document fill them (``segments: "best"`` keeps one per
        document), up to ``SEGMENT_DRAW_FACTOR`` times as many rows (at most ``max_candidates``), once, so the
        shortlist still holds ``candidates`` documents where the collection has them."""
        found: list[Candidate] = await self.in_thread(
            fn, self.index, req.collection, mode, query, req.candidates, req.filter
        )
        more = min(req.candidates * SEGMENT_DRAW_FACTOR, self.settings.max_candidates)
        if req.segments != "best" or len(found) < req.candidates or more <= req.candidates:
            return found
        documents = {segments.document_id(c.hit.id) for c in found}
        if len(documents) == len(found):
            return found
        drawn: list[Candidate] = await self.in_thread(fn, self.index, req.collection, mode, query, more, req.filter)
        return drawn

    async def _balance(self, run: SearchRun, mode: Mode, qvec: np.ndarray | None) -> Balance | None:
        """How this search draws per modality, or None for one raw draw: ``balance`` off, a keyword search, an
        embedder that reads text only (unless ``balance_text_only``), or fewer than two modalities in the collection
        (among those the filter's ``$modality`` allows)."""
        req = run.req
        if req.balance == "off" or mode == "keyword" or qvec is None:
            return None
        model = (await self._collection(req.collection))[1]
        if not self.settings.balance_text_only and bindings.text_only(await self.embedder_info(), model):
            return None  # every document it embedded (an image by its text) lies in the one text space: no gap
        stats = await self.modality_stats(req.collection)
        allowed = _allowed_modalities(req.filter, stats)
        if len(allowed) < 2:
            return None
        scorers = await self._balance_scorers(run, qvec, {m: stats[m] for m in allowed})
        return Balance(tuple(allowed), scorers, self.settings.balance_min_share)

    async def _balance_scorers(
        self, run: SearchRun, qvec: np.ndarray, drawn: dict[str, balance.GroupStats]
    ) -> dict[str, balance.Scorer] | None:
        """The shared scale of a balanced draw: calibrated when the calibration covers every drawn modality for
        this query's modality, else the configured fusion (zscore scorers, or None for reciprocal rank fusion)."""
        calibrated = await self._calibrated_scorers(run, qvec)
        if all(m in calibrated for m in drawn):
            return {m: calibrated[m] for m in drawn}
        if self.settings.balance_fusion == "zscore":
            return balance.zscore_scorers(qvec, drawn)
        return None

    async def _calibrated_scorers(self, run: SearchRun, qvec: np.ndarray) -> dict[str, balance.Scorer]:
        """Raw cosine -> calibrated probability per document modality the collection's calibration covers for
        this query's modality (none when it is not calibrated)."""
        collection = run.req.collection
        calib = await self.collection_calibration(collection)
        if calib is None or run.query.media in ("audio", "video"):  # calibrations pair text and image queries
            return {}
        stats = {m: s for m, s in (await self.modality_stats(collection)).items() if s.count > 0}
        modality = query_modality(run.query.text, run.query.image)
        return calibration.scorers(calib, modality, balance.zscore_scorers(qvec, stats))

    async def _apply_min_score(self, run: SearchRun, qvec: np.ndarray | None, hits: list[SearchHit]) -> list[SearchHit]:
        """Give vector candidates their calibrated score (a calibrated collection) and drop those under
        ``min_score`` (calibrated score where there is one, else the raw cosine; keyword-only candidates stay)."""
        calibrated = await self._calibrated_scorers(run, qvec) if qvec is not None else {}
        for h in hits:
            if h.vector_score is not None and h.modality in calibrated:
                h.calibrated_score = calibrated[h.modality](h.vector_score)
        floor = run.req.min_score
        if floor is None:
            return hits
        return [h for h in hits if h.vector_score is None or _comparable(h) >= floor]

    def forget_statistics(self, collection: str) -> None:
        """Drop the cached modality statistics and calibration of a collection (written, dropped or calibrated).
        A read that started before this does not cache what it read (its generation is stale)."""
        self._generations[collection] = self._generations.get(collection, 0) + 1
        self._modality_stats.pop(collection, None)
        self._calibrations.pop(collection, None)

    async def collection_calibration(self, collection: str) -> calibration.Calibration | None:
        """The collection's stored calibration (``POST /calibrate``), reused for ``balance_stats_ttl_s``; an
        unreadable one is logged and ignored, a backend that cannot store one has none."""
        cached = self._calibrations.get(collection)
        now, generation = time.monotonic(), self._generations.get(collection, 0)
        if cached is not None and now - cached[0] < self.settings.balance_stats_ttl_s:
            return cached[1]

        def read() -> str | None:
            try:
                return self.index.read_property(collection, calibration.PROPERTY)
            except NotImplementedError:
                return None

        try:
            found = calibration.load(await self.in_thread(read))
        except calibration.CalibrationError as e:
            log.warning("collection %r: %s; searching it uncalibrated", collection, e)
            found = None
        if self._generations.get(collection, 0) == generation:  # else a write since: this read may predate it
            self._calibrations[collection] = (now, found)
        return found

    async def store_calibration(self, collection: str, calib: calibration.Calibration | None) -> bool:
        """Store a calibration with the collection, or remove it (``None``): durable, seen by every process on its
        next read (other replicas within ``balance_stats_ttl_s``). Returns whether the collection had one."""

        def write() -> bool:
            try:
                had = self.index.read_property(collection, calibration.PROPERTY) is not None
                self.index.write_property(
                    collection, calibration.PROPERTY, calibration.dump(calib) if calib is not None else None
                )
                return had
            except NotImplementedError:
                raise unprocessable(
                    f"collection: the {self.index.backend} index cannot store a calibration",
                    "collection",
                    code="calibration_unsupported",
                ) from None

        async with self._lock(collection):
            had = await self.in_thread(write)
        self.forget_statistics(collection)  # reads in flight must not cache what they read before this write
        self._calibrations[collection] = (time.monotonic(), calib)
        return had

    async def embed_query(self, req: SearchRequest) -> np.ndarray:
        """A query's vector as ``/search`` computes it (its image's text read first when the embedder needs it)."""
        run = SearchRun(req, as_item(req.query), None, self.clock)
        _, model = await self._collection(req.collection)
        text_only = bindings.text_only(await self.embedder_info(), model)
        await self._read_query(run, text_only)
        return await self._embed_query(run, text_only, model)

    async def modality_stats(self, collection: str) -> dict[str, balance.GroupStats]:
        """Each modality's document count and vector sample (``service.balance``), reused for
        ``balance_stats_ttl_s`` and forgotten after this process writes to the collection."""
        cached = self._modality_stats.get(collection)
        now, generation = time.monotonic(), self._generations.get(collection, 0)
        if cached is not None and now - cached[0] < self.settings.balance_stats_ttl_s:
            return cached[1]

        def measure() -> dict[str, balance.GroupStats]:
            out = {}
            for m in (*MODALITIES, balance.UNLABELLED):
                try:
                    count, sample = self.index.modality_sample(collection, m, balance.SAMPLE_SIZE)
                except (NotImplementedError, index_base.InvalidFilter):
                    return {}  # a backend (or an old Milvus format) that cannot tell modalities apart: unbalanced
                out[m] = balance.GroupStats(count, balance.sample_rows(sample, balance.SAMPLE_SIZE))
            return out

        stats = await self.in_thread(measure)
        if self._generations.get(collection, 0) == generation:
            self._modality_stats[collection] = (now, stats)
        return stats

    async def _rerank_stage(self, run: SearchRun, hits: list[SearchHit]) -> tuple[list[SearchHit], bool]:
        """Rerank if asked (by default: when a reranker is configured); ``"auto"`` falls back to retrieval order
        when the reranker is down or too slow. Every fallback is named in ``warnings``."""
        req = run.req
        if req.rerank is False or not hits:
            return hits, False
        info = await self.reranker_info()
        if run.query.media in ("audio", "video") and run.query.modality not in _rerank_modalities(info):
            run.warn(
                None,
                "not_reranked",
                f"the reranker does not take {run.query.modality} queries: hits are in retrieval order",
            )
            return hits, False
        if info is not None and info.get("model") is None:
            if req.rerank is True:
                raise ApiError(
                    501,
                    "no_reranker",
                    "no reranker is configured: set MMSEARCH_RERANKER_MODEL, or search with rerank false or auto",
                    field="rerank",
                )
            run.warn(None, "not_reranked", "no reranker is configured: hits are in retrieval order")
            return hits, False
        strict = req.rerank != "auto"  # None (the default) behaves like True once a reranker is configured
        budget = self.settings.rerank_timeout_s
        if run.deadline is not None:  # leave the request's own deadline room for a retrieval-only answer
            budget = min(budget, max(0.0, run.deadline - time.monotonic() - 0.005))
        try:
            return await self._rerank(run, hits, info, budget)
        except TimeoutError:
            if strict:
                raise ApiError(
                    503,
                    "reranker_timeout",
                    f"reranker did not answer within {self.settings.rerank_timeout_s}s",
                    retry_after=1,
                ) from None
            run.warn(None, "reranker_timeout", "the reranker did not answer in time: hits are in retrieval order")
        except ApiError as e:
            if strict or e.status < 500:
                raise
            run.warn(None, e.code, f"{e.message}: hits are in retrieval order")
        return hits, False

    def _rerank_doc(self, run: SearchRun, hit: SearchHit, text_only: bool, modalities: Sequence[str]) -> Item | None:
        """What the reranker scores for a candidate, or None when it cannot be scored: no content (an
        embedding-only document), an image for a text-only reranker with no text at all, content the
        reranker's request checks would refuse (a document stored before those checks covered every path must not
        fail the whole search), or an image that is not in the media store (stored before Search kept a copy of
        every image: never fetched from its source at query time; a warning names it). A text-only reranker scores
        an image document by its text and OCR text. An audio or video candidate is scored as its stored clip at its
        segment when the reranker takes that modality (``modalities``: the reranker's), else not at all."""
        if text_only and hit.image is not None:
            text = index_base.keyword_text(hit.text, run.ocr_text.get(hit.id))
            return Item(text=text[: self.settings.max_text_chars]) if text is not None else None
        if hit.audio is not None or hit.video is not None:
            return _clip_rerank_doc(hit, modalities, self.settings.max_text_chars)
        if hit.text is None and hit.image is None:
            return None
        if hit.text is not None and len(hit.text) > self.settings.max_text_chars:
            return None
        if hit.image is not None and not hit.image.startswith(MEDIA_SCHEME):
            run.warn(
                hit.id,
                "media_not_stored",
                "not reranked: its image was stored as a URL before Search kept copies (re-upsert it)",
            )
            return None
        return Item(text=hit.text, image=hit.image)

    async def _rerank(
        self, run: SearchRun, hits: list[SearchHit], info: dict[str, Any] | None, budget: float
    ) -> tuple[list[SearchHit], bool]:
        """Score the candidates that can be scored (``_rerank_doc``); the others keep their order after them. An
        image query goes to a text-only reranker as its text. Candidates go to the reranker in requests of at most
        ``max_documents_per_request`` each, so every ``candidates`` up to ``max_candidates`` can be reranked.
        Images go as ``media://`` references: the Reranker reads them from the media store itself.

        A candidate the Reranker refuses (4xx naming ``documents[k]``: its stored image is missing or unreadable)
        is dropped with a warning and the others are sent again; after the first such refusal every remaining
        candidate's image is checked in the store at once, so a search costs at most a few extra calls.
        ``reranked`` (the second value) is False when no candidate could be scored.

        The reranker port waits at most ``budget`` seconds itself (``TimeoutError``): it counts the timeout as a
        failure of the dependency (circuit breaker), which a cancellation from here could not tell apart."""
        query, todo = self._rerank_inputs(run, hits, info)
        if self._inline_media:
            todo = await self._inline_images(run, todo)
        checked = False
        for _ in range(MAX_RERANK_ROUNDS):
            if not todo:
                return hits, False
            try:
                scores = await self._score(run, query, [doc for _, doc in todo], budget)
            except _DocumentRefused as refused:
                todo, checked = await self._after_refusal(run, todo, refused, checked)
                continue
            for (h, _), score in zip(todo, scores, strict=True):
                h.rerank_score = score
                h.score = score
            ranked = sorted((h for h, _ in todo), key=lambda h: h.score, reverse=True)
            rest = [h for h in hits if h.rerank_score is None]
            return ranked + rest, True
        raise ApiError(
            503, "rerank_failed", f"the reranker refused {MAX_RERANK_ROUNDS} candidates in a row", retry_after=1
        )

    def _rerank_inputs(
        self, run: SearchRun, hits: list[SearchHit], info: dict[str, Any] | None
    ) -> tuple[Item, list[tuple[SearchHit, Item]]]:
        """The query as the reranker takes it (an image query's text for a text-only reranker) and the candidates
        it can score, each with what it is sent."""
        modalities = _rerank_modalities(info)
        text_only = modalities == ["text"]
        query = Item(text=run.text) if text_only and run.query.image is not None and run.text else run.query
        return query, [(h, doc) for h in hits if (doc := self._rerank_doc(run, h, text_only, modalities)) is not None]

    async def _after_refusal(
        self, run: SearchRun, todo: list[tuple[SearchHit, Item]], refused: _DocumentRefused, checked: bool
    ) -> tuple[list[tuple[SearchHit, Item]], bool]:
        """What to send again after the Reranker refused one candidate, and whether the store was checked: every
        image inline when the Reranker lacks the media store; else the others, and at the first such refusal only
        those whose image is in the store."""
        if await self._reranker_lacks_store(refused, todo[refused.position][1]):
            return await self._inline_images(run, todo), checked
        hit, _ = todo.pop(refused.position)
        run.warn(hit.id, refused.error.code, f"not reranked: {refused.error.message}")
        if checked:
            return todo, True
        return await self._drop_missing_media(run, todo), True

    async def _score(self, run: SearchRun, query: Item, docs: list[Item], budget: float) -> list[float]:
        """The reranker's score of every document, in order; ``_DocumentRefused`` for a document it refuses."""
        chunk = self.settings.max_documents_per_request

        async def part(offset: int) -> list[float]:
            batch = docs[offset : offset + chunk]
            try:
                results = await self.reranker.rerank(query, batch, run.remaining(), wait=budget)
            except ApiError as e:
                loc = field_to_loc(e.field or "")
                k = loc[1] if len(loc) > 1 and loc[0] == "documents" else None
                if e.status >= 500 or not isinstance(k, int) or k >= len(batch):
                    raise
                raise _DocumentRefused(offset + k, e) from None
            out = [0.0] * len(batch)
            for r in results:
                out[r.index] = r.relevance_score
            return out

        parts = await asyncio.gather(*(part(k) for k in range(0, len(docs), chunk)))
        return [score for p in parts for score in p]

    async def _reranker_lacks_store(self, refused: _DocumentRefused, doc: Item) -> bool:
        """Whether the Reranker refused a stored image that Search itself can read: it does not reach the media
        store (another volume or bucket, or none). From then on this process sends candidate images inline (the
        cost the shared store avoids) and says so once in its log."""
        if self._inline_media or refused.error.code != "media_unavailable" or doc.image is None:
            return False
        if not await asyncio.to_thread(self.media.exists, doc.image):
            return False
        self._inline_media = True
        log.warning(
            "the Reranker cannot read the media store that Search writes: candidate images are sent inline from now "
            "on (give the Reranker the same MMSEARCH_MEDIA_URI / MMSEARCH_MEDIA_DIR to avoid this cost)"
        )
        return True

    async def _inline_images(self, run: SearchRun, todo: list[tuple[SearchHit, Item]]) -> list[tuple[SearchHit, Item]]:
        """Candidates with their stored images as data URIs, read off the event loop; those whose image cannot be
        read get a warning and are left out."""

        def inline(doc: Item) -> str | None:
            ref = doc.image
            if ref is None or not ref.startswith(MEDIA_SCHEME):
                return ref
            data = self.media.read(ref)
            return None if data is None else _inline(ref, data, content_type(ref).split("/")[1])

        images = await asyncio.to_thread(lambda: [inline(doc) for _, doc in todo])
        kept = []
        for (h, doc), image in zip(todo, images, strict=True):
            if doc.image is not None and image is None:
                run.warn(h.id, "media_unavailable", f"not reranked: stored image {doc.image} is missing")
            else:
                kept.append((h, doc if doc.image is None else Item(text=doc.text, image=image)))
        return kept

    async def _drop_missing_media(
        self, run: SearchRun, todo: list[tuple[SearchHit, Item]]
    ) -> list[tuple[SearchHit, Item]]:
        """The candidates whose stored image is present (checked off the event loop); the others get a warning."""
        refs = [doc.image for _, doc in todo]
        present = await asyncio.to_thread(lambda: [ref is None or self.media.exists(ref) for ref in refs])
        kept = []
        for (h, doc), ok in zip(todo, present, strict=True):
            if ok:
                kept.append((h, doc))
            else:
                run.warn(h.id, "media_unavailable", f"not reranked: stored image {doc.image} is missing")
        return kept


def _served_names(info: dict[str, Any]) -> set[str]:
    """The names of the models the Embedder's ``/info`` lists (a collection bound to one of them is searched with
    it: not a sign that the Embedder changed)."""
    return {str(m["name"]) for m in bindings.served_models(info)}


def _rerank_modalities(info: dict[str, Any] | None) -> list[str]:
    """The modalities the Reranker's ``/info`` lists (none while it cannot be asked)."""
    return list(info.get("modalities") or []) if info is not None else []


def _clip_rerank_doc(hit: SearchHit, modalities: Sequence[str], max_text_chars: int) -> Item | None:
    """An audio or video candidate as the Reranker scores it: its stored clip at its segment (``t0``/``t1``; the
    Reranker reads the clip from the media store and decodes that window), with the document's text when the
    Reranker takes the pair; None when it takes neither."""
    kind = "video" if hit.video is not None else "audio"
    clip: dict[str, Any] = {kind: hit.video if kind == "video" else hit.audio, "t0": hit.t0, "t1": hit.t1}
    if hit.text is not None and f"text+{kind}" in modalities and len(hit.text) <= max_text_chars:
        return Item(text=hit.text, **clip)
    return Item(**clip) if kind in modalities else None


class _DocumentRefused(Exception):
    """The reranker refused one document (``position`` among those sent) with a 4xx."""

    def __init__(self, position: int, error: ApiError) -> None:
        super().__init__(error.message)
        self.position = position
        self.error = error


def _image_sha(image: str | None) -> str | None:
    name = name_of(image) if image is not None else None
    return name.split(".", 1)[0] if name else None


def _inline(given: str, data: bytes, image_format: str) -> str:
    """A data URI of an image's bytes: the one the caller sent, or one made from fetched or stored bytes."""
    if given[:5].lower() == "data:":
        return given
    return f"data:image/{image_format.lower()};base64,{base64.b64encode(data).decode('ascii')}"


def _image_key(image: str) -> str | None:
    """The sha256 of an image's bytes: from a stored image's name, or of a data URI's decoded payload; None for a
    URL (its bytes are not known). The same picture stored at ingest and sent inline as a query shares its key."""
    if image.startswith(MEDIA_SCHEME):
        name = name_of(image)
        return name.split(".", 1)[0] if name else None
    if image.startswith("data:"):
        _, sep, payload = image.partition(",")
        try:
            return content_hash(base64.b64decode(payload, validate=True)) if sep else None
        except (binascii.Error, ValueError):
            return None
    return None


class ImageFields(TypedDict):
    image: str | None
    source: str | None
    thumbnail: str | None


def _window_item(d: IngestDoc, w: segments.Window) -> Item:
    """What the Embedder gets for one window of a clip document: the stored clip, the window, the text."""
    assert d.clip is not None and d.clip.stored is not None
    return Item(text=d.doc.text, **{d.clip.source.kind: d.clip.stored}, t0=w.t0, t1=w.t1)


def _rows(d: IngestDoc) -> list[index_base.IndexRecord]:
    """A document's index rows: one, or one per window of its clip (``service.segments``)."""
    common: dict[str, Any] = {"text": d.doc.text, "metadata": dict(d.doc.metadata), "modality": d.modality}
    if d.clip is not None:
        assert d.clip.stored is not None
        n = len(d.clip.windows)
        return [
            index_base.IndexRecord(
                id=segments.row_id(d.doc.id, k),
                image=join_ref(segments.stored_ref(d.clip.stored, w, n, d.clip.duration), d.source),
                embedding=np.asarray(v).tolist(),
                **common,
            )
            for k, (w, v) in enumerate(zip(d.clip.windows, d.vectors, strict=True))
        ]
    return [
        index_base.IndexRecord(
            id=d.doc.id,
            image=join_ref(d.image, d.source) if d.image is not None else None,
            embedding=np.asarray(d.vector).tolist(),
            ocr_text=d.ocr.text if d.ocr is not None else None,
            ocr_lines=list(d.ocr.lines) if d.ocr is not None else [],
            **common,
        )
    ]


class MediaFields(TypedDict, total=False):
    image: str | None
    source: str | None
    thumbnail: str | None
    audio: str | None
    video: str | None
    t0: float | None
    t1: float | None


def _media_fields(stored: str | None, modality: str) -> MediaFields:
    """A row's media as the API shows it: an image (``_image_fields``), or an audio or video clip with the row's
    window (``t0``/``t1``) and, for video, the window's keyframe preview."""
    kind = modality.removeprefix("text+")
    if kind not in ("audio", "video"):
        return MediaFields(**_image_fields(stored))
    ref, source = split_ref(stored)
    seg = segments.parse_ref(ref)
    out = MediaFields(image=None, source=source, thumbnail=None)
    if seg is None:  # not written by this version: shown as stored
        out[kind] = ref  # type: ignore[literal-required]
        return out
    thumb = thumbnail_name(ref or "")
    out["thumbnail"] = f"/media/{thumb}" if thumb else None
    out["t0"], out["t1"] = seg.t0, seg.t1
    out[kind] = seg.ref  # type: ignore[literal-required]
    return out


def _stored_media_fields(stored: str | None, modality: str) -> dict[str, Any]:
    """``/get``'s media fields: a clip document's whole clip (its first row names the segment count)."""
    fields_ = dict(_media_fields(stored, modality))
    t0, t1 = fields_.pop("t0", None), fields_.pop("t1", None)
    seg = segments.parse_ref(split_ref(stored)[0]) if t0 is not None else None
    if seg is not None and t1 is not None:
        fields_["segments"], fields_["duration"] = seg.n, seg.duration
    return fields_


def _group(hits: list[SearchHit], how: str) -> list[SearchHit]:
    """Segment hits named by their document; ``best``: each document once, at its first (best) hit."""
    out: list[SearchHit] = []
    seen: set[str] = set()
    for h in hits:
        doc = segments.document_id(h.id)
        if doc != h.id:
            h.id = doc
        if how == "best" and h.t0 is not None:
            if doc in seen:
                continue
            seen.add(doc)
        out.append(h)
    return out


def _image_fields(stored: str | None) -> ImageFields:
    """``image``, ``source`` and ``thumbnail`` (a path under ``/media/``) of a stored ``image`` value."""
    image, source = split_ref(stored)
    thumb = thumbnail_name(image) if image is not None else None
    return ImageFields(image=image, source=source, thumbnail=f"/media/{thumb}" if thumb else None)


def _weights(model: str, revision: str | None) -> str:
    """What the embedding cache keys a model's vectors by: its name and served revision (a new revision under the
    same name computes new vectors)."""
    return model if revision is None else f"{model}@{revision}"


def _allowed_modalities(filter_: index_filters.Filter | None, stats: dict[str, balance.GroupStats]) -> list[str]:
    """The collection's non-empty modalities that the filter's ``$modality`` clauses allow."""
    try:
        wanted = [c for c in index_filters.parse_filter(filter_) if c.op == "modality"]
    except index_base.InvalidFilter as e:
        raise ApiError(400, "invalid_filter", f"filter: {e}", field="filter") from None
    allowed = [m for m, s in stats.items() if s.count > 0]
    for clause in wanted:
        allowed = [m for m in allowed if m in clause.terms]
    return allowed


def _comparable(hit: SearchHit) -> float:
    """What ``min_score`` compares: the calibrated score, else the raw cosine."""
    if hit.calibrated_score is not None:
        return hit.calibrated_score
    return hit.vector_score if hit.vector_score is not None else hit.score


def _search_hit(c: Candidate) -> SearchHit:
    h = c.hit
    return SearchHit(
        id=h.id,
        score=c.score,
        retrieval_score=c.score,
        vector_score=c.vector_score,
        keyword_score=c.keyword_score,
        fused_score=c.fused_score,
        modality=h.modality,
        text=h.text,
        **_media_fields(h.image, h.modality),
        metadata=h.metadata,
        evidence=[Evidence(source=e.source, text=e.text, box=list(e.box) if e.box else None) for e in c.evidence],
    )


def _first_of_each_key(todo: Sequence[IngestDoc], keys: Sequence[str]) -> list[int]:
    """Positions of the documents still without a vector, one per distinct key (one model input each)."""
    first: dict[str, int] = {}
    for i, (d, k) in enumerate(zip(todo, keys, strict=True)):
        if d.vector is None:
            first.setdefault(k, i)
    return list(first.values())


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (at least 1 ms), for the next stage's own deadline."""
    return None if deadline is None else max(0.001, deadline - time.monotonic())


def remap_inputs(e: ApiError, positions: Sequence[int], field: str, single: bool = False) -> ApiError:
    """Move a dependency's ``inputs[k]`` error to the caller's field: ``field[positions[k]]``, or ``field`` itself
    when the request had one item (``single``: the query)."""

    def new(k: int, rest: Loc) -> Loc | None:
        if single:
            return (field, *rest)
        return (field, positions[k], *rest) if k < len(positions) else None

    return e.relocate("inputs", new)
