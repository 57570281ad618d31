"""Transport-independent core shared by :class:`Client` and :class:`AsyncClient`.

Each API method builds a :class:`RequestSpec` here (route, JSON body, how to parse the answer); the sync and
async clients only send it, retry it and sleep. ``upsert_many``'s per-batch logic is a sans-IO generator
(:func:`upsert_batch_plan`) driven by both.
"""

from __future__ import annotations

import itertools
import os
import random
import re
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Generic, Literal, TypeVar, cast

import httpx
from pydantic import BaseModel, ValidationError

from mmsearch_client._progress import ProgressBar
from mmsearch_client.errors import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    MMSearchError,
    PayloadTooLargeError,
    error_from_response,
    parse_retry_after,
)
from mmsearch_client.inputs import (
    DocumentLike,
    InputLike,
    item_to_json,
    to_item,
    to_items,
    to_wire_document,
)
from mmsearch_client.results import BatchFailure, EncodeResult, HealthStatus, UpsertSummary, decode_embedding
from mmsearch_client.schemas import (
    AliasDeleteResponse,
    AliasesResponse,
    AliasResponse,
    CalibrateResponse,
    CalibrationQuery,
    CollectionsResponse,
    DeleteResponse,
    DropResponse,
    EncodeResponse,
    GetResponse,
    IdsResponse,
    InputType,
    RerankResponse,
    SearchMode,
    SearchResponse,
    UncalibrateResponse,
    UpsertDocument,
    UpsertResponse,
)

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_MAX_RETRIES", "DEFAULT_TIMEOUT", "BaseClient", "RequestSpec"]

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
HttpT = TypeVar("HttpT", httpx.Client, httpx.AsyncClient)

DEFAULT_BASE_URL = "http://127.0.0.1:3000"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
DEFAULT_MAX_RETRIES = 2
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 60.0
SEARCH_TIMEOUT_MARGIN = 5.0
RETRY_STATUSES = frozenset({429, 503})

try:
    __version__ = metadata.version("mmsearch-client")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"


class _NotGiven:
    """Sentinel for "argument not given" where ``None`` is a meaningful value."""

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN = _NotGiven()

TimeoutLike = float | httpx.Timeout | None


@dataclass(frozen=True, slots=True)
class RequestSpec(Generic[T]):
    """One API call: method, route, JSON body and the parser of a successful answer."""

    method: Literal["GET", "POST"]
    path: str
    body: Any
    parse: Callable[[httpx.Response], T]
    timeout: httpx.Timeout | None = None
    max_retries: int | None = None
    check_status: bool = True


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as e:
        raise APIResponseValidationError(
            f"{response.request.url.path}: answer is not JSON ({e})", response=response
        ) from None


def _model(cls: type[M]) -> Callable[[httpx.Response], M]:
    def parse(response: httpx.Response) -> M:
        try:
            return cls.model_validate(_json(response))
        except ValidationError as e:
            raise APIResponseValidationError(
                f"{response.request.url.path}: unexpected answer for {cls.__name__}: {e}", response=response
            ) from None

    return parse


def _parse_encode(response: httpx.Response) -> EncodeResult:
    wire = _model(EncodeResponse)(response)
    try:
        vectors = [decode_embedding(v) if isinstance(v, str) else list(v) for v in wire.embeddings]
    except ValueError as e:
        raise APIResponseValidationError(f"/encode: {e}", response=response) from None
    return EncodeResult(embeddings=vectors, model=wire.model, dimensions=wire.dimensions)


def _parse_dict(response: httpx.Response) -> dict[str, Any]:
    body = _json(response)
    if not isinstance(body, dict):
        raise APIResponseValidationError(f"{response.request.url.path}: expected a JSON object", response=response)
    return body


def _parse_probe(response: httpx.Response) -> tuple[bool, str | None]:
    if response.is_success:
        return True, None
    return False, str(error_from_response(response))


