"""Pure: the autoscaler between the data plane's readings and the ModelDeployment's status.

Every tick (a kopf timer of about a second per ModelDeployment with spec.autoscaling, on the
active operator only) `ModelScaler.step` feeds the latest reading (`signals.ModelSignals`,
summed over every gateway replica) and the pods into the pure policy (`scaling`) and says
what status.autoscaling should now be, whether it must be written now, and which pods should
go first if the count drops. The status itself is written by the reconciler, the one status
writer, which also sizes the engine Deployments from it (`effective_replicas`):

    spec.autoscaling unset   engine replicas = spec.replicas (kubectl scale, HPA, KEDA)
    spec.autoscaling set     engine replicas = status.autoscaling.desiredReplicas, clamped to
                             the bounds; spec.replicas is only the count a new model starts
                             at, so a GitOps tool never sees the autoscaler's changes as drift

State that must survive an operator restart is in status (lastRequestTime: scale to zero
counts from it); the windows refill, and until they cover scaleDownDelaySeconds nothing
scales down.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hedge_core.api import (
    AutoscalingSpec,
    AutoscalingStatus,
    ModelDeployment,
    rfc3339,
    unix_seconds,
)
from hedge_core.statuses import AUTOSCALING, read, write
from hedge_operator.autoscaling import policy as scaling
from hedge_operator.dataplane.signals import EngineReading, ModelSignals, engine_metrics_url
from hedge_operator.events import Event
from hedge_operator.provisioning.observed import PodSummary

#: Seconds between two decisions of one model (the kopf timer's interval).
TICK = 1.0
#: When only the numbers moved, status is written at most this often.
STATUS_REFRESH = 10.0
#: pod-deletion-cost: the ReplicaSet controller removes the pod with the lowest first.
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
#: The reason of the status a model starts with, before the first decision.
INITIAL = "Initial"
SCALE_REASONS = frozenset(
    {scaling.SCALE_UP, scaling.PANIC, scaling.SCALE_DOWN, scaling.SCALE_TO_ZERO, scaling.WAKE}
)


def policy_of(spec: AutoscalingSpec) -> scaling.Policy:
    return scaling.Policy(
        min_replicas=spec.min_replicas,
        max_replicas=spec.max_replicas,
        target=float(spec.target_requests),
        stable_window=float(spec.stable_window_seconds),
        panic_window=float(spec.panic_window),
        panic_threshold=spec.panic_threshold_percent / 100.0,
        scale_down_delay=float(spec.scale_down_delay_seconds),
        scale_to_zero_after=float(spec.scale_to_zero_after_seconds),
    )


def effective_replicas(md: ModelDeployment, autoscaling: Mapping[str, Any] | None) -> int:
    """The replicas the engine Deployments get (see the module docstring)."""
    spec = md.spec.autoscaling
    if spec is None:
        return md.spec.replicas
    policy = policy_of(spec)
    desired = read(AutoscalingStatus, autoscaling).desired_replicas
    if desired is not None:
        return policy.clamp(desired)
    return policy.clamp(md.spec.replicas)


def initial_status(md: ModelDeployment, now: str) -> dict[str, Any]:
    """status.autoscaling of a model the autoscaler has not decided on yet."""
    replicas = effective_replicas(md, None)
    return write(
        AutoscalingStatus(
            desired_replicas=replicas,
            reason=INITIAL,
            message=f"starting at {replicas} replica(s) (spec.replicas within "
            "minReplicas..maxReplicas) until the first decision",
            last_scale_time=now,
        )
    )


def current_status(
    md: ModelDeployment | None,
    previous: Mapping[str, Any],
    latest: dict[str, Any] | None,
    now: str,
) -> dict[str, Any] | None:
    """status.autoscaling: the autoscaler's newest decision (`latest`), else what status
    holds, else the count a new model starts at; none without spec.autoscaling."""
    kept = previous.get(AUTOSCALING)
    if md is None:
        return dict(kept) if isinstance(kept, Mapping) else None
    if md.spec.autoscaling is None:
        return None
    if latest is not None:
        return latest
    if isinstance(kept, Mapping) and read(AutoscalingStatus, kept).desired_replicas is not None:
        return dict(kept)
    return initial_status(md, now)


def pods_of(summaries: Sequence[PodSummary]) -> scaling.Pods:
    """Ready pods are capacity; pods waiting for a node (no free GPU) are not, and neither
    are pods being deleted; the rest (scheduled, not ready, not failing) are starting."""
    ready = starting = unschedulable = 0
    for pod in summaries:
        if pod.deleting:
            continue
        if pod.ready:
            ready += 1
        elif pod.problem is not None and pod.problem.reason == "Unschedulable":
            unschedulable += 1
        elif pod.problem is None:
            starting += 1
    return scaling.Pods(ready=ready, starting=starting, unschedulable=unschedulable)


def deletion_costs(
    summaries: Sequence[PodSummary], engines: Mapping[str, EngineReading], port: int
) -> dict[str, int]:
    """pod-deletion-cost per ready pod: the requests running and waiting on its engine, so a
    scale-down takes the pod with the least work. A pod whose engine could not be read is
    kept last (its work is unknown)."""
    costs: dict[str, int] = {}
    for pod in summaries:
        if pod.deleting or not pod.ready or not pod.ip:
            continue
        reading = engines.get(engine_metrics_url(pod.ip, port))
        costs[pod.name] = (
            1_000_000 if reading is None else math.ceil(reading.running + reading.waiting)
        )
    return costs


@dataclass(frozen=True)
class Step:
    """What one tick decided."""

    decision: scaling.Decision
    status: dict[str, Any]  # the new status.autoscaling
    write: bool  # status must be written now (else it waits for the next refresh)
    current: int  # what the model was asked to have before this tick

    @property
    def scales_down(self) -> bool:
        return 0 < self.decision.desired < self.current


@dataclass
class ModelScaler:
    """One ModelDeployment's windows and the last status block it produced."""

    windows: scaling.Autoscaler = field(default_factory=scaling.Autoscaler)
    block: AutoscalingStatus | None = None
    written_at: float = -math.inf
    #: When a request was last seen, to the tick (status keeps it to the second, and only
    #: every few seconds: it is what a restarted operator starts from).
    memory: scaling.Memory | None = None

    def step(
        self,
        md: ModelDeployment,
        status: Mapping[str, Any],
        signals: ModelSignals | None,
        unreadable: Sequence[str],
        pods: scaling.Pods,
        now: float,
    ) -> Step:
        """One decision at `now` (wall-clock seconds). `status` is the object's status as
        the operator last saw it; `signals` None: no gateway is configured at all."""
        spec = md.spec.autoscaling
        assert spec is not None
        policy = policy_of(spec)
        block = self.block or read(AutoscalingStatus, status.get(AUTOSCALING))
        current = effective_replicas(md, write(block))
        memory = self.memory or scaling.Memory(last_active=unix_seconds(block.last_request_time))

        if signals is None:
            demand, arrivals, complete = None, 0.0, True
        else:
            demand, arrivals, complete = signals.total_demand, signals.arrivals, not signals.partial
        self.windows.observe(scaling.Observation(now, demand, arrivals, complete))
        decision = self.windows.decide(policy, current, pods, memory, now)
        self.memory = decision.memory
        scaled = decision.desired != current
        last_active = decision.memory.last_active
        new = AutoscalingStatus(
            desired_replicas=decision.desired,
            reason=decision.reason,
            message=_explained(decision, signals, unreadable)[:1024],
            demand=round(decision.demand, 2) if decision.demand is not None else None,
            last_scale_time=(rfc3339(now) if scaled else block.last_scale_time) or None,
            last_request_time=rfc3339(last_active) if last_active is not None else None,
        )
        if self._must_write(policy, block, new, scaled, last_active, now):
            self.written_at = now
            self.block = new
            return Step(decision, write(new), True, current)
        return Step(decision, write(block), False, current)

    def _must_write(
        self,
        policy: scaling.Policy,
        block: AutoscalingStatus,
        new: AutoscalingStatus,
        scaled: bool,
        last_active: float | None,
        now: float,
    ) -> bool:
        """At once when the count changes or the metrics fail or come back; the rest (the
        numbers, the last request) at most every STATUS_REFRESH seconds, and the last
        request soon enough that a restarted operator does not scale to zero early."""
        was_active = unix_seconds(block.last_request_time)
        stale_activity = last_active is not None and (
            was_active is None
            or last_active - was_active > min(STATUS_REFRESH, policy.scale_to_zero_after / 4)
        )
        no_data_changed = (block.reason == scaling.NO_DATA) != (new.reason == scaling.NO_DATA)
        return (
            scaled
            or no_data_changed
            or stale_activity
            or (new != block and now - self.written_at >= STATUS_REFRESH)
            or block.reason == INITIAL
        )


