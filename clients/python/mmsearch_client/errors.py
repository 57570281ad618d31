"""Exceptions raised by the mmsearch client.

Every exception derives from :class:`MMSearchError`. An HTTP error answer becomes an :class:`APIStatusError`
subclass chosen by status code; a transport failure becomes :class:`APIConnectionError` (or
:class:`APITimeoutError`). Timeouts of either kind are also builtin ``TimeoutError`` s.

    try:
        client.encode([mmsearch_client.Image.from_path("cat.png")])
    except mmsearch_client.BadRequestError as e:
        print(e.status_code, e.code, e.field)   # 422 not_an_image inputs[0].image
"""

from __future__ import annotations

import datetime
import email.utils
import json
import time
from typing import Any

import httpx

__all__ = [
    "APIConnectionError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "GatewayTimeoutError",
    "InternalServerError",
    "MMSearchError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RateLimitError",
    "RequestTimeoutError",
    "ServiceUnavailableError",
    "error_from_response",
    "parse_error_body",
    "parse_retry_after",
]


class MMSearchError(Exception):
    """Base class of every error this package raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class APIConnectionError(MMSearchError):
    """The request never got an HTTP answer (refused connection, reset, DNS failure, ...)."""

    def __init__(self, message: str = "connection error", *, request: httpx.Request | None = None) -> None:
        super().__init__(message)
        self.request = request


class APITimeoutError(APIConnectionError, TimeoutError):
    """The client-side timeout expired before the answer arrived."""

    def __init__(self, message: str = "request timed out", *, request: httpx.Request | None = None) -> None:
        super().__init__(message, request=request)


class APIResponseValidationError(MMSearchError):
    """A 2xx answer whose body does not match the expected schema (client and server versions differ?)."""

    def __init__(self, message: str, *, response: httpx.Response | None = None) -> None:
        super().__init__(message)
        self.response = response


class APIStatusError(MMSearchError):
    """An HTTP error answer.

    Attributes: ``status_code``; ``message`` (human-readable); ``code`` (machine-readable, e.g.
    ``"collection_not_found"``); ``field`` (the request path at fault, e.g. ``"inputs[3].image"``, or
    ``None``); ``retry_after`` (seconds, from the ``Retry-After`` header); ``response``.
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        code: str = "error",
        field: str | None = None,
        response: httpx.Response | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.field = field
        self.response = response
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f" at {self.field}" if self.field and not self.message.startswith(self.field) else ""
        return f"{self.status_code} {self.code}{where}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status_code={self.status_code}, code={self.code!r}, "
            f"field={self.field!r}, message={self.message!r})"
        )


class BadRequestError(APIStatusError):
    """400 or 422: the request is invalid; ``field`` names the offending part when known."""


class AuthenticationError(APIStatusError):
    """401 or 403: missing or wrong API key."""


class NotFoundError(APIStatusError):
    """404: e.g. the collection does not exist (``code="collection_not_found"``)."""


class ConflictError(APIStatusError):
    """409: e.g. the collection was built with another embedding model or dimension."""


class PayloadTooLargeError(APIStatusError):
    """413: too many inputs, or an image too large."""


class RateLimitError(APIStatusError):
    """429: the server is shedding load; retried automatically, honouring ``Retry-After``."""


class ServiceUnavailableError(APIStatusError):
    """503: overloaded or not ready (or a dependency is down); retried automatically."""


class RequestTimeoutError(APIStatusError, TimeoutError):
    """408: the server gave up on part of the request (e.g. fetching an image URL)."""


class GatewayTimeoutError(APIStatusError, TimeoutError):
    """504: the request's deadline (e.g. ``search(..., timeout=...)``) expired on the server."""


