"""One reconcile against an in-memory API: writes, idempotence, drift, bad input."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest

from hedge_operator.config import OperatorConfig
from hedge_operator.kube import ApiError
from hedge_operator.provisioning.observed import Observed, summarize_pod
from hedge_operator.reconcile.reconciler import Outcome, Reconciler, RetryableError
from tests.operator.factories import as_served, body, pod_body, spec_with


class FakeKube:
    """The API server as the reconciler sees it, counting every request."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.secrets: dict[str, frozenset[str]] = {}
        self.requests: list[tuple[str, ...]] = []
        self.events: list[tuple[str, str, str]] = []
        self.fail: dict[str, ApiError] = {}

    def _maybe_fail(self, verb: str) -> None:
        if verb in self.fail:
            raise self.fail[verb]

    async def apply(self, manifest: Mapping[str, Any]) -> Mapping[str, Any]:
        key = (str(manifest["kind"]), str(manifest["metadata"]["name"]))
        self.requests.append(("apply", *key))
        self._maybe_fail("apply")
        self.objects[key] = as_served(manifest)
        return self.objects[key]

    async def get_child(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> Mapping[str, Any] | None:
        self.requests.append(("get", kind, name))
        return self.objects.get((kind, name))

    async def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        self.requests.append(("scale", name, str(replicas)))
        self.objects[("Deployment", name)]["spec"]["replicas"] = replicas

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self.requests.append(("delete", kind, name))
        self.objects.pop((kind, name), None)

    async def secret_keys(self, namespace: str, name: str) -> frozenset[str] | None:
        self.requests.append(("get", "Secret", name))
        self._maybe_fail("get")
        return self.secrets.get(name)

    async def post_event(
        self, involved: Mapping[str, Any], type_: str, reason: str, message: str
    ) -> None:
        self.requests.append(("event", reason))
        self.events.append((type_, reason, message))

    def observed(self) -> Observed:
        def kind(k: str) -> dict[str, Any]:
            return {name: obj for (kk, name), obj in self.objects.items() if kk == k}

        return Observed(
            deployments=kind("Deployment"),
            services=kind("Service"),
            pdbs=kind("PodDisruptionBudget"),
            pvcs=kind("PersistentVolumeClaim"),
            netpols=kind("NetworkPolicy"),
        )

    def writes(self) -> list[tuple[str, ...]]:
        return [r for r in self.requests if r[0] in ("apply", "scale", "delete")]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reconciler(kube: FakeKube, clock: Clock) -> Reconciler:
    return Reconciler(kube, OperatorConfig(), clock=clock, now=lambda: "2026-05-01T12:00:00Z")


async def settle(reconciler: Reconciler, kube: FakeKube, obj: dict[str, Any]) -> Outcome:
    """Reconcile and write the status back to `obj`, as the API server would."""
    outcome = await reconciler.reconcile(obj, kube.observed(), trigger="test")
    obj["status"] = outcome.status
    return outcome


def ready(outcome: Outcome) -> tuple[str, str]:
    c = next(c for c in outcome.status["conditions"] if c["type"] == "Ready")
    return c["status"], c["reason"]


async def test_first_reconcile_creates_children_then_nothing(
    reconciler: Reconciler, kube: FakeKube, clock: Clock
) -> None:
    obj = body(spec_with(cache={"size": "20Gi"}))
    first = await settle(reconciler, kube, obj)
    assert first.problem is None
    assert sorted(k for _, k, _ in kube.writes()) == [
        "Deployment",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Service",
        "Service",  # the revision's own (headless), for the gateway
    ]
    assert first.patch["observedGeneration"] == 1
    assert {c["type"] for c in first.patch["conditions"]} == {
        "Ready",
        "Progressing",
        "Degraded",
        "Reconciling",
        "Stalled",
    }
    revision = first.status["revision"]
    assert first.status["rollout"] == {"strategy": "RollingUpdate", "stableRevision": revision}
    assert [e[1] for e in kube.events] == ["NewRevision"]

    # Second reconcile: the children are as applied, so no write; the pods became ready,
    # so the status changes and the transition gets its Event.
    kube.requests.clear()
    clock.t += 60  # well past the in-flight window: the observed state alone decides
    second = await settle(reconciler, kube, obj)
    assert kube.writes() == []
    assert ready(second) == ("True", "ReplicasReady")
    assert kube.requests == [("event", "ReplicasReady")]
    assert second.patch.keys() <= {
        "conditions",
        "replicas",
        "readyReplicas",
        "updatedReplicas",
        "availableReplicas",
    }

    # Third reconcile, nothing changed at all: not one request, no status patch.
    kube.requests.clear()
    third = await settle(reconciler, kube, obj)
    assert kube.requests == [] and third.requests == 0 and third.patch == {}


async def test_writes_in_flight_are_not_repeated_before_the_watch_shows_them(
    reconciler: Reconciler, kube: FakeKube
) -> None:
    obj = body()
    await reconciler.reconcile(obj, Observed(), trigger="test")
    kube.requests.clear()
    await reconciler.reconcile(obj, Observed(), trigger="test")  # the watch lags
    assert kube.writes() == []


async def test_deleted_child_is_repaired_with_an_event(
    reconciler: Reconciler, kube: FakeKube, clock: Clock
) -> None:
    obj = body()
    await settle(reconciler, kube, obj)
    clock.t += 60
    await settle(reconciler, kube, obj)
    del kube.objects[("Service", "llama")]
    kube.requests.clear()
    await settle(reconciler, kube, obj)
    assert kube.writes() == [("apply", "Service", "llama")]
    assert (
        "Normal",
        "DriftRepaired",
        "recreated Service llama (deleted outside the operator)",
    ) in kube.events


async def test_edited_child_is_repaired(
    reconciler: Reconciler, kube: FakeKube, clock: Clock
) -> None:
    obj = body()
    await settle(reconciler, kube, obj)
    clock.t += 60
    (dep_key,) = [k for k in kube.objects if k[0] == "Deployment"]
    kube.objects[dep_key]["spec"]["template"]["spec"]["containers"][0]["image"] = "x:latest"
    kube.requests.clear()
    await settle(reconciler, kube, obj)
    assert kube.writes() == [("apply", *dep_key)]
    assert kube.objects[dep_key]["spec"]["template"]["spec"]["containers"][0]["image"].startswith(
        "vllm/vllm-openai:"
    )


async def test_spec_edit_rolls_a_new_revision(
    reconciler: Reconciler, kube: FakeKube, clock: Clock
) -> None:
    obj = body()
    await settle(reconciler, kube, obj)
    (old_key,) = [k for k in kube.objects if k[0] == "Deployment"]
    clock.t += 60
    obj["spec"]["engine"] = {"maxModelLen": 4096}
    obj["metadata"]["generation"] = 2
    kube.requests.clear()
    outcome = await settle(reconciler, kube, obj)
    new_keys = [k for k in kube.objects if k[0] == "Deployment" and k != old_key]
    assert len(new_keys) == 1
    assert outcome.status["revision"] == new_keys[0][1].removeprefix("llama-")
    # maxSurge 0, maxUnavailable 1 (the defaults): the old revision's one pod may go first,
    # and this fake has no pods holding GPUs, so the new one is asked for at once.
    assert ("delete", *old_key) in kube.writes()
    assert kube.objects[new_keys[0]]["spec"]["replicas"] == 1
    assert ("Normal", "NewRevision") in [(t, r) for t, r, _ in kube.events]
    assert ("Normal", "RolloutStarted") in [(t, r) for t, r, _ in kube.events]
    # The next reconcile sees the new revision ready (as_served): the rollout is complete.
    clock.t += 60
    kube.requests.clear()
    outcome = await settle(reconciler, kube, obj)
    assert kube.writes() == []
    assert outcome.status["rollout"]["stableRevision"] == outcome.status["revision"]
    assert ("Normal", "RolloutCompleted") in [(t, r) for t, r, _ in kube.events]


async def test_a_new_pod_waits_for_the_gpu_of_the_pod_it_replaces(
    reconciler: Reconciler, kube: FakeKube, clock: Clock
) -> None:
    obj = body()
    await settle(reconciler, kube, obj)
    (old_key,) = [k for k in kube.objects if k[0] == "Deployment"]
    old_revision = old_key[1].removeprefix("llama-")
    obj["spec"]["engine"] = {"maxModelLen": 4096}
    obj["metadata"]["generation"] = 2
    clock.t += 60
    # The old pod is still there (and will terminate for a while after its Deployment goes).
    pod = summarize_pod(pod_body("llama-old-1", old_revision, ready=True))
    outcome = await reconciler.reconcile(obj, replace(kube.observed(), pods=[pod]), trigger="t")
    obj["status"] = outcome.status
    new_key = next(k for k in kube.objects if k[0] == "Deployment" and k != old_key)
    assert ("delete", *old_key) in kube.writes()
    assert kube.objects[new_key]["spec"]["replicas"] == 0  # its GPU is not free yet
    assert outcome.recheck_after == Reconciler.ROLLOUT_TICK  # the rollout ticks on

    terminating = summarize_pod(pod_body("llama-old-1", old_revision, deleting=True))
    clock.t += 60
    await reconciler.reconcile(obj, replace(kube.observed(), pods=[terminating]), trigger="t")
    assert kube.objects[new_key]["spec"]["replicas"] == 0  # terminating: it holds the GPU

    clock.t += 60
    await reconciler.reconcile(obj, kube.observed(), trigger="t")  # the pod is gone
    assert kube.objects[new_key]["spec"]["replicas"] == 1


@pytest.mark.parametrize(
    ("change", "reason", "fragment"),
    [
        ({"resources": {"gpuType": "nvidia-b300"}}, "UnknownGPUType", "'nvidia-b300'"),
        ({"engine": {"extraArgs": ["--max-model-len", "9"]}}, "ConflictingArgs", "--max-model-len"),
        ({"replicas": -2}, "InvalidSpec", "spec.replicas: must be at least 0"),
        (
            {"engine": {"tensorParallelSize": 3}},
            "InvalidSpec",
            "engine.tensorParallelSize * engine.pipelineParallelSize must equal resources.gpus",
        ),
    ],
)
async def test_bad_input_is_ready_false_with_a_precise_reason(
    reconciler: Reconciler, kube: FakeKube, change: dict[str, Any], reason: str, fragment: str
) -> None:
    obj = body(spec_with(**change))
    outcome = await settle(reconciler, kube, obj)
    assert kube.writes() == []
    assert outcome.problem is not None and outcome.problem.reason == reason
    assert ready(outcome) == ("False", reason)
    message = next(c["message"] for c in outcome.status["conditions"] if c["type"] == "Ready")
    assert fragment in message
    assert [(t, r) for t, r, _ in kube.events] == [("Warning", reason)]
    # Asking again changes nothing and says nothing new.
    kube.requests.clear()
    again = await settle(reconciler, kube, obj)
    assert kube.requests == [] and again.patch == {}


async def test_bad_edit_leaves_the_running_revision_alone(
    reconciler: Reconciler, kube: FakeKube, clock: Clock
) -> None:
    obj = body()
    await settle(reconciler, kube, obj)
    before = dict(kube.objects)
    clock.t += 60
    obj["spec"]["resources"]["gpuType"] = "nvidia-b300"
    obj["metadata"]["generation"] = 2
    kube.requests.clear()
    outcome = await settle(reconciler, kube, obj)
    assert kube.writes() == [] and kube.objects == before
    assert outcome.status["readyReplicas"] == 1 and ready(outcome) == ("False", "UnknownGPUType")


async def test_missing_secret_waits_then_proceeds(
    reconciler: Reconciler, kube: FakeKube, clock: Clock
) -> None:
    obj = body(spec_with(model={"credentialsSecretRef": {"name": "hf"}}))
    outcome = await settle(reconciler, kube, obj)
    assert outcome.problem is not None and outcome.problem.reason == "SecretNotFound"
    assert outcome.problem.waiting
    assert kube.writes() == [] and ("get", "Secret", "hf") in kube.requests

    # Within the retry window the lookup is not repeated.
    kube.requests.clear()
    await settle(reconciler, kube, obj)
    assert kube.requests == []

    kube.secrets["hf"] = frozenset({"token"})
    clock.t += Reconciler.SECRETS_MISSING_TTL + 1
    outcome = await settle(reconciler, kube, obj)
    assert outcome.problem is None
    assert [w[1] for w in kube.writes()] == [
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Service",
    ]
    assert ("Normal", "Recovered") in [(t, r) for t, r, _ in kube.events]


async def test_refused_apply_is_reported(reconciler: Reconciler, kube: FakeKube) -> None:
    kube.fail["apply"] = ApiError(422, "Invalid", "spec.template: Invalid value")
    outcome = await settle(reconciler, kube, body())
    assert outcome.problem is not None and outcome.problem.reason == "ApplyFailed"
    assert "spec.template: Invalid value" in outcome.problem.message
    assert ready(outcome) == ("False", "ApplyFailed")


async def test_server_trouble_is_retryable(reconciler: Reconciler, kube: FakeKube) -> None:
    kube.fail["apply"] = ApiError(503, "ServiceUnavailable", "etcd is down")
    with pytest.raises(RetryableError):
        await reconciler.reconcile(body(), Observed(), trigger="test")


async def test_object_being_deleted_is_left_to_the_garbage_collector(
    reconciler: Reconciler, kube: FakeKube
) -> None:
    obj = body()
    obj["metadata"]["deletionTimestamp"] = "2026-05-01T12:00:00Z"
    outcome = await reconciler.reconcile(obj, Observed(), trigger="test")
    assert kube.requests == [] and outcome.patch == {}


async def test_children_of_a_deleted_namesake_are_not_ours(
    reconciler: Reconciler, kube: FakeKube, clock: Clock
) -> None:
    await settle(reconciler, kube, body(uid="old-uid"))
    clock.t += 60
    kube.requests.clear()
    fresh = body(uid="new-uid")
    await settle(reconciler, kube, fresh)
    applied = kube.writes()
    assert len(applied) == 5  # re-applied: the new owner reference must be set
    for obj in kube.objects.values():
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "new-uid"


async def test_secret_values_never_reach_status_or_events(
    reconciler: Reconciler, kube: FakeKube
) -> None:
    obj = body(spec_with(model={"credentialsSecretRef": {"name": "hf"}}))
    kube.secrets["hf"] = frozenset({"token"})
    outcome = await settle(reconciler, kube, obj)
    text = repr(outcome.status) + repr(kube.events) + repr(kube.objects)
    assert "hf_" not in text  # nothing that looks like a token; only names travel
    env = next(iter(o for k, o in kube.objects.items() if k[0] == "Deployment"))["spec"][
        "template"
    ]["spec"]["containers"][0]["env"]
    assert {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}},
    } in env