def _id_list(ids: str | Sequence[str]) -> list[str]:
    return [ids] if isinstance(ids, str) else list(ids)


def _is_single_document(value: object) -> bool:
    from mmsearch_client.inputs import Document

    return isinstance(value, (Document, UpsertDocument, Mapping))


def document_id(doc: DocumentLike) -> str:
    """The id of any document kind (``"?"`` when a mapping lacks one)."""
    if isinstance(doc, Mapping):
        return str(doc.get("id", "?"))
    return doc.id


_DOC_FIELD = re.compile(r"^documents\[(\d+)\]")


def _bad_document_index(err: Exception, n: int) -> int | None:
    """The batch position an error blames (``field="documents[3].image"`` -> 3), if any."""
    if isinstance(err, APIStatusError) and err.field:
        m = _DOC_FIELD.match(err.field)
        if m and int(m.group(1)) < n:
            return int(m.group(1))
    return None


@dataclass(slots=True)
class BatchOutcome:
    ids: list[str]
    failures: list[BatchFailure]
    requests: int = 0
    ocr_images: int = 0
    ocr_lines: int = 0


UpsertPlan = Generator[list[dict[str, Any]], "UpsertResponse | MMSearchError", BatchOutcome]


def upsert_batch_plan(docs: list[dict[str, Any]]) -> UpsertPlan:
    """Send ``docs`` as one upsert, then recover from partial failures (sans-IO: the driver sends).

    Yields each sub-batch to send and receives the ``UpsertResponse`` or the error. A document the server
    blames by field (``documents[i]...``) is dropped and the rest resent; a 413 without such a field splits
    the batch in halves; any other error fails the whole sub-batch.
    """
    outcome = BatchOutcome(ids=[], failures=[])
    pending: deque[list[dict[str, Any]]] = deque([docs] if docs else [])
    while pending:
        batch = pending.popleft()
        outcome.requests += 1
        result = yield batch
        if isinstance(result, UpsertResponse):
            outcome.ids.extend(result.ids)
            outcome.ocr_images += result.ocr_images
            outcome.ocr_lines += result.ocr_lines
            continue
        idx = _bad_document_index(result, len(batch))
        if idx is not None:
            outcome.failures.append(BatchFailure([str(batch[idx].get("id"))], result))
            rest = batch[:idx] + batch[idx + 1 :]
            if rest:
                pending.appendleft(rest)
        elif isinstance(result, PayloadTooLargeError) and len(batch) > 1:
            mid = len(batch) // 2
            pending.extendleft([batch[mid:], batch[:mid]])
        else:
            outcome.failures.append(BatchFailure([str(d.get("id")) for d in batch], result))
    return outcome


def convert_documents(batch: Sequence[DocumentLike]) -> tuple[list[dict[str, Any]], list[BatchFailure]]:
    """Wire bodies of ``batch``; documents whose image cannot be read or encoded become failures."""
    docs: list[dict[str, Any]] = []
    failures: list[BatchFailure] = []
    for doc in batch:
        try:
            docs.append(to_wire_document(doc))
        except (OSError, ValueError, TypeError) as e:
            failures.append(BatchFailure([document_id(doc)], MMSearchError(f"{document_id(doc)}: {e}")))
    return docs, failures


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


async def achunked(items: Iterable[T] | AsyncIterable[T], size: int) -> AsyncIterator[list[T]]:
    if not isinstance(items, AsyncIterable):
        for chunk in chunked(items, size):
            yield chunk
        return
    batch: list[T] = []
    async for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def merge_outcome(summary: UpsertSummary, outcome: BatchOutcome, initial_failures: list[BatchFailure]) -> int:
    """Fold one batch into the summary; returns the number of documents it covered (for progress)."""
    failures = initial_failures + outcome.failures
    summary.batches += 1
    summary.upserted += len(outcome.ids)
    summary.ocr_images += outcome.ocr_images
    summary.ocr_lines += outcome.ocr_lines
    summary.ids.extend(outcome.ids)
    summary.failures.extend(failures)
    failed = sum(len(f.ids) for f in failures)
    summary.failed += failed
    return len(outcome.ids) + failed


