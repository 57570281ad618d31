"""Search service: ingest (embed + store) and search (embed query, retrieve top-k, rerank the shortlist).

Composes the Embedder and Reranker with ``bentoml.depends``: started together by ``bentoml serve`` or, with
``MMSEARCH_EMBEDDER_URL`` / ``MMSEARCH_RERANKER_URL`` set, calling separately deployed services over HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import bentoml
import numpy as np
from mmsearch_client.schemas import (
    CollectionInfo,
    CollectionsResponse,
    DeleteRequest,
    DeleteResponse,
    EncodeRequest,
    EncodeResponse,
    GetRequest,
    GetResponse,
    Item,
    RerankRequest,
    RerankResponse,
    SearchHit,
    SearchRequest,
    SearchResponse,
    SearchTimings,
    StoredDocument,
    UpsertRequest,
    UpsertResponse,
    as_item,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from service.config import get_settings
from service.embedder import Embedder
from service.errors import ApiError, api_error_from_remote, handle_api_errors, unprocessable
from service.index import base as index_base
from service.index import open_index
from service.media import MediaLoader
from service.mediastore import SCHEME as MEDIA_SCHEME
from service.mediastore import MediaStore
from service.metrics import get_metrics
from service.middleware import install as install_middleware
from service.priority import PriorityGate
from service.reranker import Reranker
from service.service_config import search_service_config

settings = get_settings()
log = logging.getLogger("mmsearch.search")
T = TypeVar("T")
_INPUT_PATH = re.compile(r"inputs\[(\d+)\]")


async def _media(request: Request) -> Response:
    svc: Search = bentoml.get_current_service()
    path = svc.media.path_of(request.path_params["name"])
    if path is None:
        return JSONResponse({"error": "media not found", "code": "not_found", "field": "name"}, 404)
    return FileResponse(path)


media_app = Starlette(routes=[Route("/{name}", _media, methods=["GET"])])


@bentoml.asgi_app(media_app, path="/media")
@bentoml.service(name="Search", **search_service_config())
class Search:
    """Owns the vector index; embeds with the Embedder and reranks with the Reranker."""

    embedder = bentoml.depends(Embedder, url=settings.embedder_url)
    reranker = bentoml.depends(Reranker, url=settings.reranker_url)

    def __init__(self) -> None:
        self.settings = get_settings()
        self.index = open_index(self.settings.index_uri, ann_threshold=self.settings.ann_threshold)
        self.media = MediaStore(self.settings.media_dir)
        self.loader = MediaLoader(self.settings)  # validates inline images that skip the embedder
        self.metrics = get_metrics()
        # Ingest work done here (storing inline images, index writes) yields to in-flight searches, as in the models.
        self.gate = PriorityGate.for_service(self.settings, "search")
        self._write_locks: dict[str, asyncio.Lock] = {}
        self._embedder_info: dict[str, Any] | None = None
        self._dimensions: dict[str, int] = {}  # fixed at creation; collections are never dropped
        self._deps_seen_ready = False

    async def __is_ready__(self) -> bool:
        """Ready once both dependencies have answered /readyz; afterwards their outages are answered per request
        (fast 503 ``*_unavailable``, or ``rerank: "auto"`` falling back to retrieval), not by leaving the pool."""
        if self._deps_seen_ready:
            return True
        probes = [p for p in (getattr(d, "is_ready", None) for d in (self.embedder, self.reranker)) if p]
        try:
            async with asyncio.timeout(3):
                self._deps_seen_ready = all([await probe(2) for probe in probes])
        except Exception:  # refused, unresolvable, timed out: not yet
            return False
        return self._deps_seen_ready

    # ------------------------------------------------------------------------------------------- helpers
    async def _dep(self, call: Awaitable[T], *, stage: str) -> T:
        """Await a dependency call; its 4xx errors pass through, its absence becomes a 503."""
        try:
            result = await call
        except ApiError:
            raise
        except Exception as e:
            err = api_error_from_remote(e)
            if err is not None:
                raise err from None
            log.warning("%s call failed: %r", stage, e)  # the detail (internal addresses) stays in the log
            raise ApiError(503, f"{stage}_unavailable", f"{stage} service unavailable", retry_after=1) from e
        return result

    async def _embedder_meta(self) -> dict[str, Any]:
        if self._embedder_info is None:
            info: dict[str, Any] = await self._dep(self.embedder.to_async.info(), stage="embedder")
            self._embedder_info = info
            return info
        return self._embedder_info

    async def _embed(self, items: Sequence[Item], input_type: str, deadline: float | None = None) -> np.ndarray:
        resp: EncodeResponse = await self._dep(
            self.embedder.to_async.encode(
                inputs=list(items), input_type=input_type, normalize=True, timeout=_remaining(deadline)
            ),
            stage="embedder",
        )
        return np.asarray(resp.embeddings, dtype=np.float32)

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except index_base.CollectionNotFound as e:
            raise ApiError(404, "collection_not_found", str(e), field="collection") from None
        except index_base.CollectionMismatch as e:
            raise ApiError(409, "collection_mismatch", str(e), field="collection") from None
        except index_base.InvalidFilter as e:
            raise ApiError(400, "invalid_filter", f"filter: {e}", field="filter") from None

    async def _collection_dimension(self, name: str) -> int:
        """A collection's dimension (404 if unknown), looked up once: a search must not count rows every time."""
        dimension = self._dimensions.get(name)
        if dimension is None:
            info = await self._in_thread(self.index.get_collection, name)
            dimension = self._dimensions[name] = info.dimension
        return dimension

    def _lock(self, collection: str) -> asyncio.Lock:
        return self._write_locks.setdefault(collection, asyncio.Lock())

    # ------------------------------------------------------------------------------------------- ingest
    @bentoml.api(route="/upsert", input_spec=UpsertRequest)
    @handle_api_errors
    async def upsert(self, **kw: Any) -> UpsertResponse:
        """Embed (document prompt) and store documents; an existing id is replaced."""
        req = UpsertRequest.model_validate(kw)
        docs = req.documents
        if len(docs) > self.settings.max_inputs_per_request:
            raise ApiError(
                413,
                "too_many_inputs",
                f"documents: at most {self.settings.max_inputs_per_request} per request (got {len(docs)})",
                field="documents",
            )
        ids = [d.id for d in docs]
        if len(set(ids)) != len(ids):
            raise ApiError(400, "duplicate_id", "documents: ids must be unique within a request", field="documents")
        meta = await self._embedder_meta()
        dim, model = int(meta["dimension"]), str(meta["model"])
        vectors = np.zeros((len(docs), dim), dtype=np.float32)
        to_embed = [i for i, d in enumerate(docs) if d.embedding is None]
        for i, d in enumerate(docs):
            if d.embedding is not None:
                if len(d.embedding) != dim:
                    raise ApiError(
                        422,
                        "dimension_mismatch",
                        f"documents[{i}].embedding: expected {dim} dimensions (model {model!r}), "
                        f"got {len(d.embedding)}",
                        field=f"documents[{i}].embedding",
                    )
                v = np.asarray(d.embedding, dtype=np.float32)
                if not np.all(np.isfinite(v)) or not np.any(v):
                    raise ApiError(
                        422,
                        "invalid_embedding",
                        f"documents[{i}].embedding: must be finite and non-zero",
                        field=f"documents[{i}].embedding",
                    )
                vectors[i] = v / np.linalg.norm(v)
                if d.image is not None:  # not seen by the embedder: check it is a real, allowed image here
                    await self.loader.load(d.image, f"documents[{i}].image")
        if to_embed:
            try:
                vectors[to_embed] = await self._embed(
                    [Item(text=docs[i].text, image=docs[i].image) for i in to_embed], "document"
                )
            except ApiError as e:
                raise _remap_inputs(e, to_embed, "documents") from None
        await self.gate.background_turn("store")
        images = await asyncio.to_thread(lambda: [self._store_image(d.image) for d in docs])
        stored = [
            index_base.StoredDocument(
                id=d.id, text=d.text, image=images[i], metadata=dict(d.metadata), embedding=vectors[i].tolist()
            )
            for i, d in enumerate(docs)
        ]
        async with self._lock(req.collection):
            await self._in_thread(self.index.ensure_collection, req.collection, dim, model)
            await self.gate.background_turn("index")
            await self._in_thread(self.index.upsert, req.collection, stored)
        return UpsertResponse(collection=req.collection, upserted=len(stored), ids=ids)

    def _store_image(self, image: str | None) -> str | None:
        if image is None or not image.startswith("data:"):
            return image
        return self.media.put_data_uri(image)

    @bentoml.api(route="/delete", input_spec=DeleteRequest)
    @handle_api_errors
    async def delete(self, **kw: Any) -> DeleteResponse:
        """Delete documents by id; ``deleted`` counts those that existed."""
        req = DeleteRequest.model_validate(kw)
        async with self._lock(req.collection):
            n = await self._in_thread(self.index.delete, req.collection, req.ids)
        return DeleteResponse(collection=req.collection, deleted=n)

    @bentoml.api(route="/get", input_spec=GetRequest)
    @handle_api_errors
    async def get(self, **kw: Any) -> GetResponse:
        """Documents by id, in the order asked (missing ids are skipped)."""
        req = GetRequest.model_validate(kw)
        found = await self._in_thread(self.index.get, req.collection, req.ids)
        return GetResponse(
            collection=req.collection,
            documents=[
                StoredDocument(
                    id=d.id,
                    text=d.text,
                    image=d.image,
                    metadata=d.metadata,
                    embedding=d.embedding if req.include_embedding else None,
                )
                for d in found
            ],
        )

    @bentoml.api(route="/collections")
    @handle_api_errors
    async def collections(self) -> CollectionsResponse:
        """Every collection with its document count, dimension and embedding model."""
        infos = await self._in_thread(self.index.list_collections)
        return CollectionsResponse(
            collections=[
                CollectionInfo(name=c.name, count=c.count, dimension=c.dimension, model=c.model) for c in infos
            ]
        )

    # ------------------------------------------------------------------------------------------- search
    @bentoml.api(route="/search", input_spec=SearchRequest)
    @handle_api_errors
    async def search(self, **kw: Any) -> SearchResponse:
        """Embed the query, retrieve ``candidates``, rerank them and return the best ``top_k``."""
        req = SearchRequest.model_validate(kw)
        if req.top_k > req.candidates:
            raise unprocessable(f"top_k ({req.top_k}) must be <= candidates ({req.candidates})", "top_k")
        if req.candidates > self.settings.max_candidates:
            raise unprocessable(
                f"candidates: at most {self.settings.max_candidates} (got {req.candidates})", "candidates"
            )
        deadline = time.monotonic() + req.timeout if req.timeout else None
        try:
            async with asyncio.timeout(req.timeout), self.gate.interactive():
                return await self._search(req, deadline)
        except TimeoutError:
            raise ApiError(504, "deadline_exceeded", f"search did not finish within timeout={req.timeout}s") from None

    async def _search(self, req: SearchRequest, deadline: float | None) -> SearchResponse:
        """The search itself; ``deadline`` (monotonic) travels to the model services so their queues honour it."""
        t0 = time.perf_counter()
        dimension = await self._collection_dimension(req.collection)
        query = as_item(req.query)
        try:
            qvec = (await self._embed([query], "query", deadline))[0]
        except ApiError as e:
            raise _remap_inputs(e, [0], "query", single=True) from None
        t1 = time.perf_counter()
        if qvec.shape[0] != dimension:
            raise ApiError(
                409,
                "collection_mismatch",
                f"collection {req.collection!r} has dimension {dimension}, the embedder gives {qvec.shape[0]}",
                field="collection",
            )
        hits = await self._in_thread(self.index.search, req.collection, qvec.tolist(), req.candidates, req.filter)
        t2 = time.perf_counter()
        out = [
            SearchHit(
                id=h.id,
                score=h.score,
                retrieval_score=h.score,
                text=h.text,
                image=h.image,
                metadata=h.metadata,
            )
            for h in hits
        ]
        reranked = False
        if req.rerank is not False and out:
            try:
                budget = self.settings.rerank_timeout_s
                if deadline is not None:  # leave the request's own deadline room for a retrieval-only answer
                    budget = min(budget, max(0.0, deadline - time.monotonic() - 0.005))
                out = await asyncio.wait_for(self._rerank(query, out, deadline), budget)
                reranked = True
            except TimeoutError:
                if req.rerank is True:
                    raise ApiError(
                        503,
                        "reranker_timeout",
                        f"reranker did not answer within {self.settings.rerank_timeout_s}s",
                        retry_after=1,
                    ) from None
            except ApiError as e:
                if req.rerank is True or e.status < 500:
                    raise
        t3 = time.perf_counter()
        timings = SearchTimings(
            embed=(t1 - t0) * 1000, retrieve=(t2 - t1) * 1000, rerank=(t3 - t2) * 1000, total=(t3 - t0) * 1000
        )
        for stage in ("embed", "retrieve", "rerank", "total"):
            self.metrics.search_stage_seconds.labels(stage).observe(getattr(timings, stage) / 1000)
        return SearchResponse(hits=out[: req.top_k], reranked=reranked, timings_ms=timings)

    async def _rerank(self, query: Item, hits: list[SearchHit], deadline: float | None = None) -> list[SearchHit]:
        """Score candidates with content; those without (embedding-only documents) keep their order after them."""
        scorable = [i for i, h in enumerate(hits) if h.text is not None or h.image is not None]
        docs = [Item(text=hits[i].text, image=self._image_for_model(hits[i].image)) for i in scorable]
        resp: RerankResponse = await self._dep(
            self.reranker.to_async.rerank(query=query, documents=docs, timeout=_remaining(deadline)),
            stage="reranker",
        )
        for r in resp.results:
            h = hits[scorable[r.index]]
            h.rerank_score = r.relevance_score
            h.score = r.relevance_score
        ranked = sorted((hits[i] for i in scorable), key=lambda h: h.score, reverse=True)
        rest = [h for h in hits if h.rerank_score is None]
        return ranked + rest

    def _image_for_model(self, image: str | None) -> str | None:
        if image is not None and image.startswith(MEDIA_SCHEME):
            return self.media.to_data_uri(image)
        return image

    # ------------------------------------------------------------------------------------------- proxies
    @bentoml.api(route="/encode", input_spec=EncodeRequest)
    @handle_api_errors
    async def encode(self, **kw: Any) -> EncodeResponse:
        """The Embedder's ``/encode``, reachable through Search (the only public service)."""
        return await self._dep(self.embedder.to_async.encode(**kw), stage="embedder")

    @bentoml.api(route="/rerank", input_spec=RerankRequest)
    @handle_api_errors
    async def rerank(self, **kw: Any) -> RerankResponse:
        """The Reranker's ``/rerank``, reachable through Search."""
        return await self._dep(self.reranker.to_async.rerank(**kw), stage="reranker")

    @bentoml.api(route="/info")
    @handle_api_errors
    async def info(self) -> dict[str, Any]:
        """Models, dimension and index backend."""
        return {
            "service": "Search",
            "embedder": await self._embedder_meta(),
            "index_uri_kind": type(self.index).__name__,
            "max_candidates": self.settings.max_candidates,
        }


install_middleware(Search, settings)


def _remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (at least 1 ms), for the next stage's own deadline."""
    return None if deadline is None else max(0.001, deadline - time.monotonic())


def _remap_inputs(e: ApiError, positions: Sequence[int], field: str, single: bool = False) -> ApiError:
    """Rewrite the embedder's ``inputs[k]`` paths to the caller's field (``documents[j]`` or ``query``)."""

    def sub(text: str) -> str:
        def one(m: re.Match[str]) -> str:
            k = int(m.group(1))
            if single:
                return field
            return f"{field}[{positions[k]}]" if k < len(positions) else m.group(0)

        return _INPUT_PATH.sub(one, text)

    e.message = sub(e.message)
    e.field = sub(e.field) if e.field else e.field
    return e
