"""Pure autoscaling decisions: a model's observed demand -> how many engine replicas it needs.

No I/O and no clock of its own: the caller feeds observations (summed over every gateway
replica and the engines) and the current time, and persists the small `Memory` in status.

    demand     requests in flight for the model: served self-hosted, held at the gateway
               and served by fallback, summed over the gateways (or what the engines report
               running + waiting, when that is higher: clients that bypass the gateway)
    stable     recommendation = ceil(mean demand over the stable window / target), within
               ±tolerance of the current capacity nothing changes (a noisy load never flaps)
    panic      when the panic window's mean asks for >= panicThreshold x the ready capacity,
               scale up to it at once and scale down not at all until the stable window has
               passed without panic (Knative's KPA)
    down       to the highest recommendation of the last scaleDownDelaySeconds (HPA's
               stabilisation window) and never below what the panic window needs now,
               never while pods are still starting (the ReplicaSet would delete those
               first), to zero only with minReplicas 0 and after no request arrived for
               scaleToZeroAfterSeconds
    wake       at zero, any arrival asks for one replica at once
    no data    when the latest reading has no demand (no gateway could be read), the count
               is held; when it is partial (some gateway could not be read: the sum is a
               lower bound) it may scale up on it, never down

Every decision says why in numbers (`Decision.message`), for the Event and status.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

# Decision reasons (one CamelCase word each; status and Events carry them).
SCALE_UP = "ScaleUp"
PANIC = "PanicScaleUp"
SCALE_DOWN = "ScaleDown"
SCALE_TO_ZERO = "ScaleToZero"
WAKE = "WakeFromZero"
STEADY = "Steady"
NO_DATA = "NoMetrics"
STARTING = "PodsStarting"
STABILISING = "ScaleDownDelayed"


@dataclass(frozen=True)
class Policy:
    """The knobs of spec.autoscaling, in seconds and ratios."""

    min_replicas: int
    max_replicas: int
    target: float  # requests in flight per replica
    stable_window: float = 60.0
    panic_window: float = 6.0
    panic_threshold: float = 2.0  # panic when the panic window asks for 2x the ready capacity
    scale_down_delay: float = 300.0
    scale_to_zero_after: float = 600.0
    tolerance: float = 0.1

    def clamp(self, replicas: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, replicas))

    def recommend(self, demand: float) -> int:
        """Replicas for this demand, before bounds (a tiny epsilon keeps 8.0/4 at 2)."""
        return max(0, math.ceil(demand / self.target - 1e-9))


@dataclass(frozen=True)
class Observation:
    """One reading of the model's demand."""

    at: float  # seconds (the caller's clock)
    demand: float | None  # None: no gateway could be read
    arrivals: float = 0.0  # requests that arrived since the previous observation
    complete: bool = True  # False: some gateway could not be read (demand is a lower bound)


@dataclass(frozen=True)
class Pods:
    """The model's engine pods as the operator sees them."""

    ready: int = 0
    starting: int = 0  # scheduled, not ready yet, not failing: loading weights
    unschedulable: int = 0  # waiting for a node (e.g. no free GPU); they serve nothing


@dataclass(frozen=True)
class Memory:
    """What must survive an operator restart (kept in status.autoscaling)."""

    last_active: float | None = None  # when a request last arrived (or demand was seen)


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: str
    message: str
    demand: float | None  # the stable window's mean demand (None: no data)
    panicking: bool
    memory: Memory

    @property
    def changed(self) -> bool:
        return self.reason in (SCALE_UP, PANIC, SCALE_DOWN, SCALE_TO_ZERO, WAKE)