class InternalServerError(APIStatusError):
    """Any other 5xx."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    408: RequestTimeoutError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: BadRequestError,
    429: RateLimitError,
    503: ServiceUnavailableError,
    504: GatewayTimeoutError,
}


def _status_class(status: int) -> type[APIStatusError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status >= 500:
        return InternalServerError
    if 400 <= status < 500:
        return BadRequestError
    return APIStatusError


def _is_type_tag(segment: str) -> bool:
    """A pydantic ``loc`` segment naming a union member or validator (``str``, ``Item``, ``function-after[...]``)."""
    return (
        segment[:1].isupper()
        or "[" in segment
        or segment in {"str", "int", "float", "bool", "bytes", "list", "dict", "none", "body"}
    )


def loc_to_field(loc: Any) -> str | None:
    """``["inputs", 3, "Item", "image"]`` -> ``"inputs[3].image"`` (type tags and ``body`` dropped)."""
    if not isinstance(loc, (list, tuple)):
        return None
    out = ""
    for seg in loc:
        if isinstance(seg, bool):
            continue
        if isinstance(seg, int):
            out += f"[{seg}]"
        elif isinstance(seg, str) and seg and not _is_type_tag(seg):
            out += f".{seg}" if out else seg
    return out or None


def field_to_loc(field: str) -> tuple[str | int, ...]:
    """``"documents[3].image"`` -> ``("documents", 3, "image")``: the inverse of :func:`loc_to_field` for the paths
    the services name (dotted names and ``[index]`` subscripts); anything else is one opaque name."""
    loc: list[str | int] = []
    for part in field.split("."):
        name, _, subscripts = part.partition("[")
        if name:
            loc.append(name)
        for sub in subscripts.split("[") if subscripts else ():
            index = sub.removesuffix("]")
            if not index.isdigit() or not sub.endswith("]"):
                return (field,)
            loc.append(int(index))
    return tuple(loc)


def _from_mapping(body: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    message: str | None = None
    code = body.get("code") if isinstance(body.get("code"), str) else None
    field = next((v for v in (body.get("field"), body.get("param")) if isinstance(v, str)), None)  # OpenAI: param
    err = body.get("error", body.get("message"))
    detail = body.get("detail")
    if isinstance(err, str):
        message = err
    elif isinstance(err, dict):
        return _from_mapping(err)
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        message, field = _validation_detail(detail, field, message)
        code = code or "validation_error"
    elif isinstance(detail, str) and message is None:
        message = detail
    return message, code, field


def _validation_detail(detail: list[Any], field: str | None, message: str | None) -> tuple[str | None, str | None]:
    """BentoML's pydantic validation errors (``{"error": "...", "detail": [{"loc": [...], "msg": ...}]}``): the
    first one's field and message, with how many more there are."""
    first = detail[0]
    field = field or loc_to_field(first.get("loc"))
    msg = first.get("msg")
    if isinstance(msg, str):
        extra = f" (+{len(detail) - 1} more)" if len(detail) > 1 else ""
        message = f"{field}: {msg}{extra}" if field else f"{msg}{extra}"
    return message, field


def _json_or_none(text: str) -> Any:
    text = text.strip()
    if not text or text[0] not in '[{"':
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def parse_error_body(body: Any) -> tuple[str | None, str | None, str | None]:
    """Extract ``(message, code, field)`` from any error body shape the services answer.

    Handles the mmsearch ``{"error", "code", "field"}`` body, OpenAI's ``{"error": {"message", "param",
    "code"}}``, Cohere's ``{"message"}``, BentoML validation errors (``{"error", "detail": [{"loc", "msg"}]}``),
    BentoML's ``[{"error": ...}]`` list, a bare JSON string, and ``{"detail": "..."}``. Unknown shapes give
    ``(None, None, None)``.
    """
    if isinstance(body, dict):
        return _from_mapping(body)
    if isinstance(body, list):
        for entry in body:
            parsed = parse_error_body(entry)
            if parsed[0] is not None:
                return parsed
        return None, None, None
    if isinstance(body, str) and body.strip():
        nested = _json_or_none(body)
        if nested is not None and not isinstance(nested, str):
            return parse_error_body(nested)
        return body.strip(), None, None
    return None, None, None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date); ``None`` if absent/invalid."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=datetime.timezone.utc)  # noqa: UP017 (py3.10)
        seconds = parsed.timestamp() - (time.time() if now is None else now)
    if seconds != seconds or seconds == float("inf"):  # NaN, inf
        return None
    return max(0.0, seconds)


_DEFAULT_CODES: dict[int, str] = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    408: "timeout",
    409: "conflict",
    413: "too_large",
    422: "unprocessable",
    429: "rate_limited",
    500: "internal_error",
    502: "bad_gateway",
    503: "unavailable",
    504: "deadline_exceeded",
}


def error_from_response(response: httpx.Response) -> APIStatusError:
    """Build the right :class:`APIStatusError` subclass for an error response (the body must be read)."""
    status = response.status_code
    try:
        text = response.text
    except (httpx.ResponseNotRead, UnicodeDecodeError):
        text = ""
    body: Any = _json_or_none(text)
    if body is None:
        body = text
    message, code, field = parse_error_body(body)
    if not message:
        message = response.reason_phrase or f"HTTP {status}"
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    cls = _status_class(status)
    return cls(
        status,
        message[:2000],
        code or _DEFAULT_CODES.get(status, "error"),
        field,
        response=response,
        retry_after=retry_after,
    )
