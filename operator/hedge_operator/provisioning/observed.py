"""Pure: what the operator sees of a ModelDeployment's children, reduced to plain values.

The kopf indexes keep these summaries (and stripped child bodies) in memory from the watch
streams, so a reconcile reads no object from the API server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from hedge_core.api import REVISION_LABEL

# Which pod problem to report when pods show several: the most actionable first.
PROBLEM_ORDER = (
    "ImagePullBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
    "Unschedulable",
)


# Container waiting reasons that mean the pod will not get ready without a change.
# Image pull errors report as ImagePullBackOff whichever of the two the kubelet shows.
WAITING_PROBLEMS = {
    "CrashLoopBackOff": "CrashLoopBackOff",
    "ImagePullBackOff": "ImagePullBackOff",
    "ErrImagePull": "ImagePullBackOff",
    "InvalidImageName": "ImagePullBackOff",
    "CreateContainerConfigError": "CreateContainerConfigError",
    "CreateContainerError": "CreateContainerError",
}


@dataclass(frozen=True)
class PodProblem:
    reason: str  # one CamelCase word: Unschedulable, CrashLoopBackOff, ImagePullBackOff, …
    message: str


@dataclass(frozen=True)
class PodSummary:
    name: str
    revision: str
    ready: bool
    deleting: bool
    problem: PodProblem | None
    ip: str = ""  # the pod IP once it has one (engine /metrics are read there)
    #: When the problem began, where the pod says (an Unschedulable pod's PodScheduled
    #: lastTransitionTime); the rollout's GPU wait counts from it.
    problem_since: str | None = None
    #: Succeeded or Failed: it holds no GPU any more.
    finished: bool = False
    created: str = ""  # creationTimestamp


@dataclass(frozen=True)
class DeploymentSummary:
    name: str
    revision: str
    spec_replicas: int
    replicas: int  # pods
    ready: int
    updated: int
    available: int
    synced: bool  # status.observedGeneration caught up with metadata.generation
    deadline_exceeded: str | None  # the Progressing=False message, if any
    created: str
    #: ReplicaFailure=True (the ReplicaSet could not create pods: Pod Security admission,
    #: a ResourceQuota, …): (reason, the API server's message).
    replica_failure: tuple[str, str] | None = None


def strip(body: Mapping[str, Any]) -> dict[str, Any]:
    """A plain copy of a child without managedFields (large, never read)."""
    out = {k: _plain(v) for k, v in body.items()}
    meta = dict(out.get("metadata") or {})
    meta.pop("managedFields", None)
    out["metadata"] = meta
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def summarize_pod(body: Mapping[str, Any]) -> PodSummary:
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    ready = (conditions.get("Ready") or {}).get("status") == "True"
    problem = None if ready else pod_problem(meta.get("name", ""), status)
    since = None
    if problem is not None and problem.reason == "Unschedulable":
        scheduled = conditions.get("PodScheduled") or {}
        since = str(scheduled.get("lastTransitionTime") or meta.get("creationTimestamp") or "")
    return PodSummary(
        name=str(meta.get("name", "")),
        revision=str((meta.get("labels") or {}).get(REVISION_LABEL, "")),
        ready=ready,
        deleting=bool(meta.get("deletionTimestamp")),
        problem=problem,
        ip=str(status.get("podIP") or ""),
        problem_since=since or None,
        finished=status.get("phase") in ("Succeeded", "Failed"),
        created=str(meta.get("creationTimestamp") or ""),
    )


def pod_problem(name: str, status: Mapping[str, Any]) -> PodProblem | None:
    scheduled = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), None
    )
    if (
        scheduled
        and scheduled.get("status") == "False"
        and (scheduled.get("reason") == "Unschedulable")
    ):
        return PodProblem("Unschedulable", f"pod {name}: {scheduled.get('message', '')}".strip())
    statuses = [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]
    for cs in statuses:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = WAITING_PROBLEMS.get(waiting.get("reason", ""))
        if reason is None:
            continue
        detail = waiting.get("message") or ""
        last = (cs.get("lastState") or {}).get("terminated") or {}
        if reason == "CrashLoopBackOff" and last:
            detail = (
                f"last exit {last.get('exitCode')} ({last.get('reason', 'Error')}), "
                f"{cs.get('restartCount', 0)} restarts"
            )
        text = f"pod {name} container {cs.get('name')}: {waiting.get('reason')}"
        return PodProblem(reason, f"{text}: {detail}" if detail else text)
    return None


def summarize_deployment(body: Mapping[str, Any]) -> DeploymentSummary:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    deadline = None
    failure = None
    for c in status.get("conditions") or []:
        if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
            deadline = str(c.get("message") or "progress deadline exceeded")
        if c.get("type") == "ReplicaFailure" and c.get("status") == "True":
            failure = (
                str(c.get("reason") or "FailedCreate"),
                str(c.get("message") or "the engine pods could not be created"),
            )
    return DeploymentSummary(
        name=str(meta.get("name", "")),
        revision=str((meta.get("labels") or {}).get(REVISION_LABEL, "")),
        spec_replicas=int(spec.get("replicas", 1)),
        replicas=int(status.get("replicas") or 0),
        ready=int(status.get("readyReplicas") or 0),
        updated=int(status.get("updatedReplicas") or 0),
        available=int(status.get("availableReplicas") or 0),
        synced=int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0),
        deadline_exceeded=deadline,
        created=str(meta.get("creationTimestamp") or ""),
        replica_failure=failure,
    )


@dataclass(frozen=True)
class Observed:
    """The children of one ModelDeployment as last seen (bodies keyed by name)."""

    deployments: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    services: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    pdbs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    pvcs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    pods: Sequence[PodSummary] = ()
    netpols: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def deployment_summaries(self) -> list[DeploymentSummary]:
        return [summarize_deployment(b) for b in self.deployments.values()]

    def by_kind(self, kind: str) -> Mapping[str, Mapping[str, Any]]:
        return {
            "Deployment": self.deployments,
            "Service": self.services,
            "PodDisruptionBudget": self.pdbs,
            "PersistentVolumeClaim": self.pvcs,
            "NetworkPolicy": self.netpols,
        }[kind]


def owned_by(body: Mapping[str, Any], uid: str) -> bool:
    refs = (body.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


def owned_only(observed: Observed, uid: str) -> Observed:
    """Only children owned by this incarnation of the ModelDeployment (a deleted namesake's
    children may still be waiting for the garbage collector)."""
    if not uid:
        return observed

    def mine(objs: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
        return {name: body for name, body in objs.items() if owned_by(body, uid)}

    return replace(
        observed,
        deployments=mine(observed.deployments),
        services=mine(observed.services),
        pdbs=mine(observed.pdbs),
        pvcs=mine(observed.pvcs),
        netpols=mine(observed.netpols),
    )
