"""Scheduling diagnosis on the local cluster (docs/placement.md, "Reading the scheduling
conditions"): the real kube-scheduler's and admission's refusals of engine pods, said as
NoMatchingNodes, InsufficientGPUs, UntoleratedTaint, PriorityClassNotFound and
ServiceAccountNotFound within 30 s of creating the ModelDeployment, and Ready once fixed.

Each test's profile selects only the kwok nodes it adds (subnets 110-119), deleted at the
end, so the session's default nodes never match.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import E2ECluster, HedgeProcess, Operator, condition, get_md, wait_for, wait_ready
from .test_placement import SIM, kwok_node, model_deployment, nodes, octet, profiles_file

__all__ = ["nodes"]  # the fixture, imported for the tests here

WITHIN = 30  # seconds from creation to the diagnosis


def profile(key: str, namespace: str) -> dict[str, Any]:
    """A profile whose nodes carry `key=<namespace>`, tolerating the NVIDIA taint (as the
    shipped profiles do; the session's GPU nodes carry it)."""
    return {
        "resource": "nvidia.com/gpu",
        "nodeSelector": {key: namespace},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }


@pytest.fixture
def diag_operator(
    namespace: str, crd: None, hedge_process: Callable[..., HedgeProcess], tmp_path: Path
) -> Operator:
    keys = {"diag-none": "hedge.e2e/diag-none", "diag-full": "hedge.e2e/diag-full",
            "diag-taint": "hedge.e2e/diag-taint", "diag-ok": "hedge.e2e/diag-ok"}  # fmt: skip
    path = profiles_file(tmp_path, {n: profile(k, namespace) for n, k in keys.items()})
    return Operator(hedge_process, namespace, "--accelerator-profiles", str(path)).start()


def diagnosed(
    cluster: E2ECluster, namespace: str, name: str, reason: str, created: float
) -> dict[str, Any]:
    """Waits for Ready=False with that reason, at most WITHIN seconds after `created` (the
    monotonic time before the apply). Prints the time it took (the report's numbers)."""

    def check() -> dict[str, Any] | None:
        ready = condition(get_md(cluster, namespace, name), "Ready")
        if ready.get("reason") == reason and ready["status"] == "False":
            return ready
        raise AssertionError(f"Ready is {ready}")  # wait_for says the last one at the end

    left = max(created + WITHIN - time.monotonic(), 0.1)
    ready = wait_for(check, left, f"{name} Ready=False {reason}", interval=0.3)
    print(
        f"\n{name}: {reason} {time.monotonic() - created:.1f}s after creation: {ready['message']}"
    )
    return ready


def gpu_node(cluster: E2ECluster, name: str, subnet: int, label: dict[str, str], **kw: Any) -> Any:
    taints = kw.get("taints", [])
    gpus = kw.get("gpus", "4")
    return kwok_node(name, subnet, octet(cluster), labels=label, taints=taints,
                     resources={"nvidia.com/gpu": gpus})  # fmt: skip


def test_no_node_matches_the_profile(
    cluster: E2ECluster, namespace: str, diag_operator: Operator
) -> None:
    created = time.monotonic()
    cluster.apply(
        model_deployment("lost", resources={"gpus": 1, "gpuType": "diag-none"}), namespace
    )
    ready = diagnosed(cluster, namespace, "lost", "NoMatchingNodes", created)
    assert f"'diag-none' (hedge.e2e/diag-none={namespace})" in ready["message"]
    assert "didn't match Pod's node affinity/selector" in ready["message"]  # the scheduler's


def test_full_nodes_are_insufficient_gpus(
    cluster: E2ECluster,
    namespace: str,
    diag_operator: Operator,
    nodes: Callable[[dict[str, Any]], str],
) -> None:
    label = {"hedge.e2e/diag-full": namespace}
    nodes(gpu_node(cluster, f"{namespace}-full", 110, label, gpus="1"))
    spec = {"replicas": 2, "resources": {"gpus": 1, "gpuType": "diag-full"}}
    created = time.monotonic()
    cluster.apply(model_deployment("full", **spec), namespace)
    ready = diagnosed(cluster, namespace, "full", "InsufficientGPUs", created)
    assert "1 of 2 replica(s) cannot be scheduled: 1 nvidia.com/gpu (diag-full)" in ready["message"]
    assert "Insufficient nvidia.com/gpu" in ready["message"]


def test_an_untolerated_taint_then_its_toleration(
    cluster: E2ECluster,
    namespace: str,
    diag_operator: Operator,
    nodes: Callable[[dict[str, Any]], str],
) -> None:
    label = {"hedge.e2e/diag-taint": namespace}
    taint = {"key": "hedge.e2e/sku", "value": "gpu", "effect": "NoSchedule"}
    nodes(gpu_node(cluster, f"{namespace}-tainted", 111, label, taints=[taint]))
    resources = {"gpus": 1, "gpuType": "diag-taint"}
    created = time.monotonic()
    cluster.apply(model_deployment("tainted", resources=resources), namespace)
    ready = diagnosed(cluster, namespace, "tainted", "UntoleratedTaint", created)
    assert "spec.engine.pod.tolerations" in ready["message"]
    assert "untolerated taint" in ready["message"]  # the scheduler's own words
    # The scheduler does not name the taint; the nodes the operator lists do.
    assert "hedge.e2e/sku=gpu:NoSchedule" in ready["message"]
    toleration = {"key": "hedge.e2e/sku", "operator": "Equal", "value": "gpu",
                  "effect": "NoSchedule"}  # fmt: skip
    fixed = model_deployment(
        "tainted", resources=resources, engine={"pod": {"tolerations": [toleration]}}
    )
    cluster.apply(fixed, namespace)
    wait_ready(cluster, namespace, "tainted", timeout=60)


def test_missing_priority_class_and_service_account_then_created(
    cluster: E2ECluster,
    namespace: str,
    diag_operator: Operator,
    nodes: Callable[[dict[str, Any]], str],
) -> None:
    nodes(gpu_node(cluster, f"{namespace}-ok", 112, {"hedge.e2e/diag-ok": namespace}))
    resources = {"gpus": 1, "gpuType": "diag-ok"}
    priority = f"diag-{namespace}"
    pod = {"priorityClassName": priority}
    created = time.monotonic()
    cluster.apply(model_deployment("prio", resources=resources, engine={"pod": pod}), namespace)
    cluster.apply(
        model_deployment(
            "robot", resources=resources, engine={"pod": {"serviceAccountName": "robot"}}
        ),
        namespace,
    )
    ready = diagnosed(cluster, namespace, "prio", "PriorityClassNotFound", created)
    assert f"priority class {priority!r}" in ready["message"]
    assert f"no PriorityClass with name {priority} was found" in ready["message"]
    ready = diagnosed(cluster, namespace, "robot", "ServiceAccountNotFound", created)
    assert "service account 'robot'" in ready["message"]
    assert 'serviceaccount "robot" not found' in ready["message"]

    pc = {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
          "metadata": {"name": priority}, "value": 1000}  # fmt: skip
    cluster.api.request("POST", "/apis/scheduling.k8s.io/v1/priorityclasses", pc)
    try:
        sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "robot"}}
        cluster.api.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", sa)
        wait_ready(cluster, namespace, "prio", timeout=90)
        wait_ready(cluster, namespace, "robot", timeout=90)
    finally:
        cluster.api.request("DELETE", f"/apis/scheduling.k8s.io/v1/priorityclasses/{priority}")


