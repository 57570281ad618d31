"""Errors the services answer, and the one decorator that turns them into JSON responses.

Every refusal is an ``ErrorBody`` (``{"error", "code", "field"}``) with a 4xx status (or 503/429 with
``Retry-After`` when overloaded). Unexpected exceptions still become BentoML's generic 500.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from mmsearch_client.schemas import ErrorBody
from starlette.responses import JSONResponse

log = logging.getLogger("mmsearch")

P = ParamSpec("P")
R = TypeVar("R")


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

    def to_response(self) -> JSONResponse:
        headers = {}
        if self.retry_after is not None or self.status in (429, 503):
            headers["Retry-After"] = str(max(1, round(self.retry_after or 1)))
        body = ErrorBody(error=self.message, code=self.code, field=self.field)
        return JSONResponse(body.model_dump(), status_code=self.status, headers=headers)


def bad_request(message: str, field: str | None = None, code: str = "invalid_request") -> ApiError:
    return ApiError(400, code, message, field=field)


def unprocessable(message: str, field: str | None = None, code: str = "unprocessable") -> ApiError:
    return ApiError(422, code, message, field=field)


def too_many(field: str, limit: int, got: int, what: str = "inputs") -> ApiError:
    return ApiError(413, "too_many_inputs", f"{field}: at most {limit} {what} per request (got {got})", field=field)


def handle_api_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R | JSONResponse]]:
    """Turn ``ApiError`` (and media refusals) raised by an API method into their JSON response."""
    from service.media import MediaError

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | JSONResponse:
        try:
            return await fn(*args, **kwargs)
        except ApiError as e:
            return e.to_response()
        except MediaError as e:
            return ApiError(e.status, e.reason, e.message, field=e.field).to_response()

    return wrapper


def api_error_from_remote(exc: Exception) -> ApiError | None:
    """Rebuild an ``ApiError`` from a dependency's error (BentoML raises it with the JSON body as message)."""
    import json

    status = getattr(getattr(exc, "error_code", None), "value", None)
    if not isinstance(status, int):
        return None
    try:
        body: Any = json.loads(str(exc))
        parsed = ErrorBody.model_validate(body)
    except (ValueError, TypeError):
        return None
    return ApiError(status, parsed.code, parsed.error, field=parsed.field)