def track_batch(
    bar: ProgressBar, summary: UpsertSummary, outcome: BatchOutcome, initial_failures: list[BatchFailure]
) -> None:
    """Fold one batch into the summary and the progress bar (which says how many images' text was read)."""
    bar.advance(merge_outcome(summary, outcome, initial_failures))
    if summary.ocr_images:
        bar.set_description(f"upsert → {summary.collection} (text read from {summary.ocr_images} images)")


def classify_transport_error(exc: httpx.TransportError, request: httpx.Request) -> tuple[MMSearchError, bool]:
    """The client error for a transport failure, and whether resending is safe (nothing reached the server,
    or the connection dropped before an answer)."""
    url = f"{request.method} {request.url}"
    if isinstance(exc, httpx.ConnectTimeout):
        return APITimeoutError(f"timed out connecting to {url}", request=request), True
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"timed out waiting for {url} ({type(exc).__name__})", request=request), False
    retryable = isinstance(exc, (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError))
    detail = str(exc) or type(exc).__name__
    return APIConnectionError(f"cannot reach {url}: {detail}", request=request), retryable


def _as_timeout(value: TimeoutLike) -> httpx.Timeout:
    return value if isinstance(value, httpx.Timeout) else httpx.Timeout(value)


class BaseClient(Generic[HttpT]):
    """Configuration, request building, response parsing and retry policy (no I/O)."""

    _http: HttpT
    _owns_http: bool

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: TimeoutLike | _NotGiven = NOT_GIVEN,
        max_retries: int = DEFAULT_MAX_RETRIES,
        headers: Mapping[str, str] | None = None,
        http_client: HttpT | None = None,
    ) -> None:
        base = base_url or os.environ.get("MMSEARCH_URL") or DEFAULT_BASE_URL
        if not base.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base!r}")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.base_url = base.rstrip("/")
        self.api_key = api_key if api_key is not None else (os.environ.get("MMSEARCH_API_KEY") or None)
        if isinstance(timeout, _NotGiven):
            self.timeout = http_client.timeout if http_client is not None else DEFAULT_TIMEOUT
        else:
            self.timeout = _as_timeout(timeout)
        self.max_retries = max_retries
        self._extra_headers = dict(headers or {})
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else self._default_http()

    def _default_http(self) -> HttpT:
        """The connection pool this client opens (and closes) when the caller passes no ``http_client``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    # ------------------------------------------------------------------------------------ request building
    def _headers(self) -> dict[str, str]:
        h = {"Accept": "application/json", "User-Agent": f"mmsearch-client/{__version__}"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        h.update(self._extra_headers)
        return h

    def _build_request(self, spec: RequestSpec[Any]) -> httpx.Request:
        return self._http.build_request(
            spec.method,
            self.base_url + spec.path,
            json=spec.body if spec.method == "POST" else None,
            headers=self._headers(),
            timeout=spec.timeout or self.timeout,
        )

    def _process(self, spec: RequestSpec[T], response: httpx.Response) -> T:
        if spec.check_status and not response.is_success:
            raise error_from_response(response)
        return spec.parse(response)

    # --------------------------------------------------------------------------------------- retry policy
    def _retries_for(self, spec: RequestSpec[Any]) -> int:
        return self.max_retries if spec.max_retries is None else spec.max_retries

    @staticmethod
    def _should_retry(response: httpx.Response) -> bool:
        return response.status_code in RETRY_STATUSES

    @staticmethod
    def _retry_delay(attempt: int, response: httpx.Response | None = None) -> float:
        """Seconds before retry ``attempt + 1``: ``Retry-After`` when given (up to 60 s), else exponential
        backoff from 0.5 s, capped at 8 s, with up to 25% jitter."""
        if response is not None:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            if retry_after is not None and retry_after <= MAX_RETRY_AFTER:
                return retry_after
        delay = min(INITIAL_RETRY_DELAY * 2.0**attempt, MAX_RETRY_DELAY)
        return delay * (1.0 - 0.25 * random.random())

    # ---------------------------------------------------------------------------------------- operations
    def _encode_spec(
        self,
        inputs: InputLike | Sequence[InputLike],
        input_type: InputType,
        normalize: bool,
        dimensions: int | None,
        model: str | None = None,
    ) -> RequestSpec[EncodeResult]:
        body: dict[str, Any] = {
            "inputs": [item_to_json(i) for i in to_items(inputs)],
            "input_type": input_type,
            "normalize": normalize,
            "encoding_format": "base64",
        }
        if dimensions is not None:
            body["dimensions"] = dimensions
        if model is not None:
            body["model"] = model
        return RequestSpec("POST", "/encode", body, _parse_encode)

    def _rerank_spec(
        self,
        query: InputLike,
        documents: Sequence[InputLike],
        top_n: int | None,
        return_documents: bool,
        model: str | None = None,
    ) -> RequestSpec[RerankResponse]:
        if isinstance(documents, str):
            raise TypeError("documents must be a list (a str is one text document: wrap it in a list)")
        body: dict[str, Any] = {
            "query": item_to_json(to_item(query)),
            "documents": [item_to_json(to_item(d)) for d in documents],
            "return_documents": return_documents,
        }
        if top_n is not None:
            body["top_n"] = top_n
        if model is not None:
            body["model"] = model
        return RequestSpec("POST", "/rerank", body, _model(RerankResponse))

    def _upsert_spec(
        self, documents: DocumentLike | Sequence[DocumentLike], collection: str, model: str | None = None
    ) -> RequestSpec[UpsertResponse]:
        docs = (
            [cast("DocumentLike", documents)]
            if _is_single_document(documents)
            else list(cast("Sequence[DocumentLike]", documents))
        )
        body: dict[str, Any] = {"collection": collection, "documents": [to_wire_document(d) for d in docs]}
        if model is not None:
            body["model"] = model
        return RequestSpec("POST", "/upsert", body, _model(UpsertResponse))

    def _upsert_wire_spec(self, docs: list[dict[str, Any]], collection: str) -> RequestSpec[UpsertResponse]:
        return RequestSpec("POST", "/upsert", {"collection": collection, "documents": docs}, _model(UpsertResponse))

    def _delete_spec(self, ids: str | Sequence[str], collection: str) -> RequestSpec[DeleteResponse]:
        body = {"collection": collection, "ids": _id_list(ids)}
        return RequestSpec("POST", "/delete", body, _model(DeleteResponse))

    def _drop_spec(self, collection: str, missing_ok: bool) -> RequestSpec[DropResponse]:
        def parse(response: httpx.Response) -> DropResponse:
            if response.status_code == 404 and missing_ok:
                body = _json(response)
                if isinstance(body, dict) and body.get("code") == "collection_not_found":
                    return DropResponse(collection=collection, dropped=False)
            if not response.is_success:
                raise error_from_response(response)
            return _model(DropResponse)(response)

        return RequestSpec("POST", "/drop", {"collection": collection}, parse, check_status=False)

    def _get_spec(self, ids: str | Sequence[str], collection: str, include_embedding: bool) -> RequestSpec[GetResponse]:
        body = {"collection": collection, "ids": _id_list(ids), "include_embedding": include_embedding}
        return RequestSpec("POST", "/get", body, _model(GetResponse))

    def _search_spec(
        self,
        query: InputLike,
        collection: str,
        top_k: int,
        candidates: int,
        rerank: bool | Literal["auto"] | None,
        filter: Mapping[str, Any] | None,
        timeout: float | None,
        mode: SearchMode | None = None,
        hybrid: Mapping[str, Any] | None = None,
        balance: Literal["auto", "off"] | None = None,
        min_score: float | None = None,
        segments: Literal["best", "all"] | None = None,
    ) -> RequestSpec[SearchResponse]:
        body: dict[str, Any] = {
            "collection": collection,
            "query": item_to_json(to_item(query)),
            "top_k": top_k,
            "candidates": candidates,
        }
        options = (
            ("rerank", rerank),
            ("mode", mode),
            ("hybrid", dict(hybrid) if hybrid else None),
            ("balance", balance),
            ("min_score", min_score),
            ("segments", segments),
        )
        for key, value in options:
            if value is not None:
                body[key] = value
        if filter is not None:
            body["filter"] = dict(filter)
        http_timeout: httpx.Timeout | None = None
        if timeout is not None:
            body["timeout"] = timeout
            # Let the server's deadline (answered as 504) fire before the client's read timeout.
            read = self.timeout.read
            if read is not None and read < timeout + SEARCH_TIMEOUT_MARGIN:
                http_timeout = httpx.Timeout(
                    connect=self.timeout.connect,
                    read=timeout + SEARCH_TIMEOUT_MARGIN,
                    write=self.timeout.write,
                    pool=self.timeout.pool,
                )
        return RequestSpec("POST", "/search", body, _model(SearchResponse), timeout=http_timeout)

    def _calibrate_spec(
        self,
        queries: Sequence[CalibrationQuery | Mapping[str, Any]],
        collection: str,
        method: Literal["platt", "isotonic"],
        name: str,
        candidates: int,
    ) -> RequestSpec[CalibrateResponse]:
        items = [q.model_dump(exclude_none=True) if isinstance(q, CalibrationQuery) else dict(q) for q in queries]
        body = {"collection": collection, "queries": items, "method": method, "name": name, "candidates": candidates}
        return RequestSpec("POST", "/calibrate", body, _model(CalibrateResponse))

    def _uncalibrate_spec(self, collection: str) -> RequestSpec[UncalibrateResponse]:
        return RequestSpec("POST", "/uncalibrate", {"collection": collection}, _model(UncalibrateResponse))

    def _collections_spec(self) -> RequestSpec[CollectionsResponse]:
        return RequestSpec("POST", "/collections", {}, _model(CollectionsResponse))

    def _ids_spec(self, collection: str, after: str | None, limit: int) -> RequestSpec[IdsResponse]:
        body: dict[str, Any] = {"collection": collection, "limit": limit}
        if after is not None:
            body["after"] = after
        return RequestSpec("POST", "/ids", body, _model(IdsResponse))

    def _aliases_spec(self) -> RequestSpec[AliasesResponse]:
        return RequestSpec("POST", "/aliases", {}, _model(AliasesResponse))

    def _set_alias_spec(self, alias: str, collection: str) -> RequestSpec[AliasResponse]:
        return RequestSpec("POST", "/aliases/set", {"alias": alias, "collection": collection}, _model(AliasResponse))

    def _delete_alias_spec(self, alias: str) -> RequestSpec[AliasDeleteResponse]:
        return RequestSpec("POST", "/aliases/delete", {"alias": alias}, _model(AliasDeleteResponse))

    def _info_spec(self) -> RequestSpec[dict[str, Any]]:
        return RequestSpec("POST", "/info", {}, _parse_dict)

    def _probe_spec(self, path: str) -> RequestSpec[tuple[bool, str | None]]:
        return RequestSpec("GET", path, None, _parse_probe, max_retries=0, check_status=False)

    @staticmethod
    def _health(
        live: tuple[bool, str | None] | MMSearchError, ready: tuple[bool, str | None] | MMSearchError
    ) -> HealthStatus:
        if isinstance(live, MMSearchError):
            return HealthStatus(live=False, ready=False, detail=str(live))
        if isinstance(ready, MMSearchError):
            return HealthStatus(live=live[0], ready=False, detail=str(ready))
        return HealthStatus(live=live[0], ready=ready[0], detail=live[1] or ready[1])
