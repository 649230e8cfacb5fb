"""Pure status computation: spec + observed children -> `.status` (counts, conditions), and
the Events that a status transition deserves.

Conditions follow the Kubernetes API conventions: Ready, Progressing and Degraded are always
present, each with reason, message, lastTransitionTime and observedGeneration;
lastTransitionTime only moves when the condition's status changes. Reconciling and Stalled
follow them for kstatus (Flux's health checks, Helm's --wait), which reads only those two on
a custom resource: Reconciling=True while anything moves (a rollout, a paused one included),
Stalled=True when nothing will until the spec changes or a person acts (an aborted rollout,
an invalid spec, a progress deadline passed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from hedge_core.api import (
    AutoscalingStatus,
    Condition,
    FallbackBudgetStatus,
    ModelDeployment,
    ModelDeploymentStatus,
    RolloutStatus,
)
from hedge_core.statuses import read, write
from hedge_operator.events import Event
from hedge_operator.placement.diagnosis import (
    INSUFFICIENT_GPUS,
    NodeCensus,
    creation_refusal,
    diagnose,
    parse_unschedulable,
)
from hedge_operator.placement.profiles import ANY_NVIDIA_GPU, AcceleratorProfile
from hedge_operator.provisioning.builders import selector_string, service_url
from hedge_operator.provisioning.names import MODEL_NAME_CONFLICT
from hedge_operator.provisioning.observed import (
    PROBLEM_ORDER,
    DeploymentSummary,
    Observed,
    PodProblem,
)
from hedge_operator.provisioning.validation import Problem
from hedge_operator.rollout.convert import RolloutReport

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
RECONCILING = "Reconciling"
STALLED = "Stalled"
CONDITION_TYPES = (READY, PROGRESSING, DEGRADED, RECONCILING, STALLED)

ROLLING_OUT = "RollingOut"
ROLLOUT_ABORTED = "RolloutAborted"
ROLLOUT_PAUSED = "RolloutPaused"
#: Degraded reasons that nothing but a change of spec (or a person) will clear.
STALLED_REASONS = frozenset({ROLLOUT_ABORTED, "ProgressDeadlineExceeded"})


@dataclass(frozen=True)
class ObjectRef:
    name: str
    namespace: str
    generation: int


ConditionStatus = Literal["True", "False", "Unknown"]


def _condition(
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int,
    previous: Mapping[str, Condition],
    now: str,
) -> Condition:
    before = previous.get(type_)
    if before is not None and before.status == status and before.last_transition_time:
        since = before.last_transition_time
    else:
        since = now
    return Condition(
        type=type_,
        status=cast(ConditionStatus, status),
        reason=reason,
        message=message[:4096],
        last_transition_time=since,
        observed_generation=generation,
    )


#: Builds one condition of this generation from (type, status, reason, message).
Cond = Callable[[str, str, str, str], Condition]


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


def pod_selector_text(md: ModelDeployment) -> str:
    """spec.engine.pod's own node selector (and that it has a node affinity), which the
    scheduler ANDs with the profile's."""
    pod = md.spec.engine.pod
    parts = [f"{k}={v}" for k, v in sorted(pod.node_selector.items())]
    affinity: Mapping[str, Any] = pod.affinity or {}
    if affinity.get("nodeAffinity"):
        parts.append("spec.engine.pod.affinity's node affinity")
    return ",".join(parts)


def gpu_shortage(
    md: ModelDeployment,
    desired: int,
    observed: Observed,
    problem: PodProblem,
    profile: AcceleratorProfile | None = None,
    census: NodeCensus | None = None,
) -> PodProblem:
    """Unschedulable engine pods said in the profile's terms: no node with its labels
    (NoMatchingNodes), a taint not tolerated (UntoleratedTaint), or GPUs used up
    (InsufficientGPUs: how many replicas, how many GPUs of which resource, and who serves
    the overflow meanwhile). The scheduler's message is kept."""
    gpus = md.spec.resources.gpus
    causes = parse_unschedulable(problem.message)
    if gpus == 0 or causes is None:
        return problem
    profile = profile or ANY_NVIDIA_GPU
    found = diagnose(causes, profile, pod_selector_text(md), census)
    if found is None:
        return problem
    detail = problem.message.split(": ", 1)[-1]
    if found.reason != INSUFFICIENT_GPUS:
        return PodProblem(found.reason, f"{found.summary}: {problem.message}")
    waiting = sum(
        1
        for p in observed.pods
        if not p.deleting and p.problem is not None and p.problem.reason == "Unschedulable"
    )
    named = profile.name or md.spec.resources.gpu_type
    kind = f" ({named})" if named else ""
    fallback = md.spec.fallback
    overflow = (
        "the fallback serves the overflow"
        if fallback is not None and (fallback.on_overload or fallback.on_unavailable)
        else "requests queue at the ready replicas"
    )
    return PodProblem(
        INSUFFICIENT_GPUS,
        f"{waiting} of {desired} replica(s) cannot be scheduled: {waiting * gpus} "
        f"{profile.resource}{kind} missing ({detail}); {overflow}",
    )


