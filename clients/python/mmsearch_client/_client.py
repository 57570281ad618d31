"""The sync :class:`Client` and the async :class:`AsyncClient`: same methods, different transport."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Iterable, Mapping, Sequence, Sized
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx

from mmsearch_client._base import (
    BaseClient,
    BatchOutcome,
    RequestSpec,
    achunked,
    chunked,
    classify_transport_error,
    convert_documents,
    track_batch,
    upsert_batch_plan,
)
from mmsearch_client._progress import ProgressBar, make_progress
from mmsearch_client.errors import MMSearchError
from mmsearch_client.inputs import DocumentLike, InputLike
from mmsearch_client.results import BatchFailure, EncodeResult, HealthStatus, UpsertSummary
from mmsearch_client.schemas import (
    AliasDeleteResponse,
    AliasesResponse,
    AliasResponse,
    CalibrateResponse,
    CalibrationQuery,
    CollectionsResponse,
    DeleteResponse,
    DropResponse,
    GetResponse,
    IdsResponse,
    InputType,
    RerankResponse,
    SearchMode,
    SearchResponse,
    UncalibrateResponse,
    UpsertResponse,
)

__all__ = ["AsyncClient", "Client"]

T = TypeVar("T")
Rerank = bool | Literal["auto"] | None


def _check_batching(batch_size: int, concurrency: int) -> None:
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")


class Client(BaseClient[httpx.Client]):
    """Synchronous client.

        with Client("http://127.0.0.1:3000") as client:
            hits = client.search("red bicycle", top_k=5).hits

    ``base_url`` defaults to ``$MMSEARCH_URL`` (else ``http://127.0.0.1:3000``), ``api_key`` to
    ``$MMSEARCH_API_KEY`` (sent as ``Authorization: Bearer``). Connection errors, 429 and 503 are retried
    ``max_retries`` times with exponential backoff and jitter, honouring ``Retry-After``.
    """

    def _default_http(self) -> httpx.Client:
        return httpx.Client(timeout=self.timeout)

    # ------------------------------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Close the connection pool (not a caller-supplied ``http_client``)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------- transport
    def _sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def _run(self, spec: RequestSpec[T]) -> T:
        retries = self._retries_for(spec)
        attempt = 0
        while True:
            request = self._build_request(spec)
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                err, retryable = classify_transport_error(exc, request)
                if retryable and attempt < retries:
                    self._sleep(self._retry_delay(attempt))
                    attempt += 1
                    continue
                raise err from exc
            if attempt < retries and self._should_retry(response):
                delay = self._retry_delay(attempt, response)
                response.close()
                self._sleep(delay)
                attempt += 1
                continue
            return self._process(spec, response)

    # ------------------------------------------------------------------------------------------ embeddings
    def encode(
        self,
        inputs: InputLike | Sequence[InputLike],
        *,
        input_type: InputType = "document",
        normalize: bool = True,
        dimensions: int | None = None,
        model: str | None = None,
    ) -> EncodeResult:
        """Embed texts, images and text+image pairs (``str`` is always text). Vectors come back in order.
        ``model``: one of the served embedders (``/v1/models``); default: the default model."""
        return self._run(self._encode_spec(inputs, input_type, normalize, dimensions, model))

    def encode_query(
        self,
        inputs: InputLike | Sequence[InputLike],
        *,
        normalize: bool = True,
        dimensions: int | None = None,
        model: str | None = None,
    ) -> EncodeResult:
        """``encode`` with the query prompt (for search queries)."""
        return self.encode(inputs, input_type="query", normalize=normalize, dimensions=dimensions, model=model)

    def encode_document(
        self,
        inputs: InputLike | Sequence[InputLike],
        *,
        normalize: bool = True,
        dimensions: int | None = None,
        model: str | None = None,
    ) -> EncodeResult:
        """``encode`` with the document prompt (for indexed content)."""
        return self.encode(inputs, input_type="document", normalize=normalize, dimensions=dimensions, model=model)

    def rerank(
        self,
        query: InputLike,
        documents: Sequence[InputLike],
        *,
        top_n: int | None = None,
        return_documents: bool = False,
        model: str | None = None,
    ) -> RerankResponse:
        """Score ``documents`` against ``query``; results are sorted by ``relevance_score``, best first.
        ``model``: one of the served rerankers; default: the default model."""
        return self._run(self._rerank_spec(query, documents, top_n, return_documents, model))

    # ----------------------------------------------------------------------------------------------- index
    def upsert(
        self,
        documents: DocumentLike | Sequence[DocumentLike],
        *,
        collection: str = "default",
        model: str | None = None,
    ) -> UpsertResponse:
        """Embed and store documents in one request; an existing id is replaced. ``model``: the embedder a new
        collection is bound to (default: the server's default); for an existing one it must be its own (409)."""
        return self._run(self._upsert_spec(documents, collection, model))

    def _upsert_batch(self, collection: str, batch: list[DocumentLike]) -> tuple[BatchOutcome, list[BatchFailure]]:
        docs, failures = convert_documents(batch)
        plan = upsert_batch_plan(docs)
        try:
            sub = next(plan)
            while True:
                result: UpsertResponse | MMSearchError
                try:
                    result = self._run(self._upsert_wire_spec(sub, collection))
                except MMSearchError as e:
                    result = e
                sub = plan.send(result)
        except StopIteration as stop:
            outcome: BatchOutcome = stop.value
            return outcome, failures

    def upsert_many(
        self,
        documents: Iterable[DocumentLike],
        *,
        collection: str = "default",
        batch_size: int = 32,
        concurrency: int = 4,
        progress: bool = True,
    ) -> UpsertSummary:
        """Upsert any number of documents in batches, ``concurrency`` requests at a time (threads).

        A failing batch does not stop the others: a document the server blames is dropped and the rest of
        its batch resent. Failures are listed in the returned summary.
        """
        _check_batching(batch_size, concurrency)
        summary = UpsertSummary(collection=collection)
        total = len(documents) if isinstance(documents, Sized) else None
        bar: ProgressBar
        with (
            make_progress(progress, total, f"upsert → {collection}") as bar,
            ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="mmsearch-upsert") as pool,
        ):
            inflight: set[Future[tuple[BatchOutcome, list[BatchFailure]]]] = set()

            def drain(block_until: int) -> None:
                nonlocal inflight
                while len(inflight) > block_until:
                    done, inflight = wait(inflight, return_when=FIRST_COMPLETED)
                    for fut in done:
                        track_batch(bar, summary, *fut.result())

            try:
                for batch in chunked(documents, batch_size):
                    drain(concurrency - 1)
                    inflight.add(pool.submit(self._upsert_batch, collection, batch))
                drain(0)
            except BaseException:
                for fut in inflight:
                    fut.cancel()
                raise
        return summary

    def delete(self, ids: str | Sequence[str], *, collection: str) -> DeleteResponse:
        """Delete documents by id; ``deleted`` counts those that existed."""
        return self._run(self._delete_spec(ids, collection))

    def drop_collection(self, collection: str, *, missing_ok: bool = False) -> DropResponse:
        """Drop a collection with all its documents (not undoable). A missing collection raises
        ``NotFoundError`` (``code="collection_not_found"``), or returns ``dropped=False`` with ``missing_ok``."""
        return self._run(self._drop_spec(collection, missing_ok))

    def get(self, ids: str | Sequence[str], *, collection: str, include_embedding: bool = False) -> GetResponse:
        """Fetch stored documents by id, in the order asked; missing ids are skipped."""
        return self._run(self._get_spec(ids, collection, include_embedding))

    def calibrate(
        self,
        queries: Sequence[CalibrationQuery | Mapping[str, Any]],
        *,
        collection: str = "default",
        method: Literal["platt", "isotonic"] = "platt",
        name: str = "",
        candidates: int = 50,
    ) -> CalibrateResponse:
        """Fit the collection's score calibration from labelled ``queries`` (``CalibrationQuery`` or
        ``{"text"|"image": ..., "relevant": [ids]}``) and store it with the collection: ``search`` then applies it
        to ``min_score`` and to the fused order of balanced retrieval. ``method``: ``platt`` or ``isotonic``;
        ``name``: what the labelled set is called (shown by ``collections()``)."""
        return self._run(self._calibrate_spec(queries, collection, method, name, candidates))

    def uncalibrate(self, *, collection: str = "default") -> UncalibrateResponse:
        """Remove the collection's score calibration (``removed=False`` if it had none); a missing collection
        raises ``NotFoundError``."""
        return self._run(self._uncalibrate_spec(collection))

    def collections(self) -> CollectionsResponse:
        """Every collection with its document count, dimension and embedding model."""
        return self._run(self._collections_spec())

    def ids(self, *, collection: str = "default", after: str | None = None, limit: int = 100) -> IdsResponse:
        """One page of the collection's document ids in id order; pass ``next`` as ``after`` for the next."""
        return self._run(self._ids_spec(collection, after, limit))

    def aliases(self) -> AliasesResponse:
        """Every alias with the collection it points at."""
        return self._run(self._aliases_spec())

    def set_alias(self, alias: str, collection: str) -> AliasResponse:
        """Point ``alias`` at ``collection``: created, or switched atomically (``previous``: the old target).
        Search, get, upsert and delete take the alias where a collection name goes."""
        return self._run(self._set_alias_spec(alias, collection))

    def delete_alias(self, alias: str) -> AliasDeleteResponse:
        """Delete an alias (``deleted=False`` if there was none); its collection stays."""
        return self._run(self._delete_alias_spec(alias))

    # ---------------------------------------------------------------------------------------------- search
    def search(
        self,
        query: InputLike,
        *,
        collection: str = "default",
        top_k: int = 10,
        candidates: int = 50,
        rerank: Rerank = None,
        filter: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        mode: SearchMode | None = None,
        hybrid: Mapping[str, Any] | None = None,
        balance: Literal["auto", "off"] | None = None,
        min_score: float | None = None,
        segments: Literal["best", "all"] | None = None,
    ) -> SearchResponse:
        """Retrieve ``candidates`` (at least ``top_k``: the server raises a smaller shortlist; ``mode``:
        ``vector``, ``keyword`` or ``hybrid``, default the server's choice), rerank them, return the best
        ``top_k``; every hit carries the ``evidence`` lines that matched.

        ``rerank``: ``True`` reranks or fails (503), ``False`` skips it, ``"auto"`` reranks when the
        reranker answers; ``None``: rerank when the server has a reranker. ``hybrid``: fusion options
        (``{"fusion": "coverage" | "rrf", "keyword_weight": w}``). ``timeout`` is a server-side deadline in
        seconds (504 when exceeded). ``balance``: ``"auto"`` (the server's default) draws candidates per document
        modality on a mixed collection, ``"off"`` takes one top-``candidates`` by raw cosine. ``min_score``: drop
        vector candidates below it (the calibrated probability on a calibrated collection, else the raw cosine).
        ``segments``: audio and video documents indexed as segments come back once at their best segment
        (``"best"``, the server's default) or once per matching segment (``"all"``); hits carry ``t0``/``t1``.
        """
        spec = self._search_spec(
            query, collection, top_k, candidates, rerank, filter, timeout, mode, hybrid, balance, min_score, segments
        )
        return self._run(spec)

    # ---------------------------------------------------------------------------------------------- status
    def health(self) -> HealthStatus:
        """Probe ``GET /livez`` and ``GET /readyz`` (no retries, never raises); truthy when ready."""
        probes: list[tuple[bool, str | None] | MMSearchError] = []
        for path in ("/livez", "/readyz"):
            try:
                probes.append(self._run(self._probe_spec(path)))
            except MMSearchError as e:
                probes.append(e)
                break
        return self._health(probes[0], probes[-1])

    def info(self) -> dict[str, Any]:
        """Models, dimension and index backend of the service (``POST /info``)."""
        return self._run(self._info_spec())


class AsyncClient(BaseClient[httpx.AsyncClient]):
    """Asynchronous client, with the same methods as :class:`Client` (awaitable).

    async with AsyncClient() as client:
        result = await client.encode(["a red bicycle", Image.url("https://example.com/bike.png")])
    """

    def _default_http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=self.timeout)

    # ------------------------------------------------------------------------------------------- lifecycle
    async def aclose(self) -> None:
        """Close the connection pool (not a caller-supplied ``http_client``)."""
        if self._owns_http:
            await self._http.aclose()

    async def close(self) -> None:
        """Alias of :meth:`aclose`."""
        await self.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------------------------------- transport
    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def _run(self, spec: RequestSpec[T]) -> T:
        retries = self._retries_for(spec)
        attempt = 0
        while True:
            request = self._build_request(spec)
            try:
                response = await self._http.send(request)
            except httpx.TransportError as exc:
                err, retryable = classify_transport_error(exc, request)
                if retryable and attempt < retries:
                    await self._sleep(self._retry_delay(attempt))
                    attempt += 1
                    continue
                raise err from exc
            if attempt < retries and self._should_retry(response):
                delay = self._retry_delay(attempt, response)
                await response.aclose()
                await self._sleep(delay)
                attempt += 1
                continue
            return self._process(spec, response)

    # ------------------------------------------------------------------------------------------ embeddings
    async def encode(
        self,
        inputs: InputLike | Sequence[InputLike],
        *,
        input_type: InputType = "document",
        normalize: bool = True,
        dimensions: int | None = None,
        model: str | None = None,
    ) -> EncodeResult:
        """Embed texts, images and text+image pairs (``str`` is always text). Vectors come back in order.
        ``model``: one of the served embedders (``/v1/models``); default: the default model."""
        return await self._run(self._encode_spec(inputs, input_type, normalize, dimensions, model))

    async def encode_query(
        self,
        inputs: InputLike | Sequence[InputLike],
        *,
        normalize: bool = True,
        dimensions: int | None = None,
        model: str | None = None,
    ) -> EncodeResult:
        """``encode`` with the query prompt (for search queries)."""
        return await self.encode(inputs, input_type="query", normalize=normalize, dimensions=dimensions, model=model)

    async def encode_document(
        self,
        inputs: InputLike | Sequence[InputLike],
        *,
        normalize: bool = True,
        dimensions: int | None = None,
        model: str | None = None,
    ) -> EncodeResult:
        """``encode`` with the document prompt (for indexed content)."""
        return await self.encode(inputs, input_type="document", normalize=normalize, dimensions=dimensions, model=model)

    async def rerank(
        self,
        query: InputLike,
        documents: Sequence[InputLike],
        *,
        top_n: int | None = None,
        return_documents: bool = False,
        model: str | None = None,
    ) -> RerankResponse:
        """Score ``documents`` against ``query``; results are sorted by ``relevance_score``, best first.
        ``model``: one of the served rerankers; default: the default model."""
        return await self._run(self._rerank_spec(query, documents, top_n, return_documents, model))

    # ----------------------------------------------------------------------------------------------- index
    async def upsert(
        self,
        documents: DocumentLike | Sequence[DocumentLike],
        *,
        collection: str = "default",
        model: str | None = None,
    ) -> UpsertResponse:
        """Embed and store documents in one request; an existing id is replaced. ``model``: the embedder a new
        collection is bound to (default: the server's default); for an existing one it must be its own (409)."""
        spec = await asyncio.to_thread(self._upsert_spec, documents, collection, model)  # reads image files
        return await self._run(spec)

    async def _upsert_batch(
        self, collection: str, batch: list[DocumentLike]
    ) -> tuple[BatchOutcome, list[BatchFailure]]:
        docs, failures = await asyncio.to_thread(convert_documents, batch)
        plan = upsert_batch_plan(docs)
        try:
            sub = next(plan)
            while True:
                result: UpsertResponse | MMSearchError
                try:
                    result = await self._run(self._upsert_wire_spec(sub, collection))
                except MMSearchError as e:
                    result = e
                sub = plan.send(result)
        except StopIteration as stop:
            outcome: BatchOutcome = stop.value
            return outcome, failures

    async def upsert_many(
        self,
        documents: Iterable[DocumentLike] | AsyncIterable[DocumentLike],
        *,
        collection: str = "default",
        batch_size: int = 32,
        concurrency: int = 4,
        progress: bool = True,
    ) -> UpsertSummary:
        """Upsert any number of documents in batches, at most ``concurrency`` requests in flight.

        Accepts an iterable or an async iterable. Failures are listed in the returned summary.
        """
        _check_batching(batch_size, concurrency)
        summary = UpsertSummary(collection=collection)
        total = len(documents) if isinstance(documents, Sized) else None
        semaphore = asyncio.Semaphore(concurrency)
        tasks: set[asyncio.Task[None]] = set()

        with make_progress(progress, total, f"upsert → {collection}") as bar:

            async def one(batch: list[DocumentLike]) -> None:
                try:
                    outcome, failures = await self._upsert_batch(collection, batch)
                    track_batch(bar, summary, outcome, failures)
                finally:
                    semaphore.release()

            try:
                async for batch in achunked(documents, batch_size):
                    await semaphore.acquire()
                    task = asyncio.create_task(one(batch))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                raise
        return summary

    async def delete(self, ids: str | Sequence[str], *, collection: str) -> DeleteResponse:
        """Delete documents by id; ``deleted`` counts those that existed."""
        return await self._run(self._delete_spec(ids, collection))

    async def get(self, ids: str | Sequence[str], *, collection: str, include_embedding: bool = False) -> GetResponse:
        """Fetch stored documents by id, in the order asked; missing ids are skipped."""
        return await self._run(self._get_spec(ids, collection, include_embedding))

    async def drop_collection(self, collection: str, *, missing_ok: bool = False) -> DropResponse:
        """Drop a collection with all its documents (not undoable). A missing collection raises
        ``NotFoundError`` (``code="collection_not_found"``), or returns ``dropped=False`` with ``missing_ok``."""
        return await self._run(self._drop_spec(collection, missing_ok))

    async def calibrate(
        self,
        queries: Sequence[CalibrationQuery | Mapping[str, Any]],
        *,
        collection: str = "default",
        method: Literal["platt", "isotonic"] = "platt",
        name: str = "",
        candidates: int = 50,
    ) -> CalibrateResponse:
        """Fit the collection's score calibration from labelled ``queries`` (``CalibrationQuery`` or
        ``{"text"|"image": ..., "relevant": [ids]}``) and store it with the collection: ``search`` then applies it
        to ``min_score`` and to the fused order of balanced retrieval. ``method``: ``platt`` or ``isotonic``;
        ``name``: what the labelled set is called (shown by ``collections()``)."""
        return await self._run(self._calibrate_spec(queries, collection, method, name, candidates))

    async def uncalibrate(self, *, collection: str = "default") -> UncalibrateResponse:
        """Remove the collection's score calibration (``removed=False`` if it had none); a missing collection
        raises ``NotFoundError``."""
        return await self._run(self._uncalibrate_spec(collection))

    async def collections(self) -> CollectionsResponse:
        """Every collection with its document count, dimension and embedding model."""
        return await self._run(self._collections_spec())

    async def ids(self, *, collection: str = "default", after: str | None = None, limit: int = 100) -> IdsResponse:
        """One page of the collection's document ids in id order; pass ``next`` as ``after`` for the next."""
        return await self._run(self._ids_spec(collection, after, limit))

    async def aliases(self) -> AliasesResponse:
        """Every alias with the collection it points at."""
        return await self._run(self._aliases_spec())

    async def set_alias(self, alias: str, collection: str) -> AliasResponse:
        """Point ``alias`` at ``collection``: created, or switched atomically (``previous``: the old target).
        Search, get, upsert and delete take the alias where a collection name goes."""
        return await self._run(self._set_alias_spec(alias, collection))

    async def delete_alias(self, alias: str) -> AliasDeleteResponse:
        """Delete an alias (``deleted=False`` if there was none); its collection stays."""
        return await self._run(self._delete_alias_spec(alias))

    # ---------------------------------------------------------------------------------------------- search
    async def search(
        self,
        query: InputLike,
        *,
        collection: str = "default",
        top_k: int = 10,
        candidates: int = 50,
        rerank: Rerank = None,
        filter: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        mode: SearchMode | None = None,
        hybrid: Mapping[str, Any] | None = None,
        balance: Literal["auto", "off"] | None = None,
        min_score: float | None = None,
        segments: Literal["best", "all"] | None = None,
    ) -> SearchResponse:
        """Retrieve ``candidates`` (``mode``), rerank them, return the best ``top_k`` (see :meth:`Client.search`)."""
        spec = self._search_spec(
            query, collection, top_k, candidates, rerank, filter, timeout, mode, hybrid, balance, min_score, segments
        )
        return await self._run(spec)

    # ---------------------------------------------------------------------------------------------- status
    async def health(self) -> HealthStatus:
        """Probe ``GET /livez`` and ``GET /readyz`` (no retries, never raises); truthy when ready."""
        probes: list[tuple[bool, str | None] | MMSearchError] = []
        for path in ("/livez", "/readyz"):
            try:
                probe = await self._run(self._probe_spec(path))
                probes.append(probe)
            except MMSearchError as e:
                probes.append(e)
                break
        return self._health(probes[0], probes[-1])

    async def info(self) -> dict[str, Any]:
        """Models, dimension and index backend of the service (``POST /info``)."""
        return await self._run(self._info_spec())