async def test_child_deleted_right_after_creation_is_recreated(
    reconciler: Reconciler, kube: FakeKube
) -> None:
    obj = body()
    first = await settle(reconciler, kube, obj)
    assert first.recheck_after is not None  # the watch has not shown the writes yet
    # The watch shows the Service, then someone deletes it, all within the in-flight window.
    seen = kube.observed()
    await reconciler.reconcile(obj, seen, trigger="test")
    del kube.objects[("Service", "llama")]
    kube.requests.clear()
    outcome = await settle(reconciler, kube, obj)
    assert kube.writes() == [("apply", "Service", "llama")]
    assert outcome.recheck_after is not None
    kube.requests.clear()
    done = await settle(reconciler, kube, obj)
    assert kube.writes() == [] and done.recheck_after is None


async def test_secret_the_operator_may_not_read_is_passed_on_unchecked(
    reconciler: Reconciler, kube: FakeKube
) -> None:
    """Secret reads are granted only in the namespaces that hold keys (the chart's
    rbac.secretNamespaces); elsewhere a reference is not a reason to stop."""
    kube.fail["get"] = ApiError.from_status(403, "Forbidden", 'secrets "hf" is forbidden')
    obj = body(spec_with(model={"credentialsSecretRef": {"name": "hf"}}))
    outcome = await reconciler.reconcile(obj, kube.observed(), trigger="spec")
    assert outcome.problem is None
    assert [w[1] for w in kube.writes()].count("Deployment") == 1
    kube.fail["get"] = ApiError(500, "InternalError", "etcd timeout")
    other = body(spec_with(model={"credentialsSecretRef": {"name": "hf"}}), uid="uid-2")
    with pytest.raises(RetryableError):
        await reconciler.reconcile(other, kube.observed(), trigger="spec")


