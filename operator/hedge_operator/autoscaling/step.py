"""The autoscaler between the data plane's readings and the ModelDeployment's status.

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

from hedge_core.api import AutoscalingSpec, ModelDeployment, rfc3339, unix_seconds
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
    desired = (autoscaling or {}).get("desiredReplicas")
    if isinstance(desired, int) and not isinstance(desired, bool):
        return policy.clamp(desired)
    return policy.clamp(md.spec.replicas)


def initial_status(md: ModelDeployment, now: str) -> dict[str, Any]:
    """status.autoscaling of a model the autoscaler has not decided on yet."""
    replicas = effective_replicas(md, None)
    return {
        "desiredReplicas": replicas,
        "reason": INITIAL,
        "message": f"starting at {replicas} replica(s) (spec.replicas within "
        "minReplicas..maxReplicas) until the first decision",
        "lastScaleTime": now,
    }


def current_status(
    md: ModelDeployment | None,
    previous: Mapping[str, Any],
    latest: dict[str, Any] | None,
    now: str,
) -> dict[str, Any] | None:
    """status.autoscaling: the autoscaler's newest decision (`latest`), else what status
    holds, else the count a new model starts at; none without spec.autoscaling."""
    kept = previous.get("autoscaling")
    if md is None:
        return dict(kept) if isinstance(kept, Mapping) else None
    if md.spec.autoscaling is None:
        return None
    if latest is not None:
        return latest
    if isinstance(kept, Mapping) and "desiredReplicas" in kept:
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
    block: dict[str, Any] | None = None
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
        block = dict(self.block or status.get("autoscaling") or {})
        current = effective_replicas(md, block)
        memory = self.memory or scaling.Memory(
            last_active=unix_seconds(block.get("lastRequestTime"))
        )

        if signals is None:
            demand, arrivals, complete = None, 0.0, True
        else:
            demand, arrivals, complete = signals.total_demand, signals.arrivals, not signals.partial
        self.windows.observe(scaling.Observation(now, demand, arrivals, complete))
        decision = self.windows.decide(policy, current, pods, memory, now)
        self.memory = decision.memory
        message = decision.message
        if decision.reason == scaling.NO_DATA:
            if signals is None:
                message += "; no gateway to read (hedge operator --gateway-service)"
            elif unreadable:
                message += f"; unreadable: {', '.join(unreadable[:3])}"
                if len(unreadable) > 3:
                    message += f" and {len(unreadable) - 3} more"

        new: dict[str, Any] = {
            "desiredReplicas": decision.desired,
            "reason": decision.reason,
            "message": message[:1024],
        }
        if decision.demand is not None:
            new["demand"] = round(decision.demand, 2)
        scaled = decision.desired != current
        last_scale = rfc3339(now) if scaled else block.get("lastScaleTime")
        if last_scale:
            new["lastScaleTime"] = last_scale
        last_active = decision.memory.last_active
        if last_active is not None:
            new["lastRequestTime"] = rfc3339(last_active)

        # Writes: at once when the count changes or the metrics fail or come back; the
        # rest (numbers, the last request) at most every STATUS_REFRESH seconds, and the
        # last request soon enough that a restarted operator does not scale to zero early.
        was_active = unix_seconds(block.get("lastRequestTime"))
        stale_activity = last_active is not None and (
            was_active is None
            or last_active - was_active > min(STATUS_REFRESH, policy.scale_to_zero_after / 4)
        )
        no_data_changed = (block.get("reason") == scaling.NO_DATA) != (
            decision.reason == scaling.NO_DATA
        )
        write = (
            scaled
            or no_data_changed
            or stale_activity
            or (new != block and now - self.written_at >= STATUS_REFRESH)
            or block.get("reason") == INITIAL
        )
        if write:
            self.written_at = now
            self.block = new
        return Step(decision, new if write else block, write, current)


def autoscaling_events(previous: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[Event]:
    """An Event on every change of the replica count, with the numbers; a Warning when the
    autoscaler loses its metrics."""
    before = (previous or {}).get("autoscaling") or {}
    after = new.get("autoscaling") or {}
    if not after:
        return []
    events: list[Event] = []
    was, now = before.get("desiredReplicas"), after.get("desiredReplicas")
    reason = str(after.get("reason") or "")
    if was is not None and now is not None and was != now and reason in SCALE_REASONS:
        events.append(Event("Normal", reason, f"{was} → {now} replica(s): {after['message']}"))
    if reason == scaling.NO_DATA and before.get("reason") != scaling.NO_DATA:
        events.append(Event("Warning", scaling.NO_DATA, str(after.get("message") or "")))
    return events
