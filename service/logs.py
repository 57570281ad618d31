"""Log hygiene for the services: one concise line per event, no request content, no 4xx at ERROR, floods capped.

BentoML logs every request it refuses (``Exception on /upsert [POST]``) at ERROR with a full traceback, and a
pydantic ``ValidationError`` in that traceback quotes the rejected input; a client that drops mid-request gives a
traceback each time. ``ClientErrorFilter`` turns records whose exception is a client's fault into one INFO line
naming the route, status and exception type only. ``RateLimitFilter`` lets at most ``burst`` records with the same
template through per ``period`` seconds and then says how many it dropped, so no client can flood the log.
"""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["ClientErrorFilter", "RateLimitFilter", "client_status", "install"]

LOGGERS = ("", "bentoml", "uvicorn", "uvicorn.error", "circus", "mmsearch")


def client_status(exc: BaseException) -> int | None:
    """The 4xx status a request failing with ``exc`` deserved (None: a server-side error)."""
    from pydantic import ValidationError
    from starlette.requests import ClientDisconnect

    if isinstance(exc, ValidationError):
        return 400
    if isinstance(exc, ClientDisconnect):
        return 499
    status = getattr(getattr(exc, "error_code", None), "value", None)
    if isinstance(status, int) and 400 <= status < 500:
        return status
    return None


class ClientErrorFilter(logging.Filter):
    """Client errors (4xx, disconnects) become one INFO line without traceback or input values."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or record.levelno < logging.WARNING:
            return True
        status = client_status(exc)
        if status is None:
            return True
        record.msg = f"{record.getMessage()}: {status} ({type(exc).__name__})"
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        record.levelno = logging.INFO
        record.levelname = "INFO"
        record.mmsearch_client_error = True  # rate-limited like warnings
        return True


class RateLimitFilter(logging.Filter):
    """At most ``burst`` warnings/errors (and client-error lines) per (logger, template) per ``period`` seconds;
    the next one let through says how many were dropped meanwhile."""

    def __init__(self, burst: int = 5, period: float = 60.0) -> None:
        super().__init__()
        self.burst = burst
        self.period = period
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str], list[float | int]] = {}  # key -> [window start, passed, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING and not getattr(record, "mmsearch_client_error", False):
            return True  # access logs and other INFO lines: one per request, by design
        key = (record.name, str(record.msg)[:200])
        now = time.monotonic()
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window[0] >= self.period:
                dropped = int(window[2]) if window else 0
                self._windows[key] = [now, 1, 0]
                if len(self._windows) > 1000:  # bounded: forget the oldest windows
                    for stale in sorted(self._windows, key=lambda k: self._windows[k][0])[:500]:
                        self._windows.pop(stale, None)
                if dropped:
                    record.msg = f"{record.getMessage()} [{dropped} similar lines suppressed]"
                    record.args = ()
                return True
            if window[1] < self.burst:
                window[1] += 1
                return True
            window[2] += 1
            return False


_installed = False


def install(burst: int = 5, period: float = 60.0) -> None:
    """Add the filters to every handler of the server's loggers (idempotent). Handler filters see the records of
    child loggers too, which logger filters would not."""
    global _installed
    if _installed:
        return
    _installed = True
    client, limit = ClientErrorFilter(), RateLimitFilter(burst, period)
    seen: set[int] = set()
    for name in LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if id(handler) not in seen:
                seen.add(id(handler))
                # first: BentoML's own handler filter formats the level name into the record
                handler.filters[:0] = [client, limit]
