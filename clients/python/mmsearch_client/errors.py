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
import time

import httpx
from mmsearch_schema.errors import field_to_loc, loc_to_field, parse_error_body, parse_error_text

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
    "field_to_loc",
    "loc_to_field",
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
    message, code, field = parse_error_text(text)
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
