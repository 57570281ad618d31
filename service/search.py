"""Search service: ingest (embed + store) and search (embed query, retrieve top-k, rerank the shortlist).

Composes the Embedder, Reranker and Reader with ``bentoml.depends``: started together by ``bentoml serve`` or,
with ``MMSEARCH_EMBEDDER_URL`` / ``MMSEARCH_RERANKER_URL`` / ``MMSEARCH_READER_URL`` set, calling separately
deployed services over HTTP.
The flows themselves live in ``service.pipeline``; this class only wires them to HTTP routes.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import bentoml
from mmsearch_schema.wire import (
    AliasDeleteRequest,
    AliasDeleteResponse,
    AliasesResponse,
    AliasRequest,
    AliasResponse,
    CalibrateRequest,
    CalibrateResponse,
    CollectionsResponse,
    DeleteRequest,
    DeleteResponse,
    DropRequest,
    DropResponse,
    EncodeResponse,
    GetRequest,
    GetResponse,
    IdsRequest,
    IdsResponse,
    Item,
    SearchRequest,
    SearchResponse,
    UncalibrateRequest,
    UncalibrateResponse,
    UpsertRequest,
    UpsertResponse,
)
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service import bindings, calibrator, lifecycle
from service.bento_options import search_service_options, validated
from service.breaker import CircuitBreaker
from service.config import get_settings
from service.embedcache import open_embedding_cache
from service.embedder import Embedder
from service.errors import ApiError, handle_api_errors
from service.index.factory import open_index
from service.mediastore import content_type, local_media_dir, open_media_store, valid_name
from service.metrics import get_metrics
from service.middleware import install as install_middleware
from service.page import is_public as is_page
from service.page import page_app
from service.pipeline import SearchPipeline
from service.ports import RemoteEmbedder, RemoteReader, RemoteReranker, call_dependency
from service.priority import PriorityGate
from service.reader import Reader
from service.reranker import Reranker
from service.runtime import media_loader
from service.storage import StorageHealth, local_directories
from service.uploads import read_upload_form

settings = get_settings()
T = TypeVar("T")


async def _media(request: Request) -> Response:
    """A stored image or thumbnail. Content-addressed, so cacheable forever; never sniffed as another type; a
    symbolic link in a local store reads as missing."""
    svc: Search = bentoml.get_current_service()
    name = request.path_params["name"]
    data = await asyncio.to_thread(svc.media.read, name) if valid_name(name) else None
    if data is None:
        return JSONResponse(
            {"error": "media not found", "code": "not_found", "field": "name"}, 404, headers=MEDIA_HEADERS
        )
    return Response(data, media_type=content_type(name), headers={**MEDIA_HEADERS, **CACHE_FOREVER})


async def _upload_encode(request: Request) -> Response:
    svc: Search = bentoml.get_current_service()
    return await svc.encode_upload(request)


MEDIA_HEADERS = {"X-Content-Type-Options": "nosniff"}
CACHE_FOREVER = {"Cache-Control": "public, max-age=31536000, immutable"}
media_app = Starlette(routes=[Route("/{name}", _media, methods=["GET"])])
upload_app = Starlette(routes=[Route("/encode", _upload_encode, methods=["POST"])])


async def _openai_models(request: Request) -> Response:
    svc: Search = bentoml.get_current_service()
    return await svc.openai_models(request.path_params.get("model"))


models_app = Starlette(routes=[Route(p, _openai_models, methods=["GET"]) for p in ("/models", "/models/{model:path}")])


Req = TypeVar("Req", bound=BaseModel)
Resp = TypeVar("Resp")


def _flow(
    route: str, spec: type[Req], answer: type[Resp], flow: Callable[[SearchPipeline, Req], Awaitable[Resp]]
) -> Any:
    """A route of ``Search`` that hands its request, validated as ``spec``, to ``flow`` (a ``SearchPipeline`` step)
    and answers what it returns (``answer``); named and described by ``flow`` (its name and docstring)."""

    async def api(self: Search, **kw: Any) -> Resp:
        return await flow(self.pipeline, validated(spec, kw))

    api.__name__ = api.__qualname__ = flow.__name__
    api.__doc__ = flow.__doc__
    return bentoml.api(route=route, input_spec=spec, output_spec=answer)(handle_api_errors(api))


def _proxy(dependency: bentoml.Service[Any], name: str) -> Any:
    """The API ``name`` of a dependency (the Embedder, Reranker or Reader service), reachable through Search (the
    only public service): the same route, request and answer, sent through the dependency's circuit breaker."""
    target = dependency.apis[name]
    stage = dependency.name.lower()  # the dependency's attribute of Search and its circuit breaker's name

    async def api(self: Search, **kw: Any) -> Any:
        remote = getattr(self, stage).to_async
        return await self._call(stage, lambda: getattr(remote, name)(**kw))

    api.__name__ = api.__qualname__ = name
    api.__doc__ = f"{target.doc}\n\nThe {dependency.name}'s ``{target.route}``, reachable through Search."
    return bentoml.api(route=target.route, input_spec=target.input_spec, output_spec=target.output_spec)(
        handle_api_errors(api)
    )


