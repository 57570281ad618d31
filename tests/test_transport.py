"""The connection-level limits (service.transport) in a real uvicorn on loopback, driven by raw sockets: header and
body deadlines, the minimum body rate, the connection cap (slowest evicted), the bounded linger after a refusal, and
the front guard that reads a body in full before the app (BentoML's stack, here a recorder) is called. Deadlines
here are short (0.5 s) so each case takes about a second."""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from bench.support.servers import free_port
from service import transport
from service.config import Settings
from service.middleware import RequestGuard

CLOSED: list[str] = []
LIMITS = Settings(
    header_timeout_s=0.5,
    body_timeout_s=0.5,
    body_min_rate=1000,
    max_connections=8,
    api_keys="k",
    max_request_bytes=48 * 1024,
    max_buffered_body_bytes=64 * 1024,
)
CALLS: dict[str, list[int]] = {}
LOOPS: list[asyncio.AbstractEventLoop] = []  # the server's event loop (the `port` fixture's)
"""Per request target: the body size of each call of the app behind the front guard (BentoML's stack, in a
service): a target absent here never reached it."""


async def _echo(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    size = messages = 0
    while True:
        msg = await receive()
        size += len(msg.get("body", b""))
        messages += 1
        if not msg.get("more_body"):
            break
    CALLS.setdefault(scope["path"], []).append(size)
    body = f"ok {size} in {messages}".encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _stack(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    """What BentoML's stack is in a service: entered (recorded) before the guard inside it reads anything."""
    if scope["type"] == "http":
        CALLS.setdefault(scope["path"], [])
    await RequestGuard(_echo, LIMITS)(scope, receive, send)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    front = functools.partial(RequestGuard, settings=LIMITS, front=True)
    transport.install(LIMITS, on_close=CLOSED.append, front=front)
    app = _stack
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    LOOPS[:] = [next(iter(server.servers)).get_loop()]
    yield server.config.port
    server.should_exit = True
    thread.join(10)


def _sent_at_once(port: int, request: bytes) -> socket.socket:
    """A client that sends its whole request at once, as the server sees one: connected and sent while the server's
    event loop is held, so the head is in the socket when the connection is accepted. Otherwise, with the GIL shared
    with the server's thread, the accept can fall between connect and send, and the newcomer is treated as a
    possible slow client (rechecked after ``CAP_GRACE_S``, by when the slow ones have timed out)."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        held.set()
        release.wait(5)

    LOOPS[0].call_soon_threadsafe(hold)
    assert held.wait(5), "the server's event loop never ran"
    try:
        s = _conn(port)
        s.sendall(request)
    finally:
        release.set()
    return s


def _conn(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(5)
    return s


def _read_all(s: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return out


def _read_response(s: socket.socket) -> bytes:
    """One response on a keep-alive connection: its head, then content-length bytes."""
    out = b""
    while b"\r\n\r\n" not in out:
        out += s.recv(4096)
    head, _, body = out.partition(b"\r\n\r\n")
    length = int(next(v for k, v in (h.split(b": ", 1) for h in head.split(b"\r\n")[1:]) if k == b"content-length"))
    while len(body) < length:
        body += s.recv(4096)
    return head + b"\r\n\r\n" + body


HEAD = b"POST /x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer k\r\nContent-Type: application/json\r\n"


def test_headers_must_arrive_within_the_deadline(port: int) -> None:
    s = _conn(port)
    t0 = time.monotonic()
    s.sendall(b"POST /x HTTP/1.1\r\nHost: t\r\n")  # and never the end of the headers
    reply = _read_all(s)
    assert reply.startswith(b"HTTP/1.1 408") and b"MMSEARCH_HEADER_TIMEOUT_S" in reply
    assert 0.4 < time.monotonic() - t0 < 3
    silent = _conn(port)  # a connection that sends nothing is closed without an answer
    assert _read_all(silent) == b""


def test_slow_body_is_cut_and_a_steady_one_is_not(port: int) -> None:
    s = _conn(port)
    s.sendall(HEAD + b"Content-Length: 10000\r\n\r\n{")
    t0 = time.monotonic()
    with pytest.raises(OSError):
        for _ in range(40):  # 1 byte per 0.1 s: far below 1000 bytes/s
            time.sleep(0.1)
            s.sendall(b" ")
    assert time.monotonic() - t0 < 3
    steady = _conn(port)  # 3,000 bytes/s for 2 s: four times the initial allowance, never below the rate
    steady.sendall(HEAD + b"Content-Length: 6000\r\n\r\n")
    for _ in range(20):
        time.sleep(0.1)
        steady.sendall(b" " * 300)
    assert _read_response(steady).startswith(b"HTTP/1.1 200")


def test_the_slowest_connection_is_evicted_at_the_cap(port: int) -> None:
    CLOSED.clear()
    slow = [_conn(port) for _ in range(8)]
    for s in slow:
        s.sendall(b"POST /x HTTP/1.1\r\n")  # all stuck in their headers
    time.sleep(0.2)  # late enough to be evicted (a quarter of the header deadline), not yet timed out
    fresh = _sent_at_once(port, HEAD + b"Content-Length: 2\r\n\r\n{}")
    assert _read_response(fresh).startswith(b"HTTP/1.1 200")  # served although the cap was reached
    assert "evicted" in CLOSED
    for s in slow:
        s.close()


def test_a_sampled_eviction_also_makes_room(port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over ``EVICT_SAMPLE`` connections, the latest of a random sample is closed (here 2 of 8, all late)."""
    monkeypatch.setattr(transport, "EVICT_SAMPLE", 2)
    CLOSED.clear()
    slow = [_conn(port) for _ in range(8)]
    for s in slow:
        s.sendall(b"POST /x HTTP/1.1\r\n")
    time.sleep(0.2)
    fresh = _sent_at_once(port, HEAD + b"Content-Length: 2\r\n\r\n{}")
    assert _read_response(fresh).startswith(b"HTTP/1.1 200")
    assert CLOSED.count("evicted") >= 1
    for s in slow:
        s.close()


def test_a_refused_request_is_answered_and_its_body_not_read(port: int) -> None:
    s = _conn(port)
    s.sendall(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    s.sendall(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
    assert s.recv(4096).startswith(b"HTTP/1.1 401")  # no key: answered at once
    sent = 0
    with pytest.raises(OSError):
        for _ in range(2000):  # 128 MiB if the server kept reading
            s.sendall(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
            sent += 0x10000
    assert sent < 32 * 2**20, sent  # the linger discards at most 4 MiB, then the connection is closed


def test_content_length_with_transfer_encoding_is_refused(port: int) -> None:
    s = _conn(port)
    s.sendall(HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    reply = _read_all(s)
    assert reply.startswith(b"HTTP/1.1 400") and b"bad_framing" in reply
    assert b"connection: close" in reply.lower()  # where the next request would start is ambiguous too


def test_the_app_is_called_only_once_the_body_is_complete(port: int) -> None:
    s = _conn(port)
    s.sendall(HEAD.replace(b"/x", b"/complete") + b"Content-Length: 3000\r\n\r\n" + b" " * 1000)
    for _ in range(2):
        time.sleep(0.3)  # within the deadline (0.5 s + 1 s per 1000 bytes), the body still incomplete
        assert "/complete" not in CALLS
        s.sendall(b" " * 1000)
    reply = _read_response(s)
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"ok 3000 in 1")  # whole body, one message
    assert CALLS["/complete"] == [3000]


def test_a_body_dripped_below_the_rate_never_reaches_the_app(port: int) -> None:
    CLOSED.clear()
    s = _conn(port)
    s.sendall(HEAD.replace(b"/x", b"/drip") + b"Content-Length: 10000\r\n\r\n{")
    with pytest.raises(OSError):
        for _ in range(40):
            time.sleep(0.1)
            s.sendall(b" ")
    assert "body_timeout" in CLOSED, CLOSED
    assert "/drip" not in CALLS


def test_chunked_bodies_and_keep_alive_pass_the_front_guard(port: int) -> None:
    s = _conn(port)
    head = HEAD.replace(b"/x", b"/chunked") + b"Transfer-Encoding: chunked\r\n\r\n"
    for _ in range(2):  # two requests on one connection
        s.sendall(head + b"5\r\nhello\r\n")
        time.sleep(0.1)
        s.sendall(b"6\r\n world\r\n0\r\n\r\n")
        reply = _read_response(s)
        assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"ok 11 in 1"), reply
    assert CALLS["/chunked"] == [11, 11]
    s.sendall(HEAD.replace(b"/x", b"/big") + b"Transfer-Encoding: chunked\r\n\r\n")
    s.sendall(b"c000\r\n" + b"x" * 0xC000 + b"\r\n")  # 48 KiB: the request limit
    s.sendall(b"1\r\nx\r\n")
    reply = _read_all(s)
    assert reply.startswith(b"HTTP/1.1 413") and b"MMSEARCH_MAX_REQUEST_BYTES" in reply
    assert "/big" not in CALLS  # refused by the front guard: the app was never called


def test_bodies_being_received_are_bounded_per_worker(port: int) -> None:
    held = _conn(port)  # 40,000 bytes of a 48,000-byte body, held: counted against the 64 KiB budget
    held.sendall(HEAD.replace(b"/x", b"/held") + b"Content-Length: 48000\r\n\r\n" + b" " * 40_000)
    time.sleep(0.2)
    over = _conn(port)
    over.sendall(HEAD.replace(b"/x", b"/over") + b"Content-Length: 40000\r\n\r\n" + b" " * 40_000)
    reply = _read_response(over)
    assert reply.startswith(b"HTTP/1.1 503") and b"MMSEARCH_MAX_BUFFERED_BODY_BYTES" in reply
    assert b"retry-after" in reply.lower()
    held.sendall(b" " * 8_000)
    assert _read_response(held).startswith(b"HTTP/1.1 200")
    again = _conn(port)  # the budget is given back once a request is done
    again.sendall(HEAD.replace(b"/x", b"/again") + b"Content-Length: 40000\r\n\r\n" + b" " * 40_000)
    assert _read_response(again).startswith(b"HTTP/1.1 200")
    assert "/over" not in CALLS and CALLS["/held"] == [48000] and CALLS["/again"] == [40000]
