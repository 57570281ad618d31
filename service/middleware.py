"""The request guard every service runs before BentoML parses a request, and ``install()``, which sets up all the
per-process defences of a service (this guard, the connection-level limits of ``service.transport``, log hygiene
and worker lifetime).

``RequestGuard`` is pure ASGI. Refusals come first and none of them reads the body, so a refused client cannot make
the server receive or buffer anything: framing (``Content-Length`` together with ``Transfer-Encoding`` is 400), the
API key (401), the Content-Type (415/400) and a declared ``Content-Length`` over the limit (413). Only then is the
body read, here, with its size bounded per request (``MMSEARCH_MAX_REQUEST_BYTES``) and per worker
(``MMSEARCH_MAX_BUFFERED_BODY_BYTES``, 503 beyond), and handed to the service in one piece. A client that goes away
mid-body (or is cut off by a transport deadline) ends the request here, quietly: the service is never called, so
nothing logs a traceback for it. Calls between the services of one ``bentoml serve`` (Unix sockets) pass through.

``install()`` runs a second guard *in front of* BentoML's ASGI stack (``front=True``, through ``service.transport``):
it reads the body of every request that passes the checks before BentoML (traffic control, tracing, metrics, access
log) sees the request, so a client that drips its body holds a read buffer only, and is cut by the transport's body
deadline without the service ever being called. It leaves refusals to the guard inside the stack (answered as
before) and marks the request (``BUFFERED``) so that guard neither reads nor counts its body again.
"""

from __future__ import annotations

import functools
import hmac
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from service.config import Settings
from service.errors import ApiError, ErrorShapeMiddleware, family_for_path, render

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
PublicCheck = Callable[[str, str], bool]

PROBES = frozenset({"/livez", "/readyz", "/healthz"})
JSON_TYPES = frozenset({"application/json", "application/vnd.bentoml+pickle", ""})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
UNAUTHORIZED = "missing or invalid API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
BAD_FRAMING = "send either Content-Length or Transfer-Encoding, not both"