def _fmt(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


class Autoscaler:
    """The per-model windows. Feed `observe()`, then ask `decide()`; both are pure of I/O.

    Only the windows live here (in memory: after an operator restart they refill, and until
    they cover scaleDownDelaySeconds nothing is scaled down, which errs on the side of
    capacity); the rest comes in as arguments.
    """

    def __init__(self) -> None:
        self._observations: deque[Observation] = deque()
        self._recommendations: deque[tuple[float, int]] = deque()
        self._panic_until: float | None = None
        self._first_at: float | None = None

    def observe(self, observation: Observation) -> None:
        if self._first_at is None:
            self._first_at = observation.at
        self._observations.append(observation)

    def _trim(self, policy: Policy, now: float) -> None:
        keep = max(policy.stable_window, policy.panic_window)
        while self._observations and self._observations[0].at < now - keep:
            self._observations.popleft()
        while self._recommendations and self._recommendations[0][0] < now - policy.scale_down_delay:
            self._recommendations.popleft()

    def _mean(self, window: float, now: float) -> float | None:
        values = [
            o.demand for o in self._observations if o.demand is not None and o.at > now - window
        ]
        return sum(values) / len(values) if values else None

    def decide(
        self, policy: Policy, current: int, pods: Pods, memory: Memory, now: float
    ) -> Decision:
        """The replicas the model should have now, `current` being what it is asked to have."""
        self._trim(policy, now)
        latest = self._observations[-1] if self._observations else None
        last_active = memory.last_active
        if (
            latest is not None
            and latest.at > now - policy.stable_window
            and (latest.arrivals > 0 or (latest.demand or 0) > 0)
        ):
            last_active = max(last_active or latest.at, latest.at)
        memory = Memory(last_active=last_active)

        # The bounds are the user's word: they apply at once, data or not.
        if current < policy.min_replicas or current > policy.max_replicas:
            want = policy.clamp(current)
            side = "minReplicas" if want > current else "maxReplicas"
            return Decision(
                want, SCALE_UP if want > current else SCALE_DOWN,
                f"{current} replica(s) is outside the bounds → {want} ({side})",
                self._mean(policy.stable_window, now), False, memory,
            )  # fmt: skip

        stable = self._mean(policy.stable_window, now)
        panic = self._mean(policy.panic_window, now)
        if stable is None or latest is None or latest.demand is None:
            # No reading now: older readings say nothing about the present (they may show
            # an idle model that is busy now), so nothing moves until the gateways answer.
            return Decision(
                current,
                NO_DATA,
                f"no demand metrics (no gateway could be read): holding {current} replica(s)",
                None,
                False,
                memory,
            )
        partial = not latest.complete

        arrived = latest is not None and latest.arrivals > 0
        stable_rec = policy.recommend(stable)
        panic_rec = policy.recommend(panic if panic is not None else stable)
        self._recommendations.append((now, stable_rec))
        numbers = (
            f"demand {_fmt(stable)} in flight (last {_fmt(policy.stable_window)}s), "
            f"{_fmt(panic if panic is not None else stable)} (last {_fmt(policy.panic_window)}s), "
            f"target {_fmt(policy.target)} per replica"
        )

        # Wake from zero: the first request must not wait for a window to fill.
        if current == 0:
            if arrived or (latest is not None and (latest.demand or 0) > 0) or stable_rec > 0:
                want = policy.clamp(max(1, stable_rec, panic_rec))
                if want > 0:
                    return Decision(
                        want, WAKE, f"{numbers} → {want} replica(s) (waking from zero)", stable,
                        False, memory,
                    )  # fmt: skip
            return Decision(0, STEADY, f"{numbers}: staying at zero", stable, False, memory)

        # Panic: a step in load is answered within the panic window, never with a scale-down.
        capacity = max(1, pods.ready)
        if panic_rec >= policy.panic_threshold * capacity and panic_rec > current:
            self._panic_until = now + policy.stable_window
        panicking = self._panic_until is not None and now < self._panic_until
        if not panicking:
            self._panic_until = None
        if panicking:
            want = policy.clamp(max(current, stable_rec, panic_rec))
            if want > current:
                return Decision(
                    want, PANIC, f"{numbers} → {want} replica(s) (panic: the last "
                    f"{_fmt(policy.panic_window)}s need {panic_rec}, {pods.ready} ready)",
                    stable, True, memory,
                )  # fmt: skip
            return Decision(
                current, STEADY, f"{numbers}: holding {current} replica(s) while panicking",
                stable, True, memory,
            )  # fmt: skip

        # Within tolerance of the current capacity: no change.
        want = policy.clamp(stable_rec)
        if want != current and abs(stable / (current * policy.target) - 1.0) <= policy.tolerance:
            want = current
        if want > current:
            return Decision(want, SCALE_UP, f"{numbers} → {want} replica(s)", stable, False, memory)
        if want == current:
            return Decision(
                current, STEADY, f"{numbers}: {current} replica(s) fit", stable, False, memory
            )
        if partial:
            return Decision(
                current, NO_DATA, f"{numbers}: some gateway could not be read, so demand may "
                f"be higher: holding {current} replica(s)", stable, False, memory,
            )  # fmt: skip

        # Scaling down: only once the whole delay asked for no more than `down`.
        if self._first_at is None or now - self._first_at < policy.scale_down_delay:
            return Decision(
                current, STABILISING, f"{numbers}: would scale down, but only "
                f"{_fmt(now - (self._first_at or now))}s of history "
                f"(scaleDownDelaySeconds {_fmt(policy.scale_down_delay)})",
                stable, False, memory,
            )  # fmt: skip
        down = policy.clamp(max(rec for _, rec in self._recommendations))
        if panic_rec > down and down < current:
            # Never below what the last few seconds need: a swing back up (a sawtooth's
            # rising edge) must not meet a scale-down that the slower window still allows.
            down = min(current, policy.clamp(panic_rec))
            if down >= current:
                return Decision(
                    current, STABILISING, f"{numbers}: holding {current} replica(s): the "
                    f"last {_fmt(policy.panic_window)}s need {panic_rec}",
                    stable, False, memory,
                )  # fmt: skip
        if down == 0:
            # Never seen active: idle since the autoscaler began watching (a fresh operator
            # or a new model gets the whole idle period, not just the delay).
            since = last_active if last_active is not None else self._first_at
            idle = now - since if since is not None else math.inf
            if idle < policy.scale_to_zero_after:
                down = 1
                if current == 1:
                    return Decision(
                        1, STABILISING, f"last request {_fmt(idle)}s ago: scaling to zero "
                        f"after {_fmt(policy.scale_to_zero_after)}s without one",
                        stable, False, memory,
                    )  # fmt: skip
        if down >= current:
            return Decision(
                current, STABILISING, f"{numbers}: holding {current} replica(s) until load "
                f"stays low for {_fmt(policy.scale_down_delay)}s",
                stable, False, memory,
            )  # fmt: skip
        if pods.starting > 0:
            return Decision(
                current, STARTING, f"{numbers}: {pods.starting} pod(s) still starting; not "
                "scaling down", stable, False, memory,
            )  # fmt: skip
        if down == 0:
            return Decision(
                0, SCALE_TO_ZERO, f"no request for {_fmt(policy.scale_to_zero_after)}s → 0 "
                "replicas", stable, False, memory,
            )  # fmt: skip
        return Decision(down, SCALE_DOWN, f"{numbers} → {down} replica(s)", stable, False, memory)


def replay(
    policy: Policy, trace: Iterable[Observation], start: int, pods_ready_after: float = 0.0
) -> list[tuple[float, int, Decision]]:
    """Replays a demand trace through the policy, one decision per observation; pods become
    ready `pods_ready_after` seconds after they are asked for. For tests and the bench."""
    scaler = Autoscaler()
    memory = Memory()
    current = start
    asked: list[float] = [-math.inf] * start  # when each replica was asked for
    out: list[tuple[float, int, Decision]] = []
    for observation in trace:
        now = observation.at
        scaler.observe(observation)
        ready = sum(1 for t in asked if now - t >= pods_ready_after)
        pods = Pods(ready=ready, starting=len(asked) - ready)
        decision = scaler.decide(policy, current, pods, memory, now)
        memory = decision.memory
        if decision.desired > current:
            asked += [now] * (decision.desired - current)
        elif decision.desired < current:
            asked = sorted(asked)[: decision.desired]
        current = decision.desired
        out.append((now, current, decision))
    return out