@bentoml.asgi_app(models_app, path="/v1")
@bentoml.asgi_app(media_app, path="/media")
@bentoml.asgi_app(upload_app, path="/upload")
@bentoml.asgi_app(page_app, path="/", name="page")  # the search page (service/static) at /
@bentoml.service(name="Search", **search_service_options())
class Search:
    """Owns the vector index; embeds with the Embedder and reranks with the Reranker.

    Every public route of the three services is served here (one port): the Embedder's ``/encode``,
    ``/v1/embeddings`` and ``/upload/encode``, the Reranker's ``/rerank``, ``/v1/rerank`` and ``/v2/rerank``, and
    ``/v1/models`` listing the models of both.
    """

    embedder = bentoml.depends(Embedder, url=settings.embedder_url)
    reranker = bentoml.depends(Reranker, url=settings.reranker_url)
    reader = bentoml.depends(Reader, url=settings.reader_url)

    # in the main process, before the dependencies' workers are created: they inherit it
    _arm_fatal_exit = bentoml.on_deployment(lifecycle.arm)

    def __init__(self) -> None:
        self.settings = get_settings()
        self.created = int(time.time())  # /v1/models' created
        self.index = open_index(
            self.settings.index_uri,
            ann_threshold=self.settings.ann_threshold,
            version_retention_s=self.settings.index_version_retention_s,
        )
        self.media = open_media_store(self.settings)
        self.media.check()
        self.media.blobs.sweep_temporary(self.settings.media_sweep_age_s)  # a crash's half-written files
        self.metrics = get_metrics()
        stage_seconds = self.metrics.search_stage_seconds
        self.storage = StorageHealth(local_directories(self.settings.index_uri, local_media_dir(self.settings)))
        s = self.settings
        self.breakers = {
            stage: CircuitBreaker(stage, s.breaker_failures, s.breaker_open_s)
            for stage in ("embedder", "reranker", "reader")
        }
        gate = PriorityGate.for_service(self.settings, "search")
        loader = media_loader("search", self.settings, gate)  # inline images that skip the embedder
        loader.store = self.media
        self.pipeline = SearchPipeline(
            self.settings,
            embedder=RemoteEmbedder(self.embedder, self.breakers["embedder"]),
            reranker=RemoteReranker(self.reranker, self.breakers["reranker"]),
            reader=RemoteReader(self.reader, self.breakers["reader"]) if self.settings.ocr_enabled() else None,
            index=self.index,
            media=self.media,
            loader=loader,
            gate=gate,
            observe_stage=lambda stage, seconds: stage_seconds.labels(stage).observe(seconds),
            storage=self.storage,
            cache=open_embedding_cache(self.settings),
            on_cache_hits=self.metrics.embedding_cache_hits.inc,
        )
        self._deps_seen_ready = False

    @bentoml.on_shutdown
    def _close_index(self) -> None:
        """Stop the index's background maintenance (a pass in progress gets a few seconds) and release it."""
        self.index.close()

    async def __is_ready__(self) -> bool:
        """Ready once both dependencies have answered /readyz (afterwards their outages are answered per request:
        fast 503 ``*_unavailable``, or ``rerank: "auto"`` falling back to retrieval), and while the storage can be
        written (after a disk-full or read-only fault, not until a probe write succeeds)."""
        if not self.storage.ok and not await asyncio.to_thread(self.storage.probe):
            return False
        if self._deps_seen_ready:
            return True
        deps = (self.embedder, self.reranker, self.reader)
        probes = [p for p in (getattr(d, "is_ready", None) for d in deps) if p]
        try:
            async with asyncio.timeout(3):
                self._deps_seen_ready = all([await probe(2) for probe in probes])
        except Exception:  # refused, unresolvable, timed out: not yet
            return False
        return self._deps_seen_ready

    # ------------------------------------------------------------------------------------------- documents
    upsert = _flow("/upsert", UpsertRequest, UpsertResponse, SearchPipeline.upsert)
    delete = _flow("/delete", DeleteRequest, DeleteResponse, SearchPipeline.delete)
    drop = _flow("/drop", DropRequest, DropResponse, SearchPipeline.drop)
    get = _flow("/get", GetRequest, GetResponse, SearchPipeline.get)
    ids = _flow("/ids", IdsRequest, IdsResponse, SearchPipeline.ids)
    set_alias = _flow("/aliases/set", AliasRequest, AliasResponse, SearchPipeline.set_alias)
    delete_alias = _flow("/aliases/delete", AliasDeleteRequest, AliasDeleteResponse, SearchPipeline.delete_alias)
    search = _flow("/search", SearchRequest, SearchResponse, SearchPipeline.search)
    calibrate = _flow("/calibrate", CalibrateRequest, CalibrateResponse, calibrator.calibrate)
    uncalibrate = _flow("/uncalibrate", UncalibrateRequest, UncalibrateResponse, calibrator.uncalibrate)

    @bentoml.api(route="/collections")
    @handle_api_errors
    async def collections(self) -> CollectionsResponse:
        """Every collection with its document count, dimension, embedding model and calibration (if any)."""
        return await self.pipeline.collections()

    @bentoml.api(route="/aliases")
    @handle_api_errors
    async def aliases(self) -> AliasesResponse:
        """Every alias with the collection it points at."""
        return await self.pipeline.alias_table()

    # ------------------------------------------------------------------------------------------- proxies
    encode = _proxy(Embedder, "encode")
    openai_embeddings = _proxy(Embedder, "openai_embeddings")
    rerank = _proxy(Reranker, "rerank")
    cohere_rerank = _proxy(Reranker, "cohere_rerank")
    cohere_rerank_v2 = _proxy(Reranker, "cohere_rerank_v2")
    ocr = _proxy(Reader, "ocr")

    async def _call(self, stage: str, call: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
        return await call_dependency(call, stage=stage, breaker=self.breakers[stage], timeout=timeout)

    @handle_api_errors
    async def encode_upload(self, request: Request) -> Response:
        """``/upload/encode`` (multipart) through Search: the files travel to the Embedder inline (data URIs)."""
        form = await read_upload_form(request, self.settings)
        texts, medium = form.texts, form.medium
        items = [
            Item.model_validate(
                {"text": texts[i] if texts else None, medium: _data_uri(data, form.content_types[i], medium)}
            )
            for i, data in enumerate(form.files)
        ]
        try:
            resp: EncodeResponse = await self._call(
                "embedder",
                lambda: self.embedder.to_async.encode(
                    inputs=items,
                    input_type=form.input_type,
                    normalize=form.normalize,
                    dimensions=form.dimensions,
                    encoding_format=form.encoding_format,
                    model=form.model,
                ),
            )
        except ApiError as e:
            # the Embedder's inputs[k] and its inputs[k].video are the upload's video[k]
            upload = e.relocate("inputs", lambda k, rest: (medium, k, *(rest[1:] if rest[:1] == (medium,) else rest)))
            raise upload from None
        return JSONResponse(resp.model_dump())

    @handle_api_errors
    async def openai_models(self, name: str | None) -> Response:
        """``GET /v1/models``: the Embedder's and the Reranker's models in OpenAI's list shape (from their
        ``/info``); ``GET /v1/models/{name}``: one of them, or 404 ``model_not_found``."""
        data: list[dict[str, Any]] = []
        for stage, dep in (("embedder", self.embedder), ("reranker", self.reranker)):
            info: dict[str, Any] = await self._call(stage, dep.to_async.info, timeout=3)
            data += [
                {"id": m["name"], "object": "model", "created": self.created, "owned_by": "mmsearch"}
                for m in info.get("models") or []
            ]
        if name is None:
            return JSONResponse({"object": "list", "data": data})
        found = next((m for m in data if m["id"] == name), None)
        if found is None:
            served = ", ".join(m["id"] for m in data)
            raise ApiError(404, "model_not_found", f"model: no model named {name!r}; served: {served}", field="model")
        return JSONResponse(found)

    @bentoml.api(route="/info")
    @handle_api_errors
    async def info(self) -> dict[str, Any]:
        """Index backend and limits, and every dependency: its own /info (models, loading options) or why it is
        unavailable, with the state of its circuit breaker; OCR, keyword search and which path each modality
        takes (``modality_paths``); every collection with the model it is bound to (``collections``)."""
        deps: dict[str, dict[str, Any]] = {}
        for stage, dep in (("embedder", self.embedder), ("reranker", self.reranker), ("reader", self.reader)):
            try:
                meta: dict[str, Any] = dict(await self._call(stage, dep.to_async.info, timeout=3))
            except ApiError as e:
                meta = {"available": False, "error": e.message}
            else:
                meta["available"] = True
            meta["circuit"] = self.breakers[stage].snapshot()
            deps[stage] = meta
        try:
            collections = bindings.describe(await self.pipeline.listed_collections())
        except ApiError:
            collections = None  # the storage is faulty: /info still answers
        return {
            "service": "Search",
            **deps,
            **self.pipeline.describe(deps["embedder"].get("modalities") or []),
            "index_uri_kind": type(self.index).__name__,
            "max_candidates": self.settings.max_candidates,
            "collections": collections,
        }


def _data_uri(data: bytes, content_type: str, medium: str = "image") -> str:
    """An uploaded file as a ``data:<medium>/<subtype>;base64,`` URI (its part's type when that names the medium,
    without parameters; else ``<medium>/unknown``: the decoder reads the bytes, not the type)."""
    mime = content_type.split(";", 1)[0].strip().lower()
    kind = mime if re.fullmatch(rf"{medium}/[a-z0-9.+-]+", mime) else f"{medium}/unknown"
    return f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"


install_middleware(Search, settings, public=is_page)