class Refusal(ApiError):
    """A request refused by the guard, before the service sees it: an ``ApiError`` with extra headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: list[tuple[bytes, bytes]] | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(status, code, message, field=field)
        self.extra_headers = headers or []


async def _reply(scope: Scope, send: Send, refusal: Refusal) -> None:
    """Refuse in the shape of the route's API family (native, OpenAI or Cohere): ``service.errors.render``, with
    ``ApiError.headers()`` (``Retry-After`` on a 429 or 503)."""
    body = render(refusal, family_for_path(scope.get("path", "")))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(name.lower().encode(), value.encode()) for name, value in refusal.headers().items()]
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers + refusal.extra_headers})
    await send({"type": "http.response.body", "body": body})


def _is_internal(scope: Scope) -> bool:
    """Calls between services of one ``bentoml serve`` arrive over a Unix socket (no TCP peer address)."""
    server = scope.get("server")
    return server is None or server[1] is None


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((v for k, v in scope.get("headers", []) if k == name), None)


class ApiKeys:
    """``Authorization: Bearer <key>`` or ``x-api-key: <key>`` when keys are configured.

    Probes (and ``/metrics`` unless ``MMSEARCH_PROTECT_METRICS``) stay open; CORS preflights pass; keys are
    compared in constant time and never logged.
    """

    def __init__(self, settings: Settings, public: PublicCheck | None = None) -> None:
        self.keys = [k.encode() for k in settings.api_keys_list()]
        self.open_paths = PROBES if settings.protect_metrics else PROBES | {"/metrics"}
        self.public = public  # (method, path) -> no key needed (Search's page and its static assets)

    def _presented_ok(self, scope: Scope) -> bool:
        presented: bytes | None = None
        for name, value in scope.get("headers", []):
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                presented = value[7:].strip()
            elif name == b"x-api-key":
                presented = value.strip()
        if presented is None:
            return False
        ok = False
        for key in self.keys:  # check every key: timing doesn't reveal which one matched
            ok |= hmac.compare_digest(presented, key)
        return ok

    def check(self, scope: Scope) -> None:
        if not self.keys or scope.get("method") == "OPTIONS" or scope.get("path") in self.open_paths:
            return
        if self.public is not None and self.public(scope.get("method", ""), scope.get("path", "")):
            return
        if not self._presented_ok(scope):
            raise Refusal(401, "unauthorized", UNAUTHORIZED, [(b"www-authenticate", b'Bearer realm="mmsearch"')])


def check_framing(scope: Scope) -> None:
    """A request with both ``Content-Length`` and ``Transfer-Encoding`` is ambiguous (request smuggling behind a
    proxy that reads the other header): refused, never guessed, and the connection closed (where the next request
    starts is as ambiguous)."""
    names = {k for k, _ in scope.get("headers", [])}
    if b"transfer-encoding" in names and b"content-length" in names:
        raise Refusal(400, "bad_framing", BAD_FRAMING, [(b"connection", b"close")])


def check_content_type(scope: Scope) -> None:
    """JSON everywhere, multipart (with a boundary) only on ``/upload/*``: anything else is a clear 4xx.

    Without this, BentoML tries to parse e.g. a boundary-less multipart body for a JSON API and answers 500.
    """
    if scope.get("method") not in BODY_METHODS:
        return
    raw = (_header(scope, b"content-type") or b"").decode("latin-1")
    media_type = raw.split(";")[0].strip().lower()
    if scope.get("path", "").startswith("/upload/"):
        if media_type != "multipart/form-data":
            raise Refusal(415, "unsupported_media_type", "Content-Type must be multipart/form-data for uploads")
        if "boundary=" not in raw.lower():
            raise Refusal(400, "bad_content_type", "multipart/form-data needs a boundary parameter")
        return
    if media_type not in JSON_TYPES:
        raise Refusal(415, "unsupported_media_type", f"Content-Type must be application/json (got {media_type!r})")


EARLY_COUNT_BYTES = 256 * 1024
"""Bodies at least this large have their top-level lists counted before anything parses them."""
_STRUCTURE = re.compile(rb'["\[\]{},]')


def list_limits(settings: Settings) -> dict[str, dict[str, tuple[int, str]]]:
    """Per route, the list fields with a per-request limit: ``{path: {key: (limit, setting)}}``. One table for
    every service (a route means the same everywhere); the limits themselves are the settings."""
    inputs = (settings.max_inputs_per_request, "MMSEARCH_MAX_INPUTS_PER_REQUEST")
    documents = (settings.max_documents_per_request, "MMSEARCH_MAX_DOCUMENTS_PER_REQUEST")
    ids = (settings.max_ids_per_request, "MMSEARCH_MAX_IDS_PER_REQUEST")
    return {
        "/encode": {"inputs": inputs},
        "/v1/embeddings": {"input": inputs},
        "/rerank": {"documents": documents},
        "/v1/rerank": {"documents": documents},
        "/v2/rerank": {"documents": documents},
        "/upsert": {"documents": documents},
        "/get": {"ids": ids},
        "/delete": {"ids": ids},
    }


def _string_end(body: bytes, start: int) -> int:
    """Index just past the JSON string that opens at ``body[start]`` (``len(body)`` if it never closes)."""
    j = start
    while True:
        j = body.find(b'"', j + 1)  # memchr: long strings (base64 images) cost next to nothing
        if j < 0:
            return len(body)
        k = j
        while body[k - 1] == 0x5C:  # count the backslashes before the quote: odd means escaped
            k -= 1
        if (j - k) % 2 == 0:
            return j + 1


def oversized_list(body: bytes, limits: dict[str, tuple[int, str]], default: int) -> tuple[str, int, str] | None:
    """The first top-level list of the JSON object ``body`` that holds more elements than its limit (``limits``
    by key; any other key: ``default``), as ``(key, limit, setting)``; None if there is none.

    A scan of strings and brackets only, which stops as soon as a list passes its limit: refusing a
    300,000-element list costs what reading its first elements costs, where parsing it would hold the event loop
    (and the GIL) for seconds. Not a validator: malformed JSON is left to the parser.
    """
    depth = 0
    last_string = b""
    current: tuple[str, int, str] | None = None
    commas = 0
    pos = 0
    while True:
        match = _STRUCTURE.search(body, pos)
        if match is None:
            return None
        i = match.start()
        c = body[i]
        pos = i + 1
        if c == 0x22:  # '"': a key or a string value
            pos = _string_end(body, i)
            if depth == 1:
                last_string = body[i + 1 : pos - 1]
        elif c in (0x5B, 0x7B):  # '[' or '{'
            depth += 1
            if depth == 2 and c == 0x5B:
                key = last_string.decode("utf-8", "replace")
                limit, setting = limits.get(key, (default, "a list field"))
                current, commas = (key, limit, setting), 0
        elif c in (0x5D, 0x7D):  # ']' or '}'
            if depth == 2:
                current = None
            depth -= 1
        elif depth == 2 and current is not None:  # ',' between two elements of a top-level list
            commas += 1
            if commas >= current[1]:
                return current


class BodyBudget:
    """Bytes of request bodies being received by one worker, all requests together."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0

    def take(self, n: int) -> None:
        if self.used + n > self.capacity:
            raise Refusal(
                503,
                "busy_receiving",
                f"this worker is already receiving {self.capacity} bytes of request bodies "
                "(MMSEARCH_MAX_BUFFERED_BODY_BYTES); retry later",
            )
        self.used += n

    def give(self, n: int) -> None:
        self.used -= n


BUFFERED = "mmsearch.body_buffered"
"""Scope key: the front guard has read this request's body in full (and counts it against its budget)."""


class RequestGuard:
    """Refuse before reading (framing, key, type, declared size), then read the body under its limits.

    ``front=True``: the guard that runs before BentoML's stack. A request it would refuse passes through untouched
    (the guard inside the stack answers it, shaped, logged and counted like any answer); a request it admits has
    its body read in full first, and reaches the app only once the body is complete."""

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        on_refusal: Callable[[str], None] | None = None,
        public: PublicCheck | None = None,
        front: bool = False,
    ) -> None:
        self.app = app
        self.front = front
        self.keys = ApiKeys(settings, public)
        self.limit = settings.max_request_bytes
        self.budget = BodyBudget(settings.max_buffered_body_bytes)
        self.on_refusal = on_refusal
        self.list_limits = list_limits(settings)
        self.default_list_limit = max(limit for route in self.list_limits.values() for limit, _ in route.values())

    def _check_lists(self, scope: Scope, body: bytes) -> None:
        limits = self.list_limits.get(scope.get("path", ""))
        if limits is None or len(body) < EARLY_COUNT_BYTES:
            return
        over = oversized_list(body, limits, self.default_list_limit)
        if over is not None:
            key, limit, setting = over
            raise Refusal(413, "too_many_inputs", f"{key}: at most {limit} per request ({setting})", field=key)

    def _too_large(self) -> Refusal:
        return Refusal(
            413, "body_too_large", f"request body larger than {self.limit} bytes (MMSEARCH_MAX_REQUEST_BYTES)"
        )

    def _check(self, scope: Scope) -> None:
        check_framing(scope)
        self.keys.check(scope)
        check_content_type(scope)
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                raise Refusal(400, "bad_content_length", "invalid Content-Length header")
            if int(length) > self.limit:
                raise self._too_large()

    async def _refuse(self, scope: Scope, send: Send, refusal: Refusal) -> None:
        if self.on_refusal is not None:
            self.on_refusal(refusal.code)
        await _reply(scope, send, refusal)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_internal(scope):
            await self.app(scope, receive, send)
            return
        try:
            self._check(scope)
        except Refusal as refusal:
            if self.front:
                await self.app(scope, receive, send)
            else:
                await self._refuse(scope, send, refusal)
            return
        if scope.get("method") not in BODY_METHODS or scope.get(BUFFERED):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        taken = 0
        try:
            while True:
                msg = await receive()
                if msg["type"] != "http.request":
                    return  # the client went away (or a transport deadline cut it off): nobody to answer
                chunk = msg.get("body", b"")
                try:
                    if taken + len(chunk) > self.limit:
                        raise self._too_large()
                    self.budget.take(len(chunk))
                except Refusal as refusal:
                    await self._refuse(scope, send, refusal)
                    return
                taken += len(chunk)
                chunks.append(chunk)
                if not msg.get("more_body", False):
                    break
            body = b"".join(chunks)
            chunks.clear()
            try:
                self._check_lists(scope, body)
            except Refusal as refusal:
                await self._refuse(scope, send, refusal)
                return
            if self.front:
                scope[BUFFERED] = True
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
        finally:
            self.budget.give(taken)


def count_refusal(reason: str, service: str | None = None) -> None:
    """Count a refusal as ``mmsearch_refusals_total{service, reason}`` (``service``: this worker's by default)."""
    from service.metrics import get_metrics

    if service is None:
        from bentoml._internal.context import server_context

        service = server_context.service_name or "unknown"
    get_metrics().refusals.labels(service.lower(), reason).inc()


def install(service: Any, settings: Settings, public: PublicCheck | None = None) -> None:
    """Every per-process defence of a BentoML service: the request guard, the transport limits (read deadlines,
    minimum body rate, connection cap), log hygiene and worker lifetime. ``public``:
    requests (method, path) that need no API key."""
    from service import lifetime, logs, transport

    on_refusal = functools.partial(count_refusal, service=service.name)
    service.add_asgi_middleware(ErrorShapeMiddleware)  # outermost: it re-renders every error below it
    service.add_asgi_middleware(RequestGuard, settings=settings, on_refusal=on_refusal, public=public)
    front = functools.partial(RequestGuard, settings=settings, on_refusal=on_refusal, public=public, front=True)
    transport.install(settings, on_close=count_refusal, front=front)
    logs.install()
    lifetime.install()
