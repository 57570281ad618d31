"""Circuit breaker state machine (pure logic, a fake clock)."""

from __future__ import annotations

import asyncio

import pytest

from service.breaker import CircuitBreaker, CircuitOpen


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
