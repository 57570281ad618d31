"""A circuit breaker per dependency: a dependency that is down is answered at once, not after its timeout.

closed -> (``failures`` consecutive failures) -> open -> (``open_s`` later) -> half-open: ONE request probes the
dependency while the others are still refused; its success closes the circuit, its failure opens it again.
Failures are what says the dependency is unreachable (refused, reset, timed out, 5xx); its 4xx answers are the
caller's problem and count as successes. Pure logic with an injectable clock: unit tests drive it without a server.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

State = Literal["closed", "open", "half_open"]


class CircuitOpen(Exception):
    """The dependency is considered down; ``retry_after`` is when a probe may try it again (seconds)."""

    def __init__(self, name: str, retry_after: float, last_error: str | None) -> None:
        super().__init__(f"{name}: circuit open")
        self.retry_after = retry_after
        self.last_error = last_error


class CircuitBreaker:
    """Consecutive-failure circuit breaker with half-open probes."""

    def __init__(self, name: str, failures: int, open_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.threshold = failures
        self.open_s = open_s
        self.clock = clock
        self.state: State = "closed"
        self.consecutive_failures = 0
        self.opened_at = 0.0
        self.probing = False
        self.last_error: str | None = None
        self.trips = 0

    def _retry_in(self) -> float:
        return max(0.0, self.opened_at + self.open_s - self.clock())

    def acquire(self) -> bool:
        """Admit a call (True: it is the half-open probe) or raise :class:`CircuitOpen`."""
        if self.state == "open" and self._retry_in() <= 0:
            self.state = "half_open"
        if self.state == "half_open" and not self.probing:
            self.probing = True
            return True
        if self.state != "closed":
            raise CircuitOpen(self.name, max(self._retry_in(), 0.5), self.last_error)
        return False

    def success(self, probe: bool = False) -> None:
        if probe:
            self.probing = False
        self.state = "closed"
        self.consecutive_failures = 0

    def failure(self, error: str, probe: bool = False) -> None:
        if probe:
            self.probing = False
        self.last_error = error
        self.consecutive_failures += 1
        if probe or self.state == "half_open" or self.consecutive_failures >= self.threshold:
            if self.state != "open":
                self.trips += 1
            self.state = "open"
            self.opened_at = self.clock()

    def release(self, probe: bool) -> None:
        """The call ended without a verdict (cancelled by its caller): free the probe slot."""
        if probe:
            self.probing = False

    @contextlib.asynccontextmanager
    async def guard(self, is_failure: Callable[[BaseException], bool]) -> AsyncIterator[None]:
        """Run one call under the breaker; ``is_failure`` says which exceptions mean "dependency down"."""
        probe = self.acquire()
        try:
            yield
        except BaseException as e:
            if is_failure(e):
                self.failure(type(e).__name__, probe)  # the type only: details may hold internal addresses
            elif isinstance(e, Exception):
                self.success(probe)
            else:  # cancelled from outside: no verdict about the dependency
                self.release(probe)
            raise
        else:
            self.success(probe)

    def snapshot(self) -> dict[str, Any]:
        """What ``/info`` shows."""
        state = self.state
        if state == "open" and self._retry_in() <= 0:
            state = "half_open"
        return {
            "state": state,
            "consecutive_failures": self.consecutive_failures,
            "trips": self.trips,
            "retry_in_s": round(self._retry_in(), 3) if state == "open" else 0.0,
            "last_error": self.last_error,
        }
