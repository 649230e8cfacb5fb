"""The circuit breaker: opens on failures, one half-open probe, closes on success."""

from __future__ import annotations

from hedge_serving.gateway.breaker import CircuitBreaker, CircuitState


def test_breaker_opens_probes_and_closes() -> None:
    now = [0.0]
    br = CircuitBreaker(failure_threshold=3, open_seconds=1.0, clock=lambda: now[0])
    br.record_failure()
    br.record_success()  # resets the count
    for _ in range(2):
        br.record_failure()
    assert br.state is CircuitState.CLOSED and br.available()
    br.record_failure()
    assert br.state is CircuitState.OPEN and not br.available()
    now[0] = 1.0
    assert br.available()
    assert br.acquire() is True  # the probe
    assert br.state is CircuitState.HALF_OPEN and not br.available()  # one probe at a time
    br.record_failure()
    assert br.state is CircuitState.OPEN and not br.available()
    now[0] = 2.5
    probe = br.acquire()
    br.release(probe)  # client went away: the next request may probe
    assert br.available()
    assert br.acquire()
    br.record_success()
    assert br.state is CircuitState.CLOSED and br.acquire() is False
