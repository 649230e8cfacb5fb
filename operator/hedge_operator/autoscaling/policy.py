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
        """The replicas the model should have now, `current` being what it is asked to have.

        The rules of the module docstring, one function each, tried in order; the first that
        decides wins:

            _out_of_bounds   the bounds are the user's word: they apply at once, data or not
            _no_data         no reading now: hold (older readings say nothing of the present)
            _wake            at zero: any arrival or demand wakes one replica at once
            _panic           a load step is answered within the panic window, never with a
                             scale-down
            _up_or_fit       up to the stable window's need; within tolerance: no change
            _partial         a gateway missing: demand is a lower bound, so never down
            _young           down only once the windows cover scaleDownDelaySeconds
            _down            down to the delay's highest need, never below the panic
                             window's, to zero only after the idle period, never while pods
                             are starting
        """
        self._trim(policy, now)
        t = self._tick(policy, current, pods, memory, now)
        decision = _out_of_bounds(t) or _no_data(t)
        if decision is not None:
            return decision
        self._recommendations.append((now, t.stable_rec))
        for rule in (_wake, self._panic, _up_or_fit, _partial, self._young):
            decision = rule(t)
            if decision is not None:
                return decision
        return self._down(t)

    def _tick(self, policy: Policy, current: int, pods: Pods, memory: Memory, now: float) -> _Tick:
        latest = self._observations[-1] if self._observations else None
        last_active = memory.last_active
        if (
            latest is not None
            and latest.at > now - policy.stable_window
            and (latest.arrivals > 0 or (latest.demand or 0) > 0)
        ):
            last_active = max(last_active or latest.at, latest.at)
        return _Tick(
            policy,
            current,
            pods,
            Memory(last_active=last_active),
            now,
            latest,
            self._mean(policy.stable_window, now),
            self._mean(policy.panic_window, now),
        )

    def _panic(self, t: _Tick) -> Decision | None:
        """Panic: when the panic window asks for panicThreshold x the ready capacity, scale
        up to it at once and not down until a stable window has passed without panic."""
        policy, current = t.policy, t.current
        capacity = max(1, t.pods.ready)
        if t.panic_rec >= policy.panic_threshold * capacity and t.panic_rec > current:
            self._panic_until = t.now + policy.stable_window
        if self._panic_until is None or t.now >= self._panic_until:
            self._panic_until = None
            return None
        want = policy.clamp(max(current, t.stable_rec, t.panic_rec))
        if want > current:
            return t.decide(
                want, PANIC, f"{t.numbers} → {want} replica(s) (panic: the last "
                f"{_fmt(policy.panic_window)}s need {t.panic_rec}, {t.pods.ready} ready)",
                panicking=True,
            )  # fmt: skip
        return t.decide(
            current, STEADY, f"{t.numbers}: holding {current} replica(s) while panicking",
            panicking=True,
        )  # fmt: skip

    def _young(self, t: _Tick) -> Decision | None:
        """Scaling down only once the whole delay asked for no more."""
        if self._first_at is not None and t.now - self._first_at >= t.policy.scale_down_delay:
            return None
        return t.decide(
            t.current, STABILISING, f"{t.numbers}: would scale down, but only "
            f"{_fmt(t.now - (self._first_at or t.now))}s of history "
            f"(scaleDownDelaySeconds {_fmt(t.policy.scale_down_delay)})",
        )  # fmt: skip

    def _down(self, t: _Tick) -> Decision:
        """To the highest recommendation of the delay, within the rules below."""
        policy, current = t.policy, t.current
        down = policy.clamp(max(rec for _, rec in self._recommendations))
        if t.panic_rec > down and down < current:
            # Never below what the last few seconds need: a swing back up (a sawtooth's
            # rising edge) must not meet a scale-down that the slower window still allows.
            down = min(current, policy.clamp(t.panic_rec))
            if down >= current:
                return t.decide(
                    current, STABILISING, f"{t.numbers}: holding {current} replica(s): the "
                    f"last {_fmt(policy.panic_window)}s need {t.panic_rec}",
                )  # fmt: skip
        if down == 0:
            down, hold = self._idle_floor(t)
            if hold is not None:
                return hold
        if down >= current:
            return t.decide(
                current, STABILISING, f"{t.numbers}: holding {current} replica(s) until load "
                f"stays low for {_fmt(policy.scale_down_delay)}s",
            )  # fmt: skip
        if t.pods.starting > 0:
            return t.decide(
                current, STARTING, f"{t.numbers}: {t.pods.starting} pod(s) still starting; "
                "not scaling down",
            )  # fmt: skip
        if down == 0:
            return t.decide(
                0, SCALE_TO_ZERO, f"no request for {_fmt(policy.scale_to_zero_after)}s → 0 "
                "replicas",
            )  # fmt: skip
        return t.decide(down, SCALE_DOWN, f"{t.numbers} → {down} replica(s)")

    def _idle_floor(self, t: _Tick) -> tuple[int, Decision | None]:
        """Zero only after scaleToZeroAfterSeconds without a request; a model never seen
        active is idle since the autoscaler began watching (a fresh operator or a new model
        gets the whole idle period, not just the delay)."""
        last_active = t.memory.last_active
        since = last_active if last_active is not None else self._first_at
        idle = t.now - since if since is not None else math.inf
        if idle >= t.policy.scale_to_zero_after:
            return 0, None
        if t.current != 1:
            return 1, None
        return 1, t.decide(
            1, STABILISING, f"last request {_fmt(idle)}s ago: scaling to zero "
            f"after {_fmt(t.policy.scale_to_zero_after)}s without one",
        )  # fmt: skip


