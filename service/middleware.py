"""ASGI middleware shared by the services: API-key authentication and the request body size limit.

Both are pure ASGI (no body buffering for requests that declare their size), added to every service with
``Service.add_asgi_middleware``.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from service.config import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PROBES = frozenset({"/livez", "/readyz", "/healthz"})


async def _reply(send: Send, status: int, code: str, message: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"error": message, "code": code, "field": None}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _is_internal(scope: Scope) -> bool:
    """Calls between services of one ``bentoml serve`` arrive over a Unix socket (no TCP peer address)."""
    server = scope.get("server")
    return server is None or server[1] is None


class ApiKeyMiddleware:
    """Require ``Authorization: Bearer <key>`` or ``x-api-key: <key>`` when keys are configured.

    Probes (and ``/metrics`` unless ``MMSEARCH_PROTECT_METRICS``) stay open; CORS preflights pass; keys are
    compared in constant time and never logged.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.keys = [k.encode() for k in settings.api_keys_list()]
        self.open_paths = PROBES if settings.protect_metrics else PROBES | {"/metrics"}

    def _authorized(self, scope: Scope) -> bool:
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not self.keys
            or scope.get("method") == "OPTIONS"
            or scope.get("path") in self.open_paths
            or _is_internal(scope)
            or self._authorized(scope)
        ):
            await self.app(scope, receive, send)
            return
        await _reply(
            send,
            401,
            "unauthorized",
            "missing or invalid API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
            [(b"www-authenticate", b'Bearer realm="mmsearch"')],
        )


class BodyLimitMiddleware:
    """Answer 413 for bodies over ``MMSEARCH_MAX_REQUEST_BYTES`` (and 415/400 for a wrong Content-Type) before the
    service parses them."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.limit = settings.max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_internal(scope):
            await self.app(scope, receive, send)
            return
        refusal = _check_content_type(scope)
        if refusal is not None:
            await _reply(send, *refusal, [])
            return
        message = f"request body larger than {self.limit} bytes (MMSEARCH_MAX_REQUEST_BYTES)"
        length = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _reply(send, 400, "bad_content_length", "invalid Content-Length header", [])
                return
            if declared > self.limit:
                await _reply(send, 413, "body_too_large", message, [])
                return
            await self.app(scope, receive, send)
            return
        # No declared length (chunked): buffer up to the limit, then replay the body to the service.
        chunks: list[bytes] = []
        received = 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            chunk = msg.get("body", b"")
            received += len(chunk)
            if received > self.limit:
                await _reply(send, 413, "body_too_large", message, [])
                return
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


JSON_TYPES = frozenset({"application/json", "application/vnd.bentoml+pickle", ""})


def _check_content_type(scope: Scope) -> tuple[int, str, str] | None:
    """JSON everywhere, multipart (with a boundary) only on ``/upload/*``: anything else is a clear 4xx.

    Without this, BentoML tries to parse e.g. a boundary-less multipart body for a JSON API and answers 500.
    """
    if scope.get("method") not in ("POST", "PUT", "PATCH"):
        return None
    raw = next((v for k, v in scope.get("headers", []) if k == b"content-type"), b"").decode("latin-1")
    media_type = raw.split(";")[0].strip().lower()
    path = scope.get("path", "")
    if path.startswith("/upload/"):
        if media_type != "multipart/form-data":
            return 415, "unsupported_media_type", "Content-Type must be multipart/form-data for uploads"
        if "boundary=" not in raw.lower():
            return 400, "bad_content_type", "multipart/form-data needs a boundary parameter"
        return None
    if media_type not in JSON_TYPES:
        return 415, "unsupported_media_type", f"Content-Type must be application/json (got {media_type!r})"
    return None


def install(service: Any, settings: Settings) -> None:
    """Add the body limit and API-key middleware to a BentoML service."""
    service.add_asgi_middleware(BodyLimitMiddleware, settings=settings)
    service.add_asgi_middleware(ApiKeyMiddleware, settings=settings)
