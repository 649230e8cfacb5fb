"""Pure status computation: spec + observed children -> `.status` (counts, conditions), and
the Events that a status transition deserves.

Conditions follow the Kubernetes API conventions: Ready, Progressing and Degraded are always
present, each with reason, message, lastTransitionTime and observedGeneration;
lastTransitionTime only moves when the condition's status changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hedge_core.api import ModelDeployment
from hedge_operator.builders import selector_string, service_url
from hedge_operator.names import MODEL_NAME_CONFLICT
from hedge_operator.observed import DeploymentSummary, Observed, PodProblem
from hedge_operator.validation import Problem

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
CONDITION_TYPES = (READY, PROGRESSING, DEGRADED)

# Which pod problem to report when pods show several: the most actionable first.
PROBLEM_ORDER = (
    "ImagePullBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
    "Unschedulable",
)


@dataclass(frozen=True)
class ObjectRef:
    name: str
    namespace: str
    generation: int


@dataclass(frozen=True)
class EventSpec:
    type: str  # Normal | Warning
    reason: str
    message: str


def _condition(
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int,
    previous: Mapping[str, Mapping[str, Any]],
    now: str,
) -> dict[str, Any]:
    before = previous.get(type_)
    if before is not None and before.get("status") == status and before.get("lastTransitionTime"):
        since = str(before["lastTransitionTime"])
    else:
        since = now
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:4096],
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


def worst_pod_problem(observed: Observed, revision: str | None) -> PodProblem | None:
    """The most actionable problem among pods that are not ready, current revision first."""
    problems = [p for p in observed.pods if p.problem is not None and not p.deleting]
    if not problems:
        return None

    def rank(pod: Any) -> tuple[int, int, str]:
        reason = pod.problem.reason
        order = PROBLEM_ORDER.index(reason) if reason in PROBLEM_ORDER else len(PROBLEM_ORDER)
        return (0 if pod.revision == revision else 1, order, pod.name)

    worst = min(problems, key=rank).problem
    assert worst is not None
    return worst


def compute_status(
    ref: ObjectRef,
    md: ModelDeployment | None,
    observed: Observed,
    *,
    revision: str | None,
    problem: Problem | None,
    previous: Mapping[str, Any] | None,
    now: str,
    name_conflict: Problem | None = None,
) -> dict[str, Any]:
    """The full `.status` for this generation. `md` is None when the spec does not parse;
    `problem` is the spec-level problem (invalid spec, missing Secret, failed apply);
    `name_conflict` an older ModelDeployment owning a name this one claims (the pods run and
    serve the qualified name, but Ready is False: the bare name does not reach them)."""
    previous = previous or {}
    prev_conditions = {
        str(c.get("type")): c for c in previous.get("conditions") or [] if isinstance(c, Mapping)
    }
    deployments = observed.deployment_summaries()
    current = next((d for d in deployments if revision and d.revision == revision), None)
    olds = [d for d in deployments if d is not current]

    status: dict[str, Any] = {
        "observedGeneration": ref.generation,
        "replicas": sum(d.replicas for d in deployments),
        "readyReplicas": sum(d.ready for d in deployments),
        "updatedReplicas": current.replicas if current else 0,
        "availableReplicas": current.available if current else 0,
        "selector": selector_string(ref.name),
    }
    if revision is not None:
        status["revision"] = revision
    elif previous.get("revision"):
        status["revision"] = previous["revision"]
    if md is not None:
        status["servedModel"] = md.served_model
        status["url"] = service_url(md)
        if md.spec.fallback is not None:
            status["fallback"] = ",".join(p.type for p in md.spec.fallback.providers)
    else:
        for key in ("servedModel", "url", "fallback"):
            if previous.get(key):
                status[key] = previous[key]

    def cond(type_: str, value: str, reason: str, message: str) -> dict[str, Any]:
        return _condition(type_, value, reason, message, ref.generation, prev_conditions, now)

    if problem is not None or md is None:
        problem = problem or Problem("InvalidSpec", "spec could not be read")
        conditions = [
            cond(READY, "False", problem.reason, problem.message),
            cond(
                PROGRESSING,
                "False",
                problem.reason,
                "spec not applied; existing engine pods are left as they are",
            ),
            cond(DEGRADED, "True", problem.reason, problem.message),
        ]
    else:
        conditions = _conditions(md, current, olds, observed, revision, cond)
        if name_conflict is not None:
            conditions = [
                cond(READY, "False", name_conflict.reason, name_conflict.message)
                if c["type"] == READY
                else c
                for c in conditions
            ]
    status["conditions"] = conditions
    return status


def _conditions(
    md: ModelDeployment,
    current: DeploymentSummary | None,
    olds: Sequence[DeploymentSummary],
    observed: Observed,
    revision: str | None,
    cond: Any,
) -> list[dict[str, Any]]:
    desired = md.spec.replicas
    available = current.available if current else 0
    total = sum(d.replicas for d in [*([current] if current else []), *olds])
    current_synced = current is not None and current.synced and (current.spec_replicas == desired)
    at_capacity = current_synced and available >= desired and (desired > 0 or total == 0)
    settled = at_capacity and not olds and total == desired

    pod_problem = worst_pod_problem(observed, revision)
    if pod_problem is None and current is not None and current.deadline_exceeded:
        pod_problem = PodProblem("ProgressDeadlineExceeded", current.deadline_exceeded)

    counts = f"{available}/{desired} replicas ready at revision {revision}"
    if at_capacity:
        ready = cond(READY, "True", "ScaledToZero" if desired == 0 else "ReplicasReady", counts)
    elif pod_problem is not None:
        ready = cond(READY, "False", pod_problem.reason, f"{counts}; {pod_problem.message}")
    elif olds:
        ready = cond(READY, "False", "RollingOut", counts)
    else:
        ready = cond(READY, "False", "ReplicasNotReady", counts)

    if settled:
        progressing = cond(PROGRESSING, "False", "RolloutComplete", counts)
    elif current is None:
        progressing = cond(
            PROGRESSING, "True", "Creating", f"creating the Deployment of revision {revision}"
        )
    elif olds:
        old_names = ", ".join(sorted(d.revision for d in olds))
        progressing = cond(
            PROGRESSING,
            "True",
            "RollingOut",
            f"rolling out revision {revision}, replacing {old_names}; {counts}",
        )
    elif total > desired:
        progressing = cond(PROGRESSING, "True", "ScalingDown", counts)
    else:
        progressing = cond(PROGRESSING, "True", "ScalingUp", counts)

    if pod_problem is not None:
        degraded = cond(DEGRADED, "True", pod_problem.reason, pod_problem.message)
    else:
        degraded = cond(DEGRADED, "False", "AsExpected", "no engine pod problems")
    return [ready, progressing, degraded]


def status_patch(previous: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch taking `previous` to `new` (None deletes a key); empty if equal."""
    previous = previous or {}
    patch: dict[str, Any] = {k: v for k, v in new.items() if previous.get(k) != v}
    for key in previous:
        if key not in new and key != "kopf":
            patch[key] = None
    return patch


