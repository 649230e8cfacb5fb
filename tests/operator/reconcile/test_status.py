"""Spec + observed children -> status and conditions; transitions -> Events."""

from __future__ import annotations

from typing import Any

import pytest

from hedge_core.api import ModelDeployment, ModelDeploymentStatus, parse
from hedge_operator.config import OperatorConfig
from hedge_operator.placement.profiles import AcceleratorProfile
from hedge_operator.provisioning.builders import revision_of
from hedge_operator.provisioning.observed import Observed, summarize_pod
from hedge_operator.provisioning.validation import Problem
from hedge_operator.reconcile.status import (
    ObjectRef,
    PlacementFacts,
    compute_status,
    status_patch,
    transition_events,
)
from tests.operator.factories import deployment_body, model, pod_body, spec_with

NOW = "2026-05-01T12:00:00Z"
LATER = "2026-05-01T12:05:00Z"


def status_for(
    md: ModelDeployment,
    observed: Observed,
    *,
    problem: Problem | None = None,
    previous: dict[str, Any] | None = None,
    now: str = NOW,
    revision: str | None = "rev-new",
) -> dict[str, Any]:
    ref = ObjectRef(md.name, md.namespace, md.generation)
    return compute_status(
        ref, md, observed, revision=revision, problem=problem, previous=previous, now=now
    )


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def brief(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {t: (c["status"], c["reason"]) for t, c in conditions(status).items()}


def observed(*deployments: dict[str, Any], pods: list[dict[str, Any]] | None = None) -> Observed:
    return Observed(
        deployments={d["metadata"]["name"]: d for d in deployments},
        pods=[summarize_pod(p) for p in pods or []],
    )


def test_all_replicas_ready() -> None:
    md = model(
        spec_with(
            replicas=2,
            fallback={
                "providers": [
                    {
                        "type": "OpenAI",
                        "model": "gpt-4o-mini",
                        "apiKeySecretRef": {"name": "o", "key": "k"},
                    },
                    {
                        "type": "Anthropic",
                        "model": "claude",
                        "apiKeySecretRef": {"name": "a", "key": "k"},
                    },
                ]
            },
        ),
        generation=3,
    )
    status = status_for(
        md, observed(deployment_body("llama-rev-new", "rev-new", spec_replicas=2, ready=2))
    )
    assert brief(status) == {
        "Ready": ("True", "ReplicasReady"),
        "Progressing": ("False", "RolloutComplete"),
        "Degraded": ("False", "AsExpected"),
        "Reconciling": ("False", "RolloutComplete"),  # kstatus: Current
        "Stalled": ("False", "AsExpected"),
    }
    assert status["observedGeneration"] == 3
    assert (status["replicas"], status["readyReplicas"]) == (2, 2)
    assert (status["updatedReplicas"], status["availableReplicas"]) == (2, 2)
    assert status["servedModel"] == "llama-3-8b"
    assert status["url"] == "http://llama.team-a.svc:8000/v1"
    assert status["selector"] == "hedge.dev/model-deployment=llama,hedge.dev/component=engine"
    assert status["revision"] == "rev-new"
    assert status["fallback"] == "OpenAI,Anthropic"
    for c in status["conditions"]:
        assert c["observedGeneration"] == 3 and c["lastTransitionTime"] == NOW
        assert c["message"]
    assert "2/2 replicas ready at revision rev-new" in conditions(status)["Ready"]["message"]
    parse(ModelDeploymentStatus, status)  # the status fits the CRD's status schema


def test_first_reconcile_sets_every_condition() -> None:
    status = status_for(model(), Observed())
    assert brief(status) == {
        "Ready": ("False", "ReplicasNotReady"),
        "Progressing": ("True", "Creating"),
        "Degraded": ("False", "AsExpected"),
        "Reconciling": ("True", "Creating"),  # kstatus: InProgress
        "Stalled": ("False", "AsExpected"),
    }
    assert status["replicas"] == 0 and "fallback" not in status


def test_starting_replicas() -> None:
    status = status_for(
        model(spec_with(replicas=3)),
        observed(deployment_body("llama-rev-new", "rev-new", spec_replicas=3, ready=1)),
    )
    assert brief(status)["Ready"] == ("False", "ReplicasNotReady")
    assert brief(status)["Progressing"] == ("True", "ScalingUp")
    assert "1/3 replicas ready" in conditions(status)["Ready"]["message"]


def test_deployment_not_yet_synced_is_not_ready() -> None:
    dep = deployment_body(
        "llama-rev-new", "rev-new", spec_replicas=1, ready=1, generation=2, observed_generation=1
    )
    assert brief(status_for(model(), observed(dep)))["Ready"][0] == "False"


def test_rolling_out_a_new_revision() -> None:
    old = deployment_body("llama-rev-old", "rev-old", spec_replicas=2, ready=2)
    new = deployment_body("llama-rev-new", "rev-new", spec_replicas=2, ready=0)
    status = status_for(model(spec_with(replicas=2)), observed(old, new))
    assert brief(status)["Ready"] == ("False", "RollingOut")
    assert brief(status)["Progressing"] == ("True", "RollingOut")
    assert "replacing rev-old" in conditions(status)["Progressing"]["message"]
    assert (status["replicas"], status["readyReplicas"], status["updatedReplicas"]) == (4, 2, 2)

    # The new revision serves everything: Ready, while old pods finish going away.
    new = deployment_body("llama-rev-new", "rev-new", spec_replicas=2, ready=2)
    old = deployment_body("llama-rev-old", "rev-old", spec_replicas=0, replicas=1, ready=0)
    status = status_for(model(spec_with(replicas=2)), observed(old, new))
    assert brief(status)["Ready"] == ("True", "ReplicasReady")
    assert brief(status)["Progressing"] == ("True", "RollingOut")


@pytest.mark.parametrize(
    ("pod", "reason", "detail"),
    [
        (
            pod_body("p1", "rev-new", waiting="CrashLoopBackOff"),
            "CrashLoopBackOff",
            "last exit 1 (Error), 3 restarts",
        ),
        (
            pod_body("p1", "rev-new", waiting="ImagePullBackOff"),
            "ImagePullBackOff",
            "ImagePullBackOff details",
        ),
        (pod_body("p1", "rev-new", waiting="ErrImagePull"), "ImagePullBackOff", "ErrImagePull"),
        (
            pod_body("p1", "rev-new", waiting="CreateContainerConfigError"),
            "CreateContainerConfigError",
            "details",
        ),
        (
            pod_body(
                "p1",
                "rev-new",
                unschedulable="0/3 nodes are available: 3 node(s) didn't "
                "match Pod's node affinity/selector.",
            ),
            "NoMatchingNodes",
            "0/3 nodes",
        ),
    ],
)
def test_pod_problems_degrade(pod: dict[str, Any], reason: str, detail: str) -> None:
    dep = deployment_body("llama-rev-new", "rev-new", spec_replicas=1, ready=0)
    status = status_for(model(), observed(dep, pods=[pod]))
    assert brief(status)["Degraded"] == ("True", reason)
    assert brief(status)["Ready"] == ("False", reason)
    assert detail in conditions(status)["Degraded"]["message"]
    assert "pod p1" in conditions(status)["Degraded"]["message"]


def test_worst_problem_prefers_the_current_revision_and_ignores_deleting_pods() -> None:
    dep = deployment_body("llama-rev-new", "rev-new", spec_replicas=1, ready=0)
    pods = [
        pod_body("old", "rev-old", waiting="ImagePullBackOff"),
        pod_body("going", "rev-new", waiting="ImagePullBackOff", deleting=True),
        pod_body("new", "rev-new", unschedulable="no GPU"),
    ]
    status = status_for(model(), observed(dep, pods=pods))
    assert brief(status)["Degraded"] == ("True", "Unschedulable")


def test_ready_pods_have_no_problem() -> None:
    assert summarize_pod(pod_body("p", "r", ready=True)).problem is None


def test_progress_deadline_exceeded_degrades() -> None:
    dep = deployment_body("llama-rev-new", "rev-new", spec_replicas=1, ready=0)
    dep["status"]["conditions"] = [
        {
            "type": "Progressing",
            "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": "ReplicaSet has timed out progressing.",
        }
    ]
    status = status_for(model(), observed(dep))
    assert brief(status)["Degraded"] == ("True", "ProgressDeadlineExceeded")


def test_scaled_to_zero_is_ready() -> None:
    dep = deployment_body("llama-rev-new", "rev-new", spec_replicas=0, ready=0)
    status = status_for(model(spec_with(replicas=0)), observed(dep))
    assert brief(status)["Ready"] == ("True", "ScaledToZero")
    assert brief(status)["Progressing"] == ("False", "RolloutComplete")


def test_spec_problem_sets_ready_false_with_its_reason() -> None:
    problem = Problem("UnknownGPUType", "spec.resources.gpuType 'x' is not in the table")
    dep = deployment_body("llama-rev-old", "rev-old", spec_replicas=1, ready=1)
    status = status_for(
        model(), observed(dep), problem=problem, revision=None, previous={"revision": "rev-old"}
    )
    assert brief(status) == {
        "Ready": ("False", "UnknownGPUType"),
        "Progressing": ("False", "UnknownGPUType"),
        "Degraded": ("True", "UnknownGPUType"),
        "Reconciling": ("False", "UnknownGPUType"),
        "Stalled": ("True", "UnknownGPUType"),  # kstatus: Failed, until the spec changes
    }
    assert conditions(status)["Ready"]["message"] == problem.message
    # What still runs is still reported.
    assert status["readyReplicas"] == 1 and status["revision"] == "rev-old"


def test_unparseable_spec_keeps_what_was_known() -> None:
    ref = ObjectRef("llama", "team-a", 4)
    previous = {"servedModel": "llama-3-8b", "url": "http://llama.team-a.svc:8000/v1"}
    status = compute_status(
        ref,
        None,
        Observed(),
        revision=None,
        problem=Problem("InvalidSpec", "spec.replicas: must be at least 0"),
        previous=previous,
        now=NOW,
    )
    assert brief(status)["Ready"] == ("False", "InvalidSpec")
    assert status["servedModel"] == "llama-3-8b" and status["observedGeneration"] == 4


def test_last_transition_time_moves_only_with_the_status() -> None:
    dep = deployment_body("llama-rev-new", "rev-new", spec_replicas=2, ready=1)
    md = model(spec_with(replicas=2))
    first = status_for(md, observed(dep))
    dep = deployment_body("llama-rev-new", "rev-new", spec_replicas=2, ready=2)
    second = status_for(md, observed(dep), previous=first, now=LATER)
    assert conditions(second)["Ready"]["lastTransitionTime"] == LATER  # False -> True
    assert conditions(second)["Degraded"]["lastTransitionTime"] == NOW  # False -> False
    third = status_for(md, observed(dep), previous=second, now="2026-05-01T13:00:00Z")
    assert third == second
    assert status_patch(second, third) == {}


def test_status_patch_holds_only_changes() -> None:
    assert status_patch({"a": 1, "b": 2, "kopf": {}}, {"a": 1, "b": 3}) == {"b": 3}
    assert status_patch({"a": 1, "fallback": "OpenAI"}, {"a": 1}) == {"fallback": None}
    assert status_patch(None, {"a": 1}) == {"a": 1}
    # A merge patch merges objects: keys gone from a nested one are sent as null.
    before = {"rollout": {"stableRevision": "a", "canaryRevision": "b", "canaryWeight": 50}}
    after = {"rollout": {"stableRevision": "b"}}
    assert status_patch(before, after) == {
        "rollout": {"stableRevision": "b", "canaryRevision": None, "canaryWeight": None}
    }


def test_revision_hash_in_status_matches_the_builder() -> None:
    md = model()
    rev = revision_of(md, OperatorConfig())
    assert status_for(md, Observed(), revision=rev)["revision"] == rev


def test_events_on_transitions() -> None:
    md = model()
    dep0 = deployment_body("llama-rev-new", "rev-new", ready=0)
    dep1 = deployment_body("llama-rev-new", "rev-new", ready=1)
    crash = pod_body("p", "rev-new", waiting="CrashLoopBackOff")

    creating = status_for(md, Observed())
    events = transition_events(None, creating)
    assert [(e.type, e.reason) for e in events] == [("Normal", "NewRevision")]

    broken = status_for(md, observed(dep0, pods=[crash]), previous=creating)
    events = transition_events(creating, broken)
    assert [(e.type, e.reason) for e in events] == [("Warning", "CrashLoopBackOff")]
    assert transition_events(broken, broken) == []

    ready = status_for(md, observed(dep1), previous=broken)
    events = transition_events(broken, ready)
    assert [(e.type, e.reason) for e in events] == [
        ("Normal", "Recovered"),
        ("Normal", "ReplicasReady"),
    ]

    rolled = status_for(md, observed(dep1), previous=ready, revision="rev-2")
    assert ("Normal", "NewRevision") in [
        (e.type, e.reason) for e in transition_events(ready, rolled)
    ]

    bad = status_for(
        md,
        observed(dep1),
        previous=ready,
        problem=Problem("SecretNotFound", "Secret 'hf' not found"),
    )
    events = transition_events(ready, bad)
    assert [(e.type, e.reason, e.message) for e in events] == [
        ("Warning", "SecretNotFound", "Secret 'hf' not found")
    ]


def test_pods_the_api_server_refuses_to_create_show_at_once() -> None:
    """Pod Security admission or a ResourceQuota refuses the engine pods: the ReplicaSet's
    ReplicaFailure (copied onto the Deployment) is Ready=False/Degraded with the API
    server's own message, on the first reconcile that sees it (not after the ~35 min
    progress deadline)."""
    dep = deployment_body("llama-rev-new", "rev-new", spec_replicas=1, ready=0)
    message = (
        'pods "llama-rev-new-abc" is forbidden: violates PodSecurity "restricted:latest": '
        "allowPrivilegeEscalation != false"
    )
    dep["status"]["conditions"] = [
        {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"},
        {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": message},
    ]
    status = status_for(model(), observed(dep))
    assert brief(status)["Degraded"] == ("True", "FailedCreate")
    assert brief(status)["Ready"] == ("False", "FailedCreate")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert message in ready["message"]


def _refused(message: str) -> dict[str, Any]:
    dep = deployment_body("llama-rev-new", "rev-new", spec_replicas=1, ready=0)
    dep["status"]["conditions"] = [
        {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": message},
    ]
    return status_for(model(), observed(dep))


@pytest.mark.parametrize(
    ("message", "reason", "name"),
    [
        (
            'pods "llama-rev-new-abc" is forbidden: no PriorityClass with name gold was found',
            "PriorityClassNotFound",
            "'gold'",
        ),
        (
            'pods "llama-rev-new-abc" is forbidden: error looking up service account '
            'default/robot: serviceaccount "robot" not found',
            "ServiceAccountNotFound",
            "'robot'",
        ),
    ],
)
def test_a_missing_priority_class_or_service_account_is_named(
    message: str, reason: str, name: str
) -> None:
    status = _refused(message)
    assert brief(status)["Ready"] == ("False", reason)
    ready = conditions(status)["Ready"]["message"]
    assert name in ready and message in ready


SCHEDULER = (
    "0/4 nodes are available: {}. preemption: 0/4 nodes are available: "
    "4 Preemption is not helpful for scheduling."
)


def _ready_with(md: Any, pod: dict[str, Any], placement: PlacementFacts) -> Any:
    """Ready's (status, reason) and message for one not-ready pod of the new revision."""
    dep = deployment_body("llama-rev-new", "rev-new", spec_replicas=1, ready=0)
    ref = ObjectRef(md.name, md.namespace, md.generation)
    status = compute_status(
        ref,
        md,
        observed(dep, pods=[pod]),
        revision="rev-new",
        problem=None,
        previous=None,
        now=NOW,
        placement=placement,
    )
    return brief(status)["Ready"], conditions(status)["Ready"]["message"]


def _unschedulable(verdict: str, profile: AcceleratorProfile | None, **spec: Any) -> Any:
    md = model(spec_with(**spec)) if spec else model()
    pod = pod_body("p1", "rev-new", unschedulable=SCHEDULER.format(verdict))
    return _ready_with(md, pod, PlacementFacts(profile=profile))


AMD = AcceleratorProfile(
    name="amd-mi300x", resource="amd.com/gpu", node_selector={"amd.com/gpu.product": "mi300x"}
)


def test_amd_gpus_used_up_are_counted_in_the_profiles_resource() -> None:
    verdict = "1 Insufficient amd.com/gpu, 3 node(s) didn't match Pod's node affinity/selector"
    (state, message) = _unschedulable(verdict, AMD)
    assert state == ("False", "InsufficientGPUs")
    assert "1 of 1 replica(s) cannot be scheduled: 1 amd.com/gpu (amd-mi300x) missing" in message
    assert "didn't match Pod's node affinity/selector" in message  # the scheduler's own


def test_no_node_with_the_profiles_labels() -> None:
    verdict = "4 node(s) didn't match Pod's node affinity/selector"
    (state, message) = _unschedulable(verdict, AMD)
    assert state == ("False", "NoMatchingNodes")
    assert "'amd-mi300x' (amd.com/gpu.product=mi300x)" in message
    assert "0/4 nodes are available" in message and "pod p1" in message


def test_an_untolerated_taint_is_named() -> None:
    verdict = (
        "1 node(s) had untolerated taint {sku: gpu}, "
        "3 node(s) didn't match Pod's node affinity/selector"
    )
    (state, message) = _unschedulable(verdict, AMD)
    assert state == ("False", "UntoleratedTaint")
    assert "sku=gpu" in message and "spec.engine.pod.tolerations" in message


def _pull(pod: dict[str, Any], missing: tuple[str, ...] = ("registry-creds",)) -> Any:
    return _ready_with(model(), pod, PlacementFacts(missing_pull_secrets=missing))


def test_a_missing_pull_secret_is_named_when_the_pull_fails() -> None:
    state, message = _pull(pod_body("p1", "rev-new", waiting="ImagePullBackOff"))
    assert state == ("False", "ImagePullSecretNotFound")
    assert "'registry-creds'" in message and "ImagePullBackOff" in message


def test_a_missing_pull_secret_never_hides_another_problem_or_a_serving_pod() -> None:
    state, _ = _pull(pod_body("p1", "rev-new", waiting="CrashLoopBackOff"))
    assert state == ("False", "CrashLoopBackOff")
    assert _pull(pod_body("p1", "rev-new", waiting="ImagePullBackOff"), ())[0][1] == (
        "ImagePullBackOff"
    )


def test_serving_pods_are_ready_whatever_pull_secret_is_missing() -> None:
    md = model()
    dep = deployment_body("llama-rev-new", "rev-new", spec_replicas=1, ready=1)
    ref = ObjectRef(md.name, md.namespace, md.generation)
    status = compute_status(
        ref,
        md,
        observed(dep, pods=[pod_body("p1", "rev-new", ready=True)]),
        revision="rev-new",
        problem=None,
        previous=None,
        now=NOW,
        placement=PlacementFacts(missing_pull_secrets=("registry-creds",)),
    )
    assert brief(status)["Ready"] == ("True", "ReplicasReady")