IMAGE_PULL_SECRET_NOT_FOUND = "ImagePullSecretNotFound"


def pull_secret_problem(
    md: ModelDeployment, missing: Sequence[str], problem: PodProblem | None
) -> PodProblem | None:
    """Pods not ready while a pull secret is missing: the secret is the likelier cause of
    an image pull failure, or of nothing shown yet (kubelets say it only in an Event). Other
    problems (a node, a crash) stay: a public image needs no secret. Serving pods are never
    held back for it."""
    if problem is not None and problem.reason != "ImagePullBackOff":
        return problem
    names = ", ".join(repr(n) for n in missing)
    text = (
        f"image pull secret(s) {names} (spec.engine.pod.imagePullSecrets) not found in "
        f"namespace {md.namespace!r}: create them or drop the reference"
    )
    return PodProblem(
        IMAGE_PULL_SECRET_NOT_FOUND, f"{text}; {problem.message}" if problem else text
    )


def replica_problem(revision: str | None, reason: str, message: str) -> PodProblem:
    """Pods the API server refused at creation: a missing priority class or service
    account named as such, else the ReplicaSet's own reason."""
    found = creation_refusal(message)
    if found is not None:
        return PodProblem(found.reason, f"{found.summary}: {message}")
    return PodProblem(reason, f"engine pods of revision {revision}: {message}")


@dataclass(frozen=True)
class PlacementFacts:
    """What engine pods that cannot start are explained with: their accelerator profile
    (an Unschedulable pod is told in its terms), spec.engine.pod.imagePullSecrets the
    lookup found absent, and what the nodes show (None: not listed)."""

    profile: AcceleratorProfile | None = None
    missing_pull_secrets: Sequence[str] = ()
    census: NodeCensus | None = None


NO_PLACEMENT_FACTS = PlacementFacts()


def compute_status(
    ref: ObjectRef,
    md: ModelDeployment | None,
    observed: Observed,
    *,
    revision: str | None,
    problem: Problem | None,
    previous: Mapping[str, Any] | None,
    now: str,
    desired_replicas: int | None = None,
    rollout: Mapping[str, Any] | None = None,
    report: RolloutReport | None = None,
    name_conflict: Problem | None = None,
    autoscaling: Mapping[str, Any] | None = None,
    fallback_budget: Mapping[str, Any] | None = None,
    placement: PlacementFacts = NO_PLACEMENT_FACTS,
) -> dict[str, Any]:
    """The full `.status` for this generation. `md` None: the spec does not parse;
    `problem`: the spec-level problem (invalid spec, missing Secret, failed apply);
    `desired_replicas`: what the engine Deployments are sized to (default spec.replicas);
    `rollout`/`report`: status.rollout and the conditions' view of the rollout (None: keep);
    `name_conflict`: an older ModelDeployment owns a name this one claims (Ready=False,
    Stalled=True); `autoscaling`/`fallback_budget`: those blocks as their loops said them;
    `placement`: what pods that cannot start are explained with (PlacementFacts)."""
    before = read(ModelDeploymentStatus, previous)
    prev_conditions = {c.type: c for c in before.conditions}
    deployments = observed.deployment_summaries()
    current = next((d for d in deployments if revision and d.revision == revision), None)
    olds = [d for d in deployments if d is not current]

    def cond(type_: str, value: str, reason: str, message: str) -> Condition:
        return _condition(type_, value, reason, message, ref.generation, prev_conditions, now)

    ready_replicas = sum(d.ready for d in deployments)
    if problem is not None or md is None:
        conditions = _problem_conditions(problem, cond)
    else:
        desired = md.spec.replicas if desired_replicas is None else desired_replicas
        conditions = _conditions(md, desired, current, olds, observed, revision, cond, placement)
        conditions = _adjusted(conditions, report, revision, ready_replicas, name_conflict, cond)
    return write(
        ModelDeploymentStatus(
            observed_generation=ref.generation,
            replicas=sum(d.replicas for d in deployments),
            ready_replicas=ready_replicas,
            updated_replicas=current.replicas if current else 0,
            available_replicas=current.available if current else 0,
            selector=selector_string(ref.name),
            revision=revision if revision is not None else (before.revision or None),
            served_model=md.served_model if md is not None else (before.served_model or None),
            url=service_url(md) if md is not None else (before.url or None),
            fallback=_fallback(md) if md is not None else (before.fallback or None),
            autoscaling=None if autoscaling is None else read(AutoscalingStatus, autoscaling),
            fallback_budget=(
                None if fallback_budget is None else read(FallbackBudgetStatus, fallback_budget)
            ),
            rollout=read(RolloutStatus, rollout) if rollout is not None else before.rollout,
            conditions=conditions,
        )
    )


