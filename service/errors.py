"""Errors the services answer, rendered in the shape of the API a route belongs to.

Three API families share the public port, and each answers errors the way its clients expect:

- **native** (``/search``, ``/encode``, ...): ``{"error": "...", "code": "...", "field": "..."}``;
- **OpenAI** (``/v1/embeddings``, ``/v1/models``): ``{"error": {"message", "type", "param", "code"}}``, which the
  ``openai`` SDK turns into exceptions carrying ``.code`` / ``.param``;
- **Cohere** (``/v1/rerank``, ``/v2/rerank``): ``{"id": "...", "message": "..."}``.

:func:`render` is the one place that turns an :class:`ApiError` into a response body for a family. Handlers raise
``ApiError`` (``handle_api_errors`` renders it); everything else that answers an error (BentoML's validation
errors, its plain-text 404/405, middleware refusals) is re-rendered at the edge by :class:`ErrorShapeMiddleware`,
so no route ever answers an error in a foreign shape.
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, ParamSpec, TypeVar

from mmsearch_schema.errors import field_to_loc, loc_to_field, parse_error_body
from starlette.responses import Response

log = logging.getLogger("mmsearch")

P = ParamSpec("P")
R = TypeVar("R")


class Family(enum.Enum):
    NATIVE = "native"
    OPENAI = "openai"
    COHERE = "cohere"


OPENAI_ROUTES = frozenset({"/v1/embeddings", "/v1/models"})
COHERE_ROUTES = frozenset({"/v1/rerank", "/v2/rerank"})

# Default machine codes for answers that carry none (plain-text 404/405, BentoML's own errors).
DEFAULT_CODES: dict[int, str] = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "overloaded",
    500: "internal_error",
    503: "unavailable",
    504: "deadline_exceeded",
}


def family_for_path(path: str) -> Family:
    """The API family a request path belongs to (trailing slashes ignored)."""
    path = path.rstrip("/") or "/"
    if path in OPENAI_ROUTES or path.startswith("/v1/models/"):
        return Family.OPENAI
    if path in COHERE_ROUTES:
        return Family.COHERE
    return Family.NATIVE


Loc = tuple[str | int, ...]
"""A field path as data: ``("documents", 3, "image")`` is ``documents[3].image``."""


class ApiError(Exception):
    """A request the service refuses, with the HTTP status, a machine code and the field at fault."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after

    def relocate(self, name: str, new: Callable[[int, Loc], Loc | None]) -> ApiError:
        """Move the error from the item ``name[k]`` of a dependency's request to where the caller sent it.

        ``new(k, rest)`` gets the item's index and the rest of the path (``("image",)`` for ``inputs[3].image``) and
        returns the caller's path, or ``None`` to leave the error as it is. The field is rewritten as a path, and
        the message's leading ``field:`` with it (the services' messages start with the field they name)."""
        loc: Loc = field_to_loc(self.field) if self.field else ()
        if len(loc) < 2 or loc[0] != name or not isinstance(loc[1], int):
            return self
        target = new(loc[1], loc[2:])
        if target is None:
            return self
        moved = loc_to_field(list(target)) or ""
        if self.message.startswith(f"{self.field}:"):
            self.message = moved + self.message[len(str(self.field)) :]
        self.field = moved
        return self

    def headers(self) -> dict[str, str]:
        if self.retry_after is not None or self.status in (429, 503):
            return {"Retry-After": str(max(1, round(self.retry_after or 1)))}
        return {}

    def to_response(self, family: Family = Family.NATIVE) -> Response:
        return Response(render(self, family), self.status, self.headers(), media_type="application/json")


def _openai_type(status: int) -> str:
    """OpenAI's ``error.type`` for a status (the SDK exposes it as ``exc.type``)."""
    if status in (401, 403):
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def render(err: ApiError, family: Family) -> bytes:
    """The JSON body of ``err`` in ``family``'s shape: the single definition of each API's error format."""
    body: dict[str, Any]
    if family is Family.OPENAI:
        kind = _openai_type(err.status)
        body = {"error": {"message": err.message, "type": kind, "param": err.field, "code": err.code}}
    elif family is Family.COHERE:
        # Cohere answers {"id", "message"}; its messages start with the kind of failure ("invalid request: ...").
        body = {"id": str(uuid.uuid4()), "message": err.message}
    else:
        body = {"error": err.message, "code": err.code, "field": err.field}
    return json.dumps(body, ensure_ascii=False).encode()


def parse_error(status: int, body: bytes, content_type: str = "application/json") -> ApiError:
    """Rebuild an ``ApiError`` from any error body a service or BentoML answers (any family, validation errors,
    plain text)."""
    text = body.decode("utf-8", errors="replace")
    parsed: Any = text
    if "json" in content_type or text.lstrip()[:1] in ("{", "["):
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = text
    message, code, field = parse_error_body(parsed)
    wrapped = _json_body(message)  # a dependency's answer re-raised as an exception's message, then wrapped
    if wrapped is not None:
        inner = parse_error_body(wrapped)
        message, code, field = inner[0] or message, inner[1] or code, inner[2] or field
    message = message or f"HTTP {status}"
    return ApiError(status, code or DEFAULT_CODES.get(status, "error"), message, field=field)


