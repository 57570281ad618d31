"""Circuit breaker state machine (pure logic, a fake clock), and dependency calls under it (``call_dependency``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from service.breaker import CircuitBreaker, CircuitOpen
from service.errors import ApiError
from service.ports import CONNECTION_RETRIES, call_dependency


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_and_refuses_at_once() -> None:
    clock = Clock()
    b = CircuitBreaker("reranker", failures=3, open_s=5, clock=clock)
    for _ in range(2):
        assert b.acquire() is False
        b.failure("ConnectError")
    assert b.state == "closed"
    b.acquire()
    b.success()  # a success resets the count: only consecutive failures trip
    for _ in range(3):
        b.acquire()
        b.failure("ConnectError")
    assert b.state == "open" and b.trips == 1
    with pytest.raises(CircuitOpen) as e:
        b.acquire()
    assert e.value.retry_after == pytest.approx(5) and e.value.last_error == "ConnectError"
    clock.now += 4
    with pytest.raises(CircuitOpen):
        b.acquire()
    assert b.snapshot()["state"] == "open" and b.snapshot()["retry_in_s"] == pytest.approx(1)


def test_half_open_admits_one_probe_and_closes_on_success() -> None:
    clock = Clock()
    b = CircuitBreaker("reranker", failures=1, open_s=5, clock=clock)
    b.acquire()
    b.failure("TimeoutError")
    clock.now += 5
    assert b.snapshot()["state"] == "half_open"
    assert b.acquire() is True  # the probe
    with pytest.raises(CircuitOpen):
        b.acquire()  # everyone else still refused while it runs
    b.success(probe=True)
    assert b.state == "closed" and b.acquire() is False


def test_failed_probe_opens_again_for_a_full_period() -> None:
    clock = Clock()
    b = CircuitBreaker("embedder", failures=2, open_s=5, clock=clock)
    for _ in range(2):
        b.acquire()
        b.failure("ConnectError")
    clock.now += 6
    assert b.acquire() is True
    b.failure("ConnectError", probe=True)
    assert b.state == "open" and b.trips == 2
    clock.now += 4.9
    with pytest.raises(CircuitOpen):
        b.acquire()
    clock.now += 0.2
    assert b.acquire() is True


def test_guard_classifies_outcomes() -> None:
    clock = Clock()
    b = CircuitBreaker("reranker", failures=1, open_s=5, clock=clock)

    async def run(exc: BaseException | None) -> None:
        async with b.guard(lambda e: isinstance(e, ConnectionError)):
            if exc is not None:
                raise exc

    with pytest.raises(ValueError):
        asyncio.run(run(ValueError("a 4xx: the caller's fault")))
    assert b.state == "closed"  # not an outage
    with pytest.raises(ConnectionError):
        asyncio.run(run(ConnectionError("refused")))
    assert b.state == "open" and b.last_error == "ConnectionError"
    clock.now += 5
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(run(asyncio.CancelledError()))  # the probe's caller went away: no verdict, slot freed
    assert b.snapshot()["state"] == "half_open" and b.acquire() is True


# --- dependency calls (service.ports.call_dependency) ---------------------------------------------------------------


def _flaky(errors: list[BaseException]) -> tuple[list[int], Callable[[], Awaitable[str]]]:
    """A call that raises ``errors`` in turn, then answers "ok"; how many times it was made."""
    made: list[int] = []

    async def call() -> str:
        made.append(1)
        if len(made) <= len(errors):
            raise errors[len(made) - 1]
        return "ok"

    return made, call


def test_a_dropped_keep_alive_connection_is_sent_again_as_one_successful_call() -> None:
    """aiohttp's error when the server closed a pooled connection as it was reused (seen in CI, a 503 otherwise)."""
    dropped = aiohttp.ClientOSError(None, "Can not write request body for http://127.0.0.1:3000/encode")
    made, call = _flaky([dropped, aiohttp.ServerDisconnectedError()])
    b = CircuitBreaker("embedder", failures=1, open_s=5)
    assert asyncio.run(call_dependency(call, stage="embedder", breaker=b)) == "ok"
    assert len(made) == 3 and b.state == "closed" and b.consecutive_failures == 0


def test_a_connection_that_keeps_dropping_is_a_503_naming_the_stage_after_the_retries() -> None:
    made, call = _flaky([aiohttp.ServerDisconnectedError()] * 10)
    b = CircuitBreaker("reranker", failures=5, open_s=5)
    with pytest.raises(ApiError) as e:
        asyncio.run(call_dependency(call, stage="reranker", breaker=b))
    assert (e.value.status, e.value.code) == (503, "reranker_unavailable")
    assert len(made) == CONNECTION_RETRIES + 1 and b.consecutive_failures == 1  # one call, one failure


def test_a_timeout_is_not_sent_again() -> None:
    made, call = _flaky([aiohttp.ServerTimeoutError("read timed out")])
    with pytest.raises(TimeoutError):
        asyncio.run(call_dependency(call, stage="embedder"))
    assert len(made) == 1