def test_a_missing_pull_secret_is_named_and_never_holds_a_serving_pod(
    cluster: E2ECluster,
    namespace: str,
    diag_operator: Operator,
    nodes: Callable[[dict[str, Any]], str],
) -> None:
    """The pod runner shows the kubelet's ImagePullBackOff; a pod that pulls without the
    secret (a public image) is Ready all the same."""
    nodes(gpu_node(cluster, f"{namespace}-pull", 113, {"hedge.e2e/diag-ok": namespace}))
    resources = {"gpus": 1, "gpuType": "diag-ok"}
    pod = {"imagePullSecrets": [{"name": "registry-creds"}]}
    failing = {**SIM, "sim.hedge.dev/container-state": "ImagePullBackOff"}
    created = time.monotonic()
    cluster.apply(
        model_deployment(
            "private", resources=resources, engine={"pod": pod, "podAnnotations": failing}
        ),
        namespace,
    )
    cluster.apply(model_deployment("public", resources=resources, engine={"pod": pod}), namespace)
    ready = diagnosed(cluster, namespace, "private", "ImagePullSecretNotFound", created)
    assert "'registry-creds' (spec.engine.pod.imagePullSecrets)" in ready["message"]

    def with_the_pull_failure() -> dict[str, Any] | None:
        # The secret is named as soon as the pod is not ready; the kubelet's
        # ImagePullBackOff joins the message once the pod shows it.
        now = condition(get_md(cluster, namespace, "private"), "Ready")
        return now if "ImagePullBackOff" in now.get("message", "") else None

    ready = wait_for(with_the_pull_failure, 30, "the pod's ImagePullBackOff in the message")
    assert ready["reason"] == "ImagePullSecretNotFound"
    wait_ready(cluster, namespace, "public", timeout=60)