def _json_body(message: str | None) -> dict[str, Any] | None:
    """``message`` when it is itself an mmsearch error body (``{"error": "...", ...}``)."""
    if not message or not message.startswith("{"):
        return None
    try:
        body = json.loads(message)
    except ValueError:
        return None
    return body if isinstance(body, dict) and isinstance(body.get("error"), str) else None


def bad_request(message: str, field: str | None = None, code: str = "invalid_request") -> ApiError:
    return ApiError(400, code, message, field=field)


def unprocessable(message: str, field: str | None = None, code: str = "unprocessable") -> ApiError:
    return ApiError(422, code, message, field=field)


def too_many(field: str, limit: int, got: int, what: str = "inputs") -> ApiError:
    return ApiError(413, "too_many_inputs", f"{field}: at most {limit} {what} per request (got {got})", field=field)


def handle_api_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R | Response]]:
    """Turn ``ApiError`` (and media refusals) raised by an API method into their JSON response (native shape;
    the edge middleware re-renders it for OpenAI/Cohere routes)."""
    from service.media import MediaError

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | Response:
        try:
            return await fn(*args, **kwargs)
        except ApiError as e:
            return e.to_response()
        except MediaError as e:
            return ApiError(e.status, e.reason, e.message, field=e.field).to_response()

    return wrapper


def api_error_from_remote(exc: Exception) -> ApiError | None:
    """Rebuild an ``ApiError`` from a dependency's answer, or ``None`` when it is not an mmsearch error answer.

    BentoML's client raises ``BentoMLException(message=<response body>, error_code=<HTTP status>)``
    (``_bentoml_impl.client.proxy2.map_exception``): the body is parsed as the error body it is."""
    status = getattr(getattr(exc, "error_code", None), "value", None)
    body = getattr(exc, "message", None)
    if not isinstance(status, int) or status < 400 or not isinstance(body, str):
        return None
    if not body.lstrip().startswith(("{", "[")):
        return None
    err = parse_error(status, body.encode())
    return err if err.status < 500 or err.code != "internal_error" else None


# ----------------------------------------------------------------------------------------------- edge (ASGI)
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_ERROR_BODY = 1 << 20  # error bodies are small; a larger one passes through untouched
_KEEP_HEADERS = frozenset({b"retry-after", b"www-authenticate", b"allow", b"x-content-type-options", b"connection"})


def _describe_plain(status: int, text: str, scope: Scope) -> str | None:
    """A useful message for Starlette's bare ``Not Found`` / ``Method Not Allowed``."""
    method, path = scope.get("method", ""), scope.get("path", "")
    if status == 404 and text in ("Not Found", ""):
        return f"no route {method} {path} (the routes are listed at /docs.json)"
    if status == 405:
        return f"{method} is not allowed on {path}"
    return None


class ErrorShapeMiddleware:
    """Re-render every error answer (status >= 400, JSON or plain text) in the shape of the route's API family.

    Successful answers stream through untouched; only error bodies (small) are buffered.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        family = family_for_path(scope.get("path", ""))
        start: Message | None = None
        chunks: list[bytes] = []
        size = 0
        passthrough = False

        async def shaped_send(message: Message) -> None:
            nonlocal start, size, passthrough
            if message["type"] == "http.response.start":
                if message["status"] < 400:
                    passthrough = True
                    await send(message)
                else:
                    start = message
                return
            if passthrough or start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_ERROR_BODY:  # not an error body we produce: forward what we held, then stream
                passthrough = True
                await send(start)
                await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": True})
                if not message.get("more_body", False):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            if not message.get("more_body", False):
                await self._send_shaped(start, b"".join(chunks), scope, family, send)

        await self.app(scope, receive, shaped_send)

    @staticmethod
    async def _send_shaped(start: Message, body: bytes, scope: Scope, family: Family, send: Send) -> None:
        status = int(start["status"])
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() in _KEEP_HEADERS]
        content_type = next((v for k, v in start.get("headers", []) if k.lower() == b"content-type"), b"")
        err = parse_error(status, body, content_type.decode("latin-1"))
        if "json" not in content_type.decode("latin-1"):
            err.message = _describe_plain(status, body.decode("utf-8", "replace").strip(), scope) or err.message
        if status >= 500 and err.code in ("error", "internal_error"):
            err.message = "internal error: see the server log"  # never leak a traceback or an address
        if err.retry_after is None and not any(k.lower() == b"retry-after" for k, _ in headers):
            headers += [(k.lower().encode(), v.encode()) for k, v in err.headers().items()]
        out = render(err, family)
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": out, "more_body": False})
