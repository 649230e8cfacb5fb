"""The autoscaling policy as a pure function over demand traces (no cluster, no clock)."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable

import pytest

from hedge_operator.autoscaling import policy as scaling
from hedge_operator.autoscaling.policy import Autoscaler, Memory, Observation, Pods, Policy, replay

TICK = 1.0


def trace(demand: Callable[[float], float | None], seconds: float, arrivals: float = 1.0):
    """One observation per tick; `arrivals` per tick whenever demand is positive."""
    out = []
    t = 0.0
    while t <= seconds:
        d = demand(t)
        out.append(Observation(at=t, demand=d, arrivals=arrivals if d else 0.0))
        t += TICK
    return out


def policy(**overrides: float) -> Policy:
    base = dict(
        min_replicas=1,
        max_replicas=10,
        target=4.0,
        stable_window=30.0,
        panic_window=3.0,
        scale_down_delay=30.0,
        scale_to_zero_after=60.0,
    )
    base.update(overrides)
    return Policy(**base)  # type: ignore[arg-type]


def replicas_at(result: list[tuple[float, int, scaling.Decision]], t: float) -> int:
    return next(current for at, current, _ in result if at >= t)


def first_time(result: list[tuple[float, int, scaling.Decision]], replicas: int) -> float:
    return next(at for at, current, _ in result if current >= replicas)


def direction_changes(result: list[tuple[float, int, scaling.Decision]]) -> list[float]:
    changes, last_dir, last = [], 0, result[0][1]
    for at, current, _ in result:
        if current != last:
            direction = 1 if current > last else -1
            if last_dir and direction != last_dir:
                changes.append(at)
            last_dir, last = direction, current
    return changes


# ---------------------------------------------------------------------------- load steps


def test_a_load_step_scales_up_within_the_panic_window() -> None:
    # 2 streams, then 12 at t=60: target 4 per replica wants 3.
    result = replay(policy(), trace(lambda t: 2.0 if t < 60 else 12.0, 90), start=1)
    assert replicas_at(result, 59) == 1
    reached = first_time(result, 3)
    assert 60 <= reached <= 60 + 5, reached
    # The decision that got there says it panicked and why, in numbers.
    decision = next(d for at, current, d in result if current == 3)
    assert decision.reason == scaling.PANIC
    assert "target 4 per replica" in decision.message


def test_a_slow_rise_scales_up_on_the_stable_window_without_panic() -> None:
    # 4 replicas carrying 16, rising to 22 over a minute: never twice the capacity.
    result = replay(policy(), trace(lambda t: 16.0 + t / 10, 60), start=4)
    reasons = {d.reason for _, _, d in result}
    assert scaling.SCALE_UP in reasons
    assert scaling.PANIC not in reasons
    assert replicas_at(result, 60) == 5


def test_removing_the_load_scales_down_only_after_the_delay_then_to_the_minimum() -> None:
    p = policy(scale_down_delay=30.0)
    result = replay(p, trace(lambda t: 12.0 if t < 40 else 0.0, 120), start=3)
    assert replicas_at(result, 40) == 3
    # Not before the stable window has drained and the delay has passed.
    assert replicas_at(result, 40 + 30) == 3
    assert replicas_at(result, 120) == 1  # minReplicas
    downs = [at for at, _, d in result if d.reason == scaling.SCALE_DOWN]
    assert downs and downs[0] >= 40 + 30


def test_scale_to_zero_only_after_the_idle_period() -> None:
    p = policy(min_replicas=0, scale_down_delay=10.0, scale_to_zero_after=60.0)
    result = replay(p, trace(lambda t: 4.0 if t < 20 else 0.0, 150), start=1)
    # The last request arrived at t=19.
    assert replicas_at(result, 19 + 59) == 1
    assert "scaling to zero after 60s without one" in result[19 + 50][2].message
    zero_at = next(at for at, current, _ in result if current == 0)
    assert 19 + 60 <= zero_at <= 19 + 62
    assert result[-1][1] == 0
    assert any(d.reason == scaling.SCALE_TO_ZERO for _, _, d in result)


def test_the_first_request_at_zero_wakes_the_model_at_once() -> None:
    p = policy(min_replicas=0)
    observations = [Observation(at=t, demand=0.0) for t in range(10)]
    observations.append(Observation(at=10, demand=0.0, arrivals=1))  # a short request, gone
    result = replay(p, observations, start=0)
    assert result[9][1] == 0
    assert result[10][1] == 1
    assert result[10][2].reason == scaling.WAKE


def test_zero_stays_zero_in_silence() -> None:
    result = replay(policy(min_replicas=0), trace(lambda t: 0.0, 100), start=0)
    assert {current for _, current, _ in result} == {0}


# ------------------------------------------------------------------------------- noise


@pytest.mark.parametrize("period", [20.0, 60.0])
def test_a_sawtooth_around_the_target_does_not_flap(period: float) -> None:
    # ±30 % around 3 replicas' worth of demand (target 4 → 12 in flight), for 5 minutes.
    def saw(t: float) -> float:
        phase = (t % period) / period
        return 12.0 * (0.7 + 0.6 * (phase if phase < 0.5 else 1 - phase) * 2)

    result = replay(policy(), trace(saw, 300), start=3)
    changes = direction_changes(result)
    # At most one scale-direction change per half period.
    for a, b in itertools.pairwise(changes):
        assert b - a >= period / 2, changes
    assert max(current for _, current, _ in result) <= 4


def test_a_spike_shorter_than_the_panic_window_leaves_no_lasting_capacity() -> None:
    p = policy(scale_down_delay=20.0)
    result = replay(p, trace(lambda t: 40.0 if 30 <= t < 31 else 2.0, 200), start=1)
    assert result[-1][1] == 1


def test_no_flapping_between_zero_and_one() -> None:
    # A request every 20 s on a model that may scale to zero after 60 s idle.
    p = policy(min_replicas=0, scale_down_delay=10.0, scale_to_zero_after=60.0)
    obs = [Observation(at=t, demand=0.5 if t % 20 == 0 else 0.0, arrivals=1 if t % 20 == 0 else 0)
           for t in range(300)]  # fmt: skip
    result = replay(p, obs, start=1)
    assert {current for _, current, _ in result} == {1}


# ------------------------------------------------------------------------ GPU reality


def test_pending_pods_cause_no_more_replicas_than_demand_needs() -> None:
    scaler = Autoscaler()
    p = policy()
    decision = None
    for t in range(60):
        scaler.observe(Observation(at=t, demand=12.0, arrivals=1))
        # Two of the three replicas can never be scheduled (no free GPU).
        decision = scaler.decide(p, 3, Pods(ready=1, unschedulable=2), Memory(), t)
        assert decision.desired == 3, decision
    assert decision is not None


def test_starting_pods_are_never_scaled_away() -> None:
    scaler = Autoscaler()
    p = policy(scale_down_delay=5.0)
    for t in range(20):
        scaler.observe(Observation(at=t, demand=0.0))
    decision = scaler.decide(p, 3, Pods(ready=1, starting=2), Memory(), 20)
    assert decision.desired == 3
    assert decision.reason == scaling.STARTING
    assert "2 pod(s) still starting" in decision.message
    assert scaler.decide(p, 3, Pods(ready=3), Memory(), 20).desired == 1


# --------------------------------------------------------------------------- no data


def test_missing_metrics_hold_the_current_count_never_scale_to_zero() -> None:
    p = policy(min_replicas=0, scale_down_delay=5.0, scale_to_zero_after=10.0)
    result = replay(p, trace(lambda t: None, 120), start=2)
    assert {current for _, current, _ in result} == {2}
    assert result[-1][2].reason == scaling.NO_DATA
    assert "holding 2" in result[-1][2].message


def test_after_a_restart_nothing_scales_down_until_the_delay_is_covered() -> None:
    p = policy(scale_down_delay=30.0)
    scaler = Autoscaler()  # a fresh operator: empty windows
    for t in range(100, 120):
        scaler.observe(Observation(at=t, demand=0.0))
        decision = scaler.decide(p, 4, Pods(ready=4), Memory(last_active=90.0), t)
        assert decision.desired == 4
    assert decision.reason == scaling.STABILISING


def test_memory_keeps_the_model_awake_across_a_restart() -> None:
    # The model was active 50 s before the restart; 60 s idle are needed for zero.
    p = policy(min_replicas=0, scale_down_delay=5.0, scale_to_zero_after=60.0)
    scaler = Autoscaler()
    memory = Memory(last_active=1000.0)
    decisions = []
    for t in range(1050, 1075):
        scaler.observe(Observation(at=t, demand=0.0))
        decision = scaler.decide(p, 1, Pods(ready=1), memory, t)
        memory = decision.memory
        decisions.append((t, decision.desired))
    assert dict(decisions)[1059] == 1
    assert dict(decisions)[1061] == 0


# ----------------------------------------------------------------------------- bounds


@pytest.mark.parametrize(
    ("current", "expected", "reason"),
    [(0, 2, scaling.SCALE_UP), (1, 2, scaling.SCALE_UP), (9, 5, scaling.SCALE_DOWN)],
)
def test_bounds_apply_at_once(current: int, expected: int, reason: str) -> None:
    scaler = Autoscaler()
    decision = scaler.decide(
        policy(min_replicas=2, max_replicas=5), current, Pods(ready=current), Memory(), 0.0
    )
    assert (decision.desired, decision.reason) == (expected, reason)


def test_demand_above_the_maximum_is_capped() -> None:
    result = replay(policy(max_replicas=4), trace(lambda t: 100.0, 30), start=1)
    assert max(current for _, current, _ in result) == 4


def test_recommend_rounds_up_but_not_on_exact_multiples() -> None:
    p = policy()
    assert [p.recommend(d) for d in (0, 0.1, 4, 4.0000001, 8, 8.5)] == [0, 1, 1, 2, 2, 3]
    assert math.isclose(p.target, 4.0)


def test_a_gap_in_the_metrics_holds_even_when_older_readings_say_idle() -> None:
    # Idle long enough to scale to zero, but the gateways stop answering first: older
    # readings say nothing about now, so the model stays.
    p = policy(min_replicas=0, scale_down_delay=5.0, scale_to_zero_after=10.0)
    obs = [Observation(at=t, demand=0.0) for t in range(8)]
    obs += [Observation(at=t, demand=None) for t in range(8, 60)]
    result = replay(p, obs, start=1)
    assert {current for _, current, _ in result} == {1}
    assert result[-1][2].reason == scaling.NO_DATA
    assert "no gateway could be read" in result[-1][2].message


def test_partial_readings_scale_up_but_never_down() -> None:
    # One of the gateways cannot be read: what the others report is a lower bound.
    p = policy(scale_down_delay=5.0)
    high = [Observation(at=t, demand=12.0, arrivals=1, complete=False) for t in range(10)]
    result = replay(p, high, start=1)
    assert result[-1][1] == 3  # scaled up on the partial sum
    low = [Observation(at=t, demand=0.0, complete=False) for t in range(10, 80)]
    result = replay(p, high + low, start=1)
    assert result[-1][1] == 3
    assert result[-1][2].reason == scaling.NO_DATA
    assert "some gateway could not be read" in result[-1][2].message
    # Every gateway readable again: the delay passes and it scales down.
    back = [Observation(at=t, demand=0.0) for t in range(80, 100)]
    assert replay(p, high + low + back, start=1)[-1][1] == 1


@pytest.mark.parametrize("seed", range(10))
def test_a_noisy_sawtooth_with_windows_longer_than_its_half_period_does_not_flap(
    seed: int,
) -> None:
    # The e2e sawtooth (tests/e2e/test_autoscaling.py): ±30 % around 12 in flight, 40 s a
    # period, with measurement noise, stable window 20 s, scale-down delay 30 s.
    rnd = random.Random(seed)
    offset = rnd.uniform(0, 40)

    def saw(t: float) -> float:
        phase = ((t + offset) % 40) / 40
        return 8.4 + 7.2 * (phase * 2 if phase < 0.5 else 2 - phase * 2)

    obs = [
        Observation(at=t, demand=max(0.0, saw(t) + rnd.gauss(0, 0.7)), arrivals=1)
        for t in range(300)
    ]
    p = policy(min_replicas=0, stable_window=20.0, panic_window=2.0, scale_down_delay=30.0)
    result = replay(p, obs, start=3)
    changes = direction_changes(result)
    for a, b in itertools.pairwise(changes):
        assert b - a >= 20, changes
    assert min(current for _, current, _ in result) >= 3


def test_no_scale_down_below_what_the_last_seconds_need() -> None:
    # Load fell long enough for a scale-down, but is rising again right now: the slow window
    # would allow 2 replicas, the last 3 s need 4.
    p = policy(stable_window=30.0, panic_window=3.0, scale_down_delay=10.0)
    demand = [16.0] * 10 + [4.0] * 30 + [14.0] * 4
    obs = [Observation(at=float(t), demand=d, arrivals=1) for t, d in enumerate(demand)]
    scaler = Autoscaler()
    decisions = []
    for o in obs:
        scaler.observe(o)
        decisions.append(scaler.decide(p, 4, Pods(ready=4), Memory(), o.at))
    assert decisions[39].desired == 2  # low for the delay: the slow window says 2
    assert decisions[41].desired == 3  # rising again: the last 3 s need 3
    assert [d.desired for d in decisions[42:]] == [4, 4]  # ... then all 4
    assert decisions[-1].reason == scaling.STABILISING
    assert "the last 3s need 4" in decisions[-1].message