# ----------------------------------------------------------------------- autoscaling


AUTOSCALED = spec_with(replicas=0, autoscaling={"minReplicas": 0, "maxReplicas": 4})


def engine_replicas(kube: FakeKube) -> int:
    (deployment,) = [o for (k, _), o in kube.objects.items() if k == "Deployment"]
    return int(deployment["spec"]["replicas"])


async def test_autoscaled_models_start_at_spec_replicas_then_follow_the_autoscaler(
    reconciler: Reconciler, kube: FakeKube
) -> None:
    obj = body(AUTOSCALED)
    first = await settle(reconciler, kube, obj)
    assert engine_replicas(kube) == 0
    assert first.status["autoscaling"]["desiredReplicas"] == 0
    assert first.status["autoscaling"]["reason"] == "Initial"

    # The autoscaler's decision: the Deployment follows, status says why, an Event too.
    decision = {"desiredReplicas": 2, "reason": "WakeFromZero", "message": "demand 1 → 2"}
    outcome = await reconciler.reconcile(obj, kube.observed(), trigger="autoscale",
                                         autoscaling=decision)  # fmt: skip
    obj["status"] = outcome.status
    assert engine_replicas(kube) == 2
    assert outcome.status["autoscaling"] == decision
    assert ("Normal", "WakeFromZero", "0 → 2 replica(s): demand 1 → 2") in kube.events
    # Ready compares with the autoscaler's count, not spec.replicas.
    assert "0/2 replicas ready" in next(
        c["message"] for c in outcome.status["conditions"] if c["type"] == "Ready"
    )

    # Any later reconcile (a child event, a spec change) keeps the autoscaler's count: the
    # spec never changed, so a GitOps tool sees no drift and the operator writes no spec.
    again = await settle(reconciler, kube, obj)
    assert engine_replicas(kube) == 2 and again.status["autoscaling"] == decision
    assert obj["spec"]["replicas"] == 0

    # Bounds lowered below the decision: they apply at once.
    obj["spec"]["autoscaling"]["maxReplicas"] = 1
    await settle(reconciler, kube, obj)
    assert engine_replicas(kube) == 1