def _adjusted(
    conditions: list[Condition],
    report: RolloutReport | None,
    revision: str | None,
    ready_replicas: int,
    name_conflict: Problem | None,
    cond: Cond,
) -> list[Condition]:
    """The pods' conditions as the rollout sees them, with kstatus' two, and a name
    conflict over both."""
    if report is not None:
        conditions = _rollout_conditions(conditions, report, revision, ready_replicas, cond)
    conditions = conditions + _kstatus_conditions(conditions, cond)
    if name_conflict is not None:
        conditions = _name_conflict(conditions, name_conflict, cond)
    return conditions


def _fallback(md: ModelDeployment) -> str | None:
    """status.fallback: the provider types, in order."""
    if md.spec.fallback is None:
        return None
    return ",".join(p.type for p in md.spec.fallback.providers)


def _problem_conditions(problem: Problem | None, cond: Cond) -> list[Condition]:
    """A spec that is not applied: not ready, not progressing, degraded; waiting on
    something outside the spec (a Secret) is progress still to come."""
    problem = problem or Problem("InvalidSpec", "spec could not be read")
    return [
        cond(READY, "False", problem.reason, problem.message),
        cond(
            PROGRESSING,
            "False",
            problem.reason,
            "spec not applied; existing engine pods are left as they are",
        ),
        cond(DEGRADED, "True", problem.reason, problem.message),
        cond(RECONCILING, str(problem.waiting), problem.reason, problem.message),
        cond(STALLED, str(not problem.waiting), problem.reason, problem.message),
    ]


def _name_conflict(conditions: list[Condition], conflict: Problem, cond: Cond) -> list[Condition]:
    """The pods serve, but not under the bare name: not Ready, and only a person can settle
    it (Stalled, for kstatus and Flux)."""
    override = {READY: "False", STALLED: "True"}
    return [
        cond(c.type, override[c.type], conflict.reason, conflict.message)
        if c.type in override
        else c
        for c in conditions
    ]


def _rollout_conditions(
    conditions: list[Condition],
    report: RolloutReport,
    revision: str | None,
    ready_replicas: int,
    cond: Cond,
) -> list[Condition]:
    """Ready, Progressing and Degraded as the rollout state machine sees them: an aborted
    revision is not ready and degrades the object (what Argo CD shows as Degraded); a paused
    rollout is neither progressing nor done (Progressing=Unknown, as a paused Deployment)."""
    ready, progressing, degraded = conditions
    if report.aborted is not None:
        what = f"the rollout of revision {revision} was aborted: {report.aborted}"
        serving = f"{ready_replicas} replica(s) ready"
        if report.stable:
            serving += f" at revision {report.stable}"
        return [
            cond(READY, "False", ROLLOUT_ABORTED, f"{what}; {serving}"),
            cond(PROGRESSING, "False", ROLLOUT_ABORTED, what),
            cond(DEGRADED, "True", ROLLOUT_ABORTED, what),
        ]
    if report.paused:
        progressing = cond(PROGRESSING, "Unknown", ROLLOUT_PAUSED, report.message)
    elif report.active and report.message:
        progressing = cond(PROGRESSING, "True", ROLLING_OUT, report.message)
    return [ready, progressing, degraded]


def _kstatus_conditions(conditions: list[Condition], cond: Cond) -> list[Condition]:
    by_type = {c.type: c for c in conditions}
    progressing, degraded = by_type[PROGRESSING], by_type[DEGRADED]
    moving = progressing.status != "False"
    stalled = degraded.status == "True" and degraded.reason in STALLED_REASONS
    return [
        cond(RECONCILING, str(moving), progressing.reason, progressing.message),
        cond(
            STALLED,
            str(stalled),
            degraded.reason if stalled else "AsExpected",
            degraded.message if stalled else "nothing is stuck",
        ),
    ]