def _explained(
    decision: scaling.Decision, signals: ModelSignals | None, unreadable: Sequence[str]
) -> str:
    """The decision's message, and why there are no metrics when there are none."""
    message = decision.message
    if decision.reason != scaling.NO_DATA:
        return message
    if signals is None:
        return message + "; no gateway to read (hedge operator --gateway-service)"
    if unreadable:
        message += f"; unreadable: {', '.join(unreadable[:3])}"
        if len(unreadable) > 3:
            message += f" and {len(unreadable) - 3} more"
    return message


def autoscaling_events(previous: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[Event]:
    """An Event on every change of the replica count, with the numbers; a Warning when the
    autoscaler loses its metrics."""
    if not new.get(AUTOSCALING):
        return []
    before = read(AutoscalingStatus, (previous or {}).get(AUTOSCALING))
    after = read(AutoscalingStatus, new.get(AUTOSCALING))
    events: list[Event] = []
    was, now = before.desired_replicas, after.desired_replicas
    reason = after.reason or ""
    if was is not None and now is not None and was != now and reason in SCALE_REASONS:
        events.append(Event("Normal", reason, f"{was} → {now} replica(s): {after.message}"))
    if reason == scaling.NO_DATA and before.reason != scaling.NO_DATA:
        events.append(Event("Warning", scaling.NO_DATA, after.message or ""))
    return events