async def test_a_restarted_operator_keeps_the_count_from_status(kube: FakeKube) -> None:
    status = {"autoscaling": {"desiredReplicas": 3, "reason": "ScaleUp", "message": "x"}}
    obj = body(AUTOSCALED, status=status)
    fresh = Reconciler(kube, OperatorConfig(), now=lambda: "2026-05-01T12:00:00Z")
    outcome = await settle(fresh, kube, obj)
    assert engine_replicas(kube) == 3
    assert outcome.status["autoscaling"]["desiredReplicas"] == 3


async def test_without_autoscaling_spec_replicas_rules_and_status_has_no_decision(
    reconciler: Reconciler, kube: FakeKube
) -> None:
    obj = body(AUTOSCALED)
    await settle(reconciler, kube, obj)
    await reconciler.reconcile(obj, kube.observed(), trigger="autoscale",
                               autoscaling={"desiredReplicas": 4, "reason": "ScaleUp",
                                            "message": "m"})  # fmt: skip
    del obj["spec"]["autoscaling"]
    obj["spec"]["replicas"] = 2  # kubectl scale
    outcome = await settle(reconciler, kube, obj)
    assert engine_replicas(kube) == 2
    assert "autoscaling" not in outcome.status
    assert outcome.patch.get("autoscaling", "absent") is None  # removed from status