def _pod_problem(
    md: ModelDeployment,
    desired: int,
    current: DeploymentSummary | None,
    observed: Observed,
    revision: str | None,
    at_capacity: bool,
    placement: PlacementFacts,
) -> PodProblem | None:
    """Why the current revision's pods do not serve, said as specifically as is known."""
    problem = worst_pod_problem(observed, revision)
    if problem is not None and problem.reason == "Unschedulable":
        problem = gpu_shortage(md, desired, observed, problem, placement.profile, placement.census)
    if problem is None and current is not None and current.replica_failure:
        # Pods refused at creation (admission, quota) never exist to show a problem.
        problem = replica_problem(revision, *current.replica_failure)
    if placement.missing_pull_secrets and not at_capacity:
        problem = pull_secret_problem(md, placement.missing_pull_secrets, problem)
    if problem is None and current is not None and current.deadline_exceeded:
        problem = PodProblem("ProgressDeadlineExceeded", current.deadline_exceeded)
    return problem


def _conditions(
    md: ModelDeployment,
    desired: int,
    current: DeploymentSummary | None,
    olds: Sequence[DeploymentSummary],
    observed: Observed,
    revision: str | None,
    cond: Cond,
    placement: PlacementFacts = NO_PLACEMENT_FACTS,
) -> list[Condition]:
    available = current.available if current else 0
    total = sum(d.replicas for d in [*([current] if current else []), *olds])
    current_synced = current is not None and current.synced and (current.spec_replicas == desired)
    at_capacity = current_synced and available >= desired and (desired > 0 or total == 0)
    settled = at_capacity and not olds and total == desired

    pod_problem = _pod_problem(md, desired, current, observed, revision, at_capacity, placement)

    counts = f"{available}/{desired} replicas ready at revision {revision}"
    if at_capacity:
        ready = cond(READY, "True", "ScaledToZero" if desired == 0 else "ReplicasReady", counts)
    elif pod_problem is not None:
        ready = cond(READY, "False", pod_problem.reason, f"{counts}; {pod_problem.message}")
    elif olds:
        ready = cond(READY, "False", ROLLING_OUT, counts)
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
            ROLLING_OUT,
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
    """The merge patch taking `previous` to `new` (None deletes a key); empty if equal.

    Nested objects are diffed too: a JSON merge patch merges an object into the one there,
    so a key gone from status.rollout (a canary promoted) must be sent as null, or the API
    server keeps the stale one."""
    previous = previous or {}
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = previous.get(key)
        if before == value:
            continue
        if isinstance(before, Mapping) and isinstance(value, Mapping):
            patch[key] = status_patch(before, value)
        else:
            patch[key] = value
    for key in previous:
        if key not in new and key != "kopf":
            patch[key] = None
    return patch


def transition_events(previous: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[Event]:
    """Events for significant transitions: a new revision, and conditions that change status
    or reason (Ready, Degraded, end of a rollout)."""
    was_status = read(ModelDeploymentStatus, previous)
    now_status = read(ModelDeploymentStatus, new)
    before = {c.type: c for c in was_status.conditions}
    after = {c.type: c for c in now_status.conditions}
    events: list[Event] = []

    def changed(type_: str) -> bool:
        old, cur = before.get(type_), after.get(type_)
        if cur is None:
            return False
        return old is None or (old.status, old.reason) != (cur.status, cur.reason)

    if now_status.revision and was_status.revision != now_status.revision:
        was = was_status.revision
        events.append(
            Event(
                "Normal",
                "NewRevision",
                f"revision {now_status.revision}" + (f" replaces {was}" if was else ""),
            )
        )
    ready, degraded, progressing = after.get(READY), after.get(DEGRADED), after.get(PROGRESSING)
    was_degraded, was_progressing = before.get(DEGRADED), before.get(PROGRESSING)
    if degraded is not None and changed(DEGRADED):
        if degraded.reason == ROLLOUT_ABORTED:
            pass  # the rollout posts its own Event, with the numbers
        elif degraded.status == "True":
            events.append(Event("Warning", degraded.reason, degraded.message))
        elif was_degraded is not None and was_degraded.status == "True":
            events.append(Event("Normal", "Recovered", degraded.message))
    if ready is not None and changed(READY) and ready.status == "True":
        events.append(Event("Normal", ready.reason, ready.message))
    if ready is not None and changed(READY) and ready.reason == MODEL_NAME_CONFLICT:
        events.append(Event("Warning", ready.reason, ready.message))
    if (
        progressing is not None
        and changed(PROGRESSING)
        and progressing.reason == "RolloutComplete"
        and was_progressing is not None
        and was_progressing.reason == ROLLING_OUT
    ):
        events.append(Event("Normal", "RolloutComplete", progressing.message))
    return events