def transition_events(
    previous: Mapping[str, Any] | None, new: Mapping[str, Any]
) -> list[EventSpec]:
    """Events for significant transitions: a new revision, and conditions that change status
    or reason (Ready, Degraded, end of a rollout)."""
    previous = previous or {}
    before = {str(c.get("type")): c for c in previous.get("conditions") or []}
    after = {str(c.get("type")): c for c in new.get("conditions") or []}
    events: list[EventSpec] = []

    def changed(type_: str) -> bool:
        old, cur = before.get(type_), after.get(type_)
        if cur is None:
            return False
        return old is None or (old.get("status"), old.get("reason")) != (
            cur.get("status"),
            cur.get("reason"),
        )

    if new.get("revision") and previous.get("revision") != new.get("revision"):
        was = previous.get("revision")
        events.append(
            EventSpec(
                "Normal",
                "NewRevision",
                f"revision {new['revision']}" + (f" replaces {was}" if was else ""),
            )
        )
    ready, degraded, progressing = after.get(READY), after.get(DEGRADED), after.get(PROGRESSING)
    if degraded is not None and changed(DEGRADED):
        if degraded["status"] == "True":
            events.append(EventSpec("Warning", degraded["reason"], degraded["message"]))
        elif before.get(DEGRADED, {}).get("status") == "True":
            events.append(EventSpec("Normal", "Recovered", degraded["message"]))
    if ready is not None and changed(READY) and ready["status"] == "True":
        events.append(EventSpec("Normal", ready["reason"], ready["message"]))
    if ready is not None and changed(READY) and ready["reason"] == MODEL_NAME_CONFLICT:
        events.append(EventSpec("Warning", ready["reason"], ready["message"]))
    if (
        progressing is not None
        and changed(PROGRESSING)
        and progressing["reason"] == "RolloutComplete"
        and before.get(PROGRESSING, {}).get("reason") == "RollingOut"
    ):
        events.append(EventSpec("Normal", "RolloutComplete", progressing["message"]))
    return events
