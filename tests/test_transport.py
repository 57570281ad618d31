"""The connection-level limits (service.transport) in a real uvicorn on loopback, driven by raw sockets: header and
body deadlines, the minimum body rate, the connection cap (slowest evicted) and the bounded linger after a
refusal. Deadlines here are short (0.5 s) so each case takes about a second."""

from __future__ import annotations

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
LIMITS = Settings(header_timeout_s=0.5, body_timeout_s=0.5, body_min_rate=1000, max_connections=8, api_keys="k")


async def _echo(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    size = 0
    while True:
        msg = await receive()
        size += len(msg.get("body", b""))
        if not msg.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    transport.install(LIMITS, on_close=CLOSED.append)
    app = RequestGuard(_echo, LIMITS)  # type: ignore[arg-type]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    assert isinstance(next(iter(server.servers)), object)
    yield server.config.port
    server.should_exit = True
    thread.join(10)


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
    s.sendall(HEAD + b"Content-Length: 100000\r\n\r\n{")
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
    assert _read_all(steady).startswith(b"HTTP/1.1 200")


def test_the_slowest_connection_is_evicted_at_the_cap(port: int) -> None:
    CLOSED.clear()
    slow = [_conn(port) for _ in range(8)]
    for s in slow:
        s.sendall(b"POST /x HTTP/1.1\r\n")  # all stuck in their headers
    time.sleep(0.2)  # late enough to be evicted (a quarter of the header deadline), not yet timed out
    fresh = _conn(port)
    fresh.sendall(HEAD + b"Content-Length: 2\r\n\r\n{}")
    assert _read_all(fresh).startswith(b"HTTP/1.1 200")  # served although the cap was reached
    assert "evicted" in CLOSED
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
