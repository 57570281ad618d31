"""Connection-level defences of the HTTP server: read deadlines, a minimum body rate and a connection cap.

BentoML serves every service with uvicorn's h11 protocol. uvicorn has no deadline for a request's headers or body:
a client that sends them a byte at a time holds its connection (and, once the headers are in, a slot of BentoML's
``max_concurrency``) for as long as it likes. ASGI middleware cannot help: the app is only called once the headers
are complete. So this module subclasses the h11 protocol (``GuardedH11Protocol``) and ``install()`` makes it the
``http="auto"`` protocol of uvicorn in this process (BentoML builds the ``uvicorn.Config`` itself, after importing
the service module). Per connection:

* **headers** must arrive within ``MMSEARCH_HEADER_TIMEOUT_S`` of their first byte (or of the connection opening);
* **a body** must arrive within ``MMSEARCH_BODY_TIMEOUT_S`` plus one second per ``MMSEARCH_BODY_MIN_RATE`` bytes
  received so far (a minimum average rate after an initial allowance). Time the server itself stops reading (flow
  control while the app is busy) is not held against the client;
* past a deadline the client gets ``408`` (``Connection: close``) and the connection is closed; the app sees a
  disconnect (``service.middleware`` then returns quietly, nothing is logged per connection);
* **at most** ``MMSEARCH_MAX_CONNECTIONS`` client connections per worker. Beyond the cap, a newcomer whose
  complete request head is already in the socket (a well-behaved client: it sends its request at once) closes the
  latest connection still sending its request, or an idle keep-alive one (the latest of a random sample of
  ``EVICT_SAMPLE`` when there are more); any other newcomer is closed at once.
  (Behind TLS terminated in uvicorn the head cannot be peeked: every newcomer beyond the cap is closed.)

**The app sees a request only once its body is complete** when ``install()`` is given a ``front``: that wrapper
(``service.middleware.RequestGuard(front=True)``) runs in front of the app uvicorn loaded (BentoML's whole ASGI
stack) and reads the body of every request it admits before calling the app, within the request and per-worker
body limits. A client that drips its body therefore costs a read buffer, never a pass through BentoML's traffic
control, tracing, metrics and access log, nor a slot of its ``max_concurrency``; the body deadline cuts it before
the app is called (as nginx's request buffering does).

Connections over the Unix sockets BentoML uses between the services of one ``bentoml serve`` are exempt.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.config import Settings

__all__ = ["GuardedH11Protocol", "TransportLimits", "install"]

ASGIWrapper = Callable[[Any], Any]

IMPORT_PATH = "service.transport:GuardedH11Protocol"
PEEK_BYTES = 16 * 1024
EVICT_SAMPLE = 64
CAP_GRACE_S = 0.5
"""Over the cap, how long a newcomer without a complete request head in its socket gets before it is closed (its
request is served meanwhile). Long enough for a well-behaved client on a loaded machine to send its head: at
0.05 s, 2 of 17 well-behaved requests were reset during the slow-client test at load 5-7."""
LINGER_S = 2.0
LINGER_BYTES = 4 * 1024 * 1024
"""After answering a request whose body was not read (a refusal), the server half-closes and discards what the
client still sends for at most this long / this much, so the client can read the answer before the connection is
reset (closing with unread data makes the kernel send a RST, which can destroy the response in flight)."""


@dataclass(frozen=True)
class TransportLimits:
    header_timeout_s: float
    body_timeout_s: float
    body_min_rate: int
    max_connections: int

    @classmethod
    def from_settings(cls, s: Settings) -> TransportLimits:
        return cls(s.header_timeout_s, s.body_timeout_s, s.body_min_rate, s.max_connections)


def _timeout_response(phase: str, limits: TransportLimits) -> bytes:
    if phase == "headers":
        message = f"request headers not received within {limits.header_timeout_s:g} s (MMSEARCH_HEADER_TIMEOUT_S)"
    else:
        message = (
            f"request body not received within {limits.body_timeout_s:g} s plus 1 s per {limits.body_min_rate} "
            "bytes (MMSEARCH_BODY_TIMEOUT_S, MMSEARCH_BODY_MIN_RATE)"
        )
    body = json.dumps({"error": message, "code": "request_timeout", "field": None}).encode()
    head = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    return head + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with header/body read deadlines, a minimum body rate and a connection cap."""

    limits: ClassVar[TransportLimits | None] = None
    _live: ClassVar[set[GuardedH11Protocol]] = set()
    """Guarded (client) connections open in this process."""
    on_close: ClassVar[list[Callable[[str], None]]] = []
    """Called with the reason (``header_timeout``, ``body_timeout``, ``evicted``, ``over_capacity``) of each
    connection this module closes (a Prometheus counter in the services)."""
    front: ClassVar[ASGIWrapper | None] = None
    """Wraps the loaded app (once per app): the stage that reads a request's body before the app is called."""
    _fronted: ClassVar[tuple[Any, Any] | None] = None  # (loaded app, wrapped app)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app = self._front_of(self.app)
        self._guarded = False
        self._phase_started = 0.0  # monotonic start of the current read phase (headers or body)
        self._phase_bytes = 0
        self._paused_at: float | None = None  # when flow control paused reading (server-side wait)
        self._timer: asyncio.TimerHandle | None = None
        self._idle_since: float | None = None  # keep-alive, waiting for the next request's first byte
        self._linger_left: int | None = None  # bytes still discarded after a refusal (None: not lingering)

    @classmethod
    def _front_of(cls, app: Any) -> Any:
        if cls.front is None:
            return app
        if cls._fronted is None or cls._fronted[0] is not app:
            cls._fronted = (app, cls.front(app))
        return cls._fronted[1]

    # --- phases ---------------------------------------------------------------------------------------------

    def _phase(self) -> str:
        """``headers``, ``body``, ``served`` (request in, response pending) or ``idle`` (keep-alive)."""
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            return "body"
        if state is h11.IDLE:
            return "idle" if self._idle_since is not None else "headers"
        return "served"

    def _lateness(self, now: float) -> float:
        """How far behind a well-behaved client this connection is (seconds): the eviction order at the cap.

        A request's headers arrive within milliseconds and its body at least at the minimum rate, so a
        well-behaved client is never late; idle keep-alive connections go first; connections being served never.
        """
        limits = self.limits
        assert limits is not None
        phase = self._phase()
        if phase == "idle":
            assert self._idle_since is not None
            return now - self._idle_since + limits.header_timeout_s
        if phase == "headers":
            return now - self._phase_started
        if phase == "body":
            return now - self._phase_started - self._phase_bytes / limits.body_min_rate
        return -float("inf")

    def _deadline(self) -> float | None:
        limits = self.limits
        assert limits is not None
        phase = self._phase()
        if phase == "headers":
            return self._phase_started + limits.header_timeout_s
        if phase == "body":
            return self._phase_started + limits.body_timeout_s + self._phase_bytes / limits.body_min_rate
        return None

    def _start_phase(self, now: float) -> None:
        self._phase_started = now
        self._phase_bytes = 0
        self._paused_at = None
        self._rearm(now)

    def _rearm(self, now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self._deadline()
        if deadline is not None and not self.transport.is_closing():
            self._timer = self.loop.call_later(max(0.0, deadline - now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = time.monotonic()
        if self.flow is not None and self.flow.read_paused:
            # The server stopped reading (the app has not consumed the body yet): not the client's fault.
            if self._paused_at is None:
                self._paused_at = now
            self._timer = self.loop.call_later(1.0, self._on_timer)
            return
        if self._paused_at is not None:  # credit the time reads were paused
            self._phase_started += now - self._paused_at
            self._paused_at = None
        deadline = self._deadline()
        if deadline is None:
            return
        if now < deadline:
            self._rearm(now)
            return
        phase = self._phase()
        self._close("header_timeout" if phase == "headers" else "body_timeout", respond=phase)

    def _close(self, reason: str, respond: str | None = None) -> None:
        """Close this connection (answering 408 first when it timed out while sending a request)."""
        GuardedH11Protocol._live.discard(self)
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            if self.cycle.response_started:
                respond = None  # the app already answers; just cut the connection
            self.cycle.disconnected = True  # the app sees http.disconnect; nothing more is sent by it
            self.cycle.message_event.set()
        if respond is not None and self.limits is not None and (self._phase_bytes or respond == "body"):
            self.transport.write(_timeout_response(respond, self.limits))
        self.transport.close()
        for callback in self.on_close:
            callback(reason)

    # --- uvicorn protocol hooks -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        internal = self.server is None or self.server[1] is None
        self._guarded = self.limits is not None and not internal
        if not self._guarded:
            return
        GuardedH11Protocol._live.add(self)
        now = time.monotonic()
        self._start_phase(now)
        self._enforce_cap(now)

    def _request_buffered(self) -> bool:
        """Whether a complete request head already waits in the socket (peeked, not read): what a client that
        sends its request at once looks like when it is accepted, and what a slow client never looks like."""
        sock = self.transport.get_extra_info("socket")  # asyncio's wrapper: no recv(); peek through a dup
        if sock is None:
            return False
        try:
            with socket.fromfd(sock.fileno(), sock.family, sock.type) as dup:
                head = dup.recv(PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:
            return False
        return b"\r\n\r\n" in head

    def _enforce_cap(self, now: float) -> None:
        """Over ``max_connections``: a newcomer whose complete request head is in the socket (now, or within
        ``CAP_GRACE_S``) takes the place of the latest connection (see ``_lateness``); any other newcomer is closed
        (cheap: no churn between slow clients that keep reconnecting). So a well-behaved client gets in however
        many slow ones wait."""
        limits = self.limits
        assert limits is not None
        if len(GuardedH11Protocol._live) <= limits.max_connections:
            return
        if self._request_buffered():
            self._evict_for_self(now)
        else:
            self.loop.call_later(CAP_GRACE_S, self._recheck_cap)

    def _recheck_cap(self) -> None:
        limits = self.limits
        assert limits is not None
        if self.transport.is_closing() or len(GuardedH11Protocol._live) <= limits.max_connections:
            return
        if self.conn.their_state is not h11.IDLE or self._request_buffered():
            self._evict_for_self(time.monotonic())
        else:
            self._close("over_capacity")

    def _evict_for_self(self, now: float) -> None:
        """Close the latest of (a random sample of ``EVICT_SAMPLE``) other connections. Scanning all of them
        cost ~1 ms per newcomer at 1,024 connections, the transport's largest cost under the slow-client attack
        (py-spy, bench/RESULTS.md 13); the latest of 64 random ones is among the latest 5 % with probability
        1 - 0.95**64 > 0.96, and connections being served or sending at the minimum rate are never late."""
        live = GuardedH11Protocol._live
        others = random.sample(list(live), EVICT_SAMPLE) if len(live) > EVICT_SAMPLE + 1 else live
        victim = max((c for c in others if c is not self), key=lambda c: c._lateness(now), default=None)
        if victim is None or victim._lateness(now) == -float("inf"):
            self._close("over_capacity")  # every other connection is being served
        else:
            victim._close("evicted")

    def data_received(self, data: bytes) -> None:
        if self._linger_left is not None:  # the rest of a refused request: discarded, never parsed
            self._linger_left -= len(data)
            if self._linger_left < 0:
                self.transport.close()
            return
        if not self._guarded:
            super().data_received(data)
            return
        now = time.monotonic()
        if self._idle_since is not None:  # first byte of the next request on a keep-alive connection
            self._idle_since = None
            self._start_phase(now)
        before = self.conn.their_state
        self._phase_bytes += len(data)
        super().data_received(data)
        after = self.conn.their_state
        if after is not before:
            if after is h11.SEND_BODY:
                self._start_phase(now)  # headers complete: the body clock starts, crediting the body bytes
                end = data.find(b"\r\n\r\n")  # that came with the end of the head
                if end >= 0:
                    self._phase_bytes = len(data) - end - 4
                    self._rearm(now)
            elif self._timer is not None and self._deadline() is None:
                self._timer.cancel()
                self._timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self.conn.their_state is h11.SEND_BODY:
            self._linger()
        elif (
            self._guarded and self.conn.their_state is h11.IDLE
        ):  # ready for the next request: idle until its first byte
            self._idle_since = time.monotonic()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _linger(self) -> None:
        """Answered before the body was read (a refusal): the rest of the body is not wanted. Half-close, discard
        what still arrives (bounded by ``LINGER_S`` / ``LINGER_BYTES``), then close."""
        self._unset_keepalive_if_required()
        if self._timer is not None:
            self._timer.cancel()
        self._linger_left = LINGER_BYTES
        if self.transport.can_write_eof():
            try:
                self.transport.write_eof()
            except OSError:  # the client is already gone (ENOTCONN): nothing to linger for
                self.transport.close()
                return
        self._timer = self.loop.call_later(LINGER_S, self.transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        GuardedH11Protocol._live.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)


def install(
    settings: Settings, on_close: Callable[[str], None] | None = None, front: ASGIWrapper | None = None
) -> None:
    """Make ``GuardedH11Protocol`` uvicorn's protocol in this process, with limits from ``settings``; ``front``
    wraps the app uvicorn loaded (the stage that reads bodies before the app is called; the latest one given).

    Idempotent. Must run before uvicorn loads its config (BentoML does that after importing the service module).
    """
    from uvicorn import config as uvicorn_config

    GuardedH11Protocol.limits = TransportLimits.from_settings(settings)
    if front is not None:
        GuardedH11Protocol.front = front
        GuardedH11Protocol._fronted = None
    if on_close is not None and on_close not in GuardedH11Protocol.on_close:
        GuardedH11Protocol.on_close.append(on_close)
    uvicorn_config.HTTP_PROTOCOLS["auto"] = IMPORT_PATH
    uvicorn_config.HTTP_PROTOCOLS["h11"] = IMPORT_PATH