async def test_losing_the_metrics_is_a_warning_event(
    reconciler: Reconciler, kube: FakeKube
) -> None:
    obj = body(AUTOSCALED)
    await settle(reconciler, kube, obj)
    blind = {"desiredReplicas": 0, "reason": "NoMetrics", "message": "no gateway could be read"}
    await reconciler.reconcile(obj, kube.observed(), trigger="autoscale", autoscaling=blind)
    assert ("Warning", "NoMetrics", "no gateway could be read") in kube.events


def condition_of(outcome: Outcome, type_: str) -> dict[str, Any]:
    return dict(next(c for c in outcome.status["conditions"] if c["type"] == type_))


async def test_a_hand_made_object_under_a_childs_name_is_never_taken_over(
    reconciler: Reconciler, kube: FakeKube
) -> None:
    """A hand-made `llama` Service (no owner reference): server-side apply with force would
    make it ours and the garbage collector would delete it with the ModelDeployment."""
    hand_made = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "llama", "namespace": "team-a", "labels": {"app": "mine"}},
        "spec": {"selector": {"app": "mine"}, "ports": [{"port": 80}]},
    }
    kube.objects[("Service", "llama")] = copy.deepcopy(hand_made)
    outcome = await settle(reconciler, kube, body())
    assert ("apply", "Service", "llama") not in kube.writes()
    assert kube.objects[("Service", "llama")] == hand_made
    assert outcome.problem is not None and outcome.problem.reason == "NameInUse"
    cond = condition_of(outcome, "Ready")
    assert (cond["status"], cond["reason"]) == ("False", "NameInUse")
    assert (
        "Service llama already exists and is not owned by this ModelDeployment" in (cond["message"])
    )
    assert any(r == "NameInUse" for _, r, _ in kube.events)
    # the other children are still made (the Deployment, the PDB, the revision Service)
    assert ("PodDisruptionBudget", "llama") in kube.objects


async def test_a_model_deployment_named_like_anothers_revision_service_is_refused(
    reconciler: Reconciler, kube: FakeKube
) -> None:
    """MD `llama-<rev>`'s Service would be MD `llama`'s revision Service: the later one
    reports NameInUse instead of the two fighting over it."""
    first = await settle(reconciler, kube, body())
    squat = f"llama-{first.status['revision']}"
    owner_before = kube.objects[("Service", squat)]["metadata"]["ownerReferences"]
    outcome = await settle(reconciler, kube, body(name=squat, uid="uid-2"))
    assert outcome.problem is not None and outcome.problem.reason == "NameInUse"
    assert f"Service {squat} already exists" in outcome.problem.message
    assert "controlled by ModelDeployment llama" in outcome.problem.message
    assert kube.objects[("Service", squat)]["metadata"]["ownerReferences"] == owner_before