@dataclass(frozen=True)
class _Tick:
    """One decision's inputs and the numbers every rule states."""

    policy: Policy
    current: int
    pods: Pods
    memory: Memory
    now: float
    latest: Observation | None
    stable: float | None  # mean demand over the stable window (None: no data)
    panic: float | None  # over the panic window

    @property
    def stable_rec(self) -> int:
        return self.policy.recommend(self.stable or 0.0)

    @property
    def panic_demand(self) -> float:
        return self.panic if self.panic is not None else (self.stable or 0.0)

    @property
    def panic_rec(self) -> int:
        return self.policy.recommend(self.panic_demand)

    @property
    def numbers(self) -> str:
        policy = self.policy
        return (
            f"demand {_fmt(self.stable or 0.0)} in flight (last {_fmt(policy.stable_window)}s), "
            f"{_fmt(self.panic_demand)} (last {_fmt(policy.panic_window)}s), "
            f"target {_fmt(policy.target)} per replica"
        )

    def decide(
        self, desired: int, reason: str, message: str, *, panicking: bool = False
    ) -> Decision:
        return Decision(desired, reason, message, self.stable, panicking, self.memory)


def _out_of_bounds(t: _Tick) -> Decision | None:
    """The bounds are the user's word: they apply at once, data or not."""
    policy, current = t.policy, t.current
    if policy.min_replicas <= current <= policy.max_replicas:
        return None
    want = policy.clamp(current)
    side = "minReplicas" if want > current else "maxReplicas"
    return t.decide(
        want,
        SCALE_UP if want > current else SCALE_DOWN,
        f"{current} replica(s) is outside the bounds → {want} ({side})",
    )


def _no_data(t: _Tick) -> Decision | None:
    """No reading now: older readings say nothing about the present (they may show an idle
    model that is busy now), so nothing moves until the gateways answer."""
    if t.stable is not None and t.latest is not None and t.latest.demand is not None:
        return None
    return Decision(
        t.current,
        NO_DATA,
        f"no demand metrics (no gateway could be read): holding {t.current} replica(s)",
        None,
        False,
        t.memory,
    )


def _wake(t: _Tick) -> Decision | None:
    """Wake from zero: the first request must not wait for a window to fill."""
    if t.current != 0:
        return None
    latest = t.latest
    arrived = latest is not None and latest.arrivals > 0
    if arrived or (latest is not None and (latest.demand or 0) > 0) or t.stable_rec > 0:
        want = t.policy.clamp(max(1, t.stable_rec, t.panic_rec))
        if want > 0:
            return t.decide(want, WAKE, f"{t.numbers} → {want} replica(s) (waking from zero)")
    return t.decide(0, STEADY, f"{t.numbers}: staying at zero")


def _up_or_fit(t: _Tick) -> Decision | None:
    """Up to the stable window's need; within ±tolerance of the current capacity nothing
    changes (a noisy load never flaps)."""
    policy, current, stable = t.policy, t.current, t.stable or 0.0
    want = policy.clamp(t.stable_rec)
    if want != current and abs(stable / (current * policy.target) - 1.0) <= policy.tolerance:
        want = current
    if want > current:
        return t.decide(want, SCALE_UP, f"{t.numbers} → {want} replica(s)")
    if want == current:
        return t.decide(current, STEADY, f"{t.numbers}: {current} replica(s) fit")
    return None


def _partial(t: _Tick) -> Decision | None:
    """Some gateway could not be read: the sum is a lower bound, so never scale down."""
    if t.latest is None or t.latest.complete:
        return None
    return t.decide(
        t.current, NO_DATA, f"{t.numbers}: some gateway could not be read, so demand may "
        f"be higher: holding {t.current} replica(s)",
    )  # fmt: skip


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
