"""The autoscaler's glue: readings and pods in, status.autoscaling and its writes out."""

from __future__ import annotations

from typing import Any

from hedge_operator.autoscaling import policy as scaling
from hedge_operator.autoscaling.step import (
    ModelScaler,
    autoscaling_events,
    deletion_costs,
    effective_replicas,
    pods_of,
    policy_of,
)
from hedge_operator.dataplane.signals import EngineReading, ModelSignals
from hedge_operator.provisioning.observed import PodProblem, PodSummary
from tests.operator.factories import model, spec_with

T0 = 1_780_000_000.0  # wall-clock seconds


def autoscaled(**autoscaling: Any) -> Any:
    return model(
        spec_with(
            replicas=1,
            autoscaling={
                "minReplicas": 0,
                "maxReplicas": 8,
                "targetRequests": 4,
                "stableWindowSeconds": 10,
                "scaleDownDelaySeconds": 5,
                "scaleToZeroAfterSeconds": 20,
                **autoscaling,
            },
        )
    )


def reading(demand: float | None, arrivals: float = 0.0, partial: bool = False) -> ModelSignals:
    return ModelSignals(demand, {}, arrivals, None, None, partial=partial)


def test_policy_and_effective_replicas_follow_the_spec() -> None:
    md = autoscaled(panicWindowSeconds=3, panicThresholdPercent=150)
    policy = policy_of(md.spec.autoscaling)  # type: ignore[arg-type]
    assert (policy.min_replicas, policy.max_replicas, policy.target) == (0, 8, 4.0)
    assert (policy.panic_window, policy.panic_threshold) == (3.0, 1.5)
    assert effective_replicas(md, None) == 1  # spec.replicas: where a new model starts
    assert effective_replicas(md, {"desiredReplicas": 5}) == 5
    assert effective_replicas(md, {"desiredReplicas": 50}) == 8  # bounds apply at once
    plain = model(spec_with(replicas=3))
    assert effective_replicas(plain, {"desiredReplicas": 5}) == 3  # no autoscaling: spec


def test_a_step_writes_at_once_when_the_count_changes_else_at_most_every_refresh() -> None:
    md = autoscaled()
    scaler = ModelScaler()
    status: dict[str, Any] = {"autoscaling": {"desiredReplicas": 1, "reason": "Initial"}}
    first = scaler.step(md, status, reading(2.0, arrivals=1), [], scaling.Pods(ready=1), T0)
    assert first.write  # leaves Initial
    assert first.status["desiredReplicas"] == 1
    assert first.status["lastRequestTime"] == "2026-05-28T20:26:40Z"
    # Numbers moving a second later: no write yet.
    quiet = scaler.step(md, status, reading(2.5), [], scaling.Pods(ready=1), T0 + 1)
    assert not quiet.write and quiet.status is not None
    # A load step: panic, written at once, with the numbers.
    for t in range(2, 5):
        step = scaler.step(md, status, reading(12.0, 1), [], scaling.Pods(ready=1), T0 + t)
        if step.decision.desired > 1:
            break
    assert step.write and step.status["desiredReplicas"] == 3
    assert step.status["reason"] == scaling.PANIC
    assert step.status["lastScaleTime"] == f"2026-05-28T20:26:4{t}Z"
    assert "target 4 per replica" in step.status["message"]
    assert step.current == 1 and not step.scales_down


def test_missing_gateways_are_named_in_the_status() -> None:
    md = autoscaled()
    scaler = ModelScaler()
    status = {"autoscaling": {"desiredReplicas": 2, "reason": "Steady"}}
    step = scaler.step(
        md, status, reading(None), ["http://10.0.0.1:9090/metrics"], scaling.Pods(ready=2), T0
    )
    assert step.write and step.decision.desired == 2
    assert step.status["reason"] == scaling.NO_DATA
    assert "unreadable: http://10.0.0.1:9090/metrics" in step.status["message"]
    unconfigured = ModelScaler().step(md, status, None, [], scaling.Pods(ready=2), T0)
    assert "--gateway-service" in unconfigured.status["message"]
    assert unconfigured.decision.desired == 2


def test_the_last_request_survives_a_restart_through_status() -> None:
    md = autoscaled()
    status = {
        "autoscaling": {
            "desiredReplicas": 1,
            "reason": "Steady",
            "lastRequestTime": "2026-05-28T20:26:40Z",  # T0
        }
    }
    scaler = ModelScaler()  # a fresh operator
    desired = []
    for t in range(0, 30):
        step = scaler.step(md, status, reading(0.0), [], scaling.Pods(ready=1), T0 + t)
        desired.append(step.decision.desired)
    # 20 s without a request counted from the last request in status, not from the restart.
    assert desired.index(0) == 20, desired


def test_pods_as_capacity() -> None:
    def pod(name: str, ready: bool, problem: str | None = None, deleting: bool = False) -> Any:
        return PodSummary(
            name, "r", ready, deleting, PodProblem(problem, "x") if problem else None, "10.0.0.1"
        )

    pods = [
        pod("a", True),
        pod("b", False),  # loading weights
        pod("c", False, "Unschedulable"),  # no free GPU
        pod("d", False, "CrashLoopBackOff"),  # broken: neither capacity nor starting
        pod("e", True, deleting=True),
    ]
    assert pods_of(pods) == scaling.Pods(ready=1, starting=1, unschedulable=1)


def test_deletion_cost_is_the_work_on_each_engine() -> None:
    pods = [
        PodSummary("busy", "r", True, False, None, "10.0.0.1"),
        PodSummary("idle", "r", True, False, None, "10.0.0.2"),
        PodSummary("unread", "r", True, False, None, "10.0.0.3"),
        PodSummary("starting", "r", False, False, None, "10.0.0.4"),
    ]
    engines = {
        "http://10.0.0.1:8000/metrics": EngineReading(running=3, waiting=1.5, kv_cache=0.5),
        "http://10.0.0.2:8000/metrics": EngineReading(running=0, waiting=0, kv_cache=0.0),
    }
    costs = deletion_costs(pods, engines, 8000)
    assert costs == {"busy": 5, "idle": 0, "unread": 1_000_000}


def test_events_on_scale_changes_only() -> None:
    before = {"autoscaling": {"desiredReplicas": 1, "reason": "Steady"}}
    up = {"autoscaling": {"desiredReplicas": 3, "reason": "PanicScaleUp", "message": "m"}}
    assert [(e.type, e.reason, e.message) for e in autoscaling_events(before, up)] == [
        ("Normal", "PanicScaleUp", "1 → 3 replica(s): m")
    ]
    steady = {"autoscaling": {"desiredReplicas": 1, "reason": "Steady", "message": "m"}}
    assert autoscaling_events(before, steady) == []
    assert autoscaling_events(None, up) == []  # the first status is no change
