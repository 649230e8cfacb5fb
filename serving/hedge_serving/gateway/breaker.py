"""Per-backend circuit breaker: consecutive failures open it, a single probe closes it.

    CLOSED --(failure_threshold consecutive failures)--> OPEN
    OPEN   --(open_seconds elapsed, next request is the probe)--> HALF_OPEN
    HALF_OPEN --(probe succeeds)--> CLOSED
    HALF_OPEN --(probe fails)--> OPEN (for open_seconds again)

Selection asks `available()` (no side effect) for every candidate and calls `acquire()`
only on the backend it picked, so at most one probe is in flight per half-open backend.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class CircuitState(enum.IntEnum):
    """Numeric values are what the `hedge_gateway_circuit_state` gauge exports."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    __slots__ = (
        "_clock",
        "_failures",
        "_opened_at",
        "_probe_in_flight",
        "failure_threshold",
        "open_seconds",
        "state",
    )

    def __init__(
        self,
        failure_threshold: int = 3,
        open_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = max(1, failure_threshold)
        self.open_seconds = open_seconds
        self._clock = clock
        self.state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    def available(self) -> bool:
        """Whether a request may be sent now (a probe, if the breaker is open)."""
        if self.state is CircuitState.CLOSED:
            return True
        if self._probe_in_flight:
            return False
        return self._clock() - self._opened_at >= self.open_seconds

    def acquire(self) -> bool:
        """Claim the right to send one request; returns True if it is the half-open probe."""
        if self.state is CircuitState.CLOSED:
            return False
        self.state = CircuitState.HALF_OPEN
        self._probe_in_flight = True
        return True

    def record_success(self) -> None:
        self._failures = 0
        self._probe_in_flight = False
        self.state = CircuitState.CLOSED

    def record_failure(self) -> None:
        self._failures += 1
        if self.state is not CircuitState.CLOSED or self._failures >= self.failure_threshold:
            self.state = CircuitState.OPEN
            self._opened_at = self._clock()
            self._probe_in_flight = False

    def release(self, was_probe: bool) -> None:
        """The request ended with neither verdict (client went away): free the probe slot."""
        if was_probe and self._probe_in_flight:
            self._probe_in_flight = False
            if self.state is CircuitState.HALF_OPEN:
                self.state = CircuitState.OPEN
