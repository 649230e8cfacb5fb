"""Placement on the local cluster (docs/placement.md): engine pods find the nodes their
accelerator profile describes and carry the platform's pod settings, against the real
scheduler, admission and kwok nodes shaped like each platform's GPU nodes.

Nodes added here get their own pod subnets and are removed at the end of each test (the
session's cluster is shared, and other tests count the default nodes' GPUs).
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hedge_core.kube import NotFound
from hedge_dev.ledger import GpuLedger

from .conftest import (
    E2ECluster,
    HedgeProcess,
    Operator,
    condition,
    get_md,
    wait_for,
    wait_ready,
)

SIM = {"sim.hedge.dev/ttft-ms": "5", "sim.hedge.dev/itl-ms": "1"}


def kwok_node(
    name: str,
    subnet: int,
    octet: int,
    *,
    labels: dict[str, str],
    taints: list[dict[str, str]],
    resources: dict[str, str],
) -> dict[str, Any]:
    pod_cidr = f"127.{octet}.{subnet}.0/24"
    capacity = {"cpu": "64", "memory": "512Gi", "pods": "110", "ephemeral-storage": "1Ti"}
    capacity.update(resources)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                **labels,
            },
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr], "taints": taints},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


@pytest.fixture
def nodes(cluster: E2ECluster) -> Iterator[Callable[[dict[str, Any]], str]]:
    """Adds a kwok node (waits until it is Ready); every node added is deleted afterwards."""
    added: list[str] = []

    def add(manifest: dict[str, Any]) -> str:
        name = str(manifest["metadata"]["name"])
        cluster.api.request("POST", "/api/v1/nodes", manifest)
        added.append(name)

        def ready() -> bool:
            node = cluster.get(f"/api/v1/nodes/{name}")
            return condition(node, "Ready").get("status") == "True"

        wait_for(ready, 30, f"node {name} Ready")
        return name

    yield add
    for name in added:
        with contextlib.suppress(NotFound):
            cluster.api.request("DELETE", f"/api/v1/nodes/{name}")


def octet(cluster: E2ECluster) -> int:
    state = cluster.cluster.state()
    assert state is not None
    return state.octet


def engine_pods(cluster: E2ECluster, namespace: str) -> list[dict[str, Any]]:
    pods = cluster.get(
        f"/api/v1/namespaces/{namespace}/pods?labelSelector=hedge.dev/component%3Dengine"
    )["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def model_deployment(name: str, **spec: Any) -> dict[str, Any]:
    engine = spec.pop("engine", {})
    return {
        "apiVersion": "hedge.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"source": "hf://org/tiny", "name": name},
            "engine": {"podAnnotations": SIM, **engine},
            **spec,
        },
    }


def profiles_file(tmp_path: Path, profiles: dict[str, Any], name: str = "profiles.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"acceleratorProfiles": profiles}))
    return path


# ------------------------------------------------------------------ pod settings


def test_pod_settings_place_the_pods_and_reach_them(
    cluster: E2ECluster,
    namespace: str,
    operator: Operator,
    nodes: Callable[[dict[str, Any]], str],
) -> None:
    """A toleration, a node affinity, a priority class, a pull secret and a service account:
    the pods land where the affinity says (on a tainted node no other pod may use) and
    carry every setting; the API server admitted each one."""
    pool = f"pool-{namespace}"
    node = nodes(
        kwok_node(
            f"{namespace}-dedicated",
            100,
            octet(cluster),
            labels={"hedge.e2e/pool": pool, "nvidia.com/gpu.product": "NVIDIA-L4"},
            taints=[
                {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
                {"key": "hedge.e2e/dedicated", "value": namespace, "effect": "NoSchedule"},
            ],
            resources={"nvidia.com/gpu": "2"},
        )
    )
    priority = f"inference-{namespace}"
    cluster.api.request(
        "POST",
        "/apis/scheduling.k8s.io/v1/priorityclasses",
        {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": priority},
            "value": 100000,
        },
    )
    try:
        docker = base64.b64encode(json.dumps({"auths": {}}).encode()).decode()
        cluster.api.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/secrets",
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "registry-creds"},
                "type": "kubernetes.io/dockerconfigjson",
                "data": {".dockerconfigjson": docker},
            },
        )
        cluster.api.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts",
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "vllm-reader"}},
        )
        pod_settings = {
            "tolerations": [
                {"key": "hedge.e2e/dedicated", "value": namespace, "effect": "NoSchedule"}
            ],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "hedge.e2e/pool", "operator": "In", "values": [pool]}
                                ]
                            }
                        ]
                    }
                }
            },
            "priorityClassName": priority,
            "imagePullSecrets": [{"name": "registry-creds"}],
            "serviceAccountName": "vllm-reader",
            "labels": {"team": "search"},
            "annotations": {"example.com/owner": "search"},
        }
        cluster.apply(
            model_deployment(
                "placed",
                replicas=2,
                resources={"gpus": 1, "gpuType": "nvidia-l4"},
                engine={"pod": pod_settings},
            ),
            namespace,
        )
        wait_ready(cluster, namespace, "placed", replicas=2, timeout=90)
        pods = engine_pods(cluster, namespace)
        assert len(pods) == 2
        for pod in pods:
            spec = pod["spec"]
            assert spec["nodeName"] == node
            assert spec["priorityClassName"] == priority
            assert spec["priority"] == 100000  # the admission plugin resolved the class
            assert spec["imagePullSecrets"] == [{"name": "registry-creds"}]
            assert spec["serviceAccountName"] == "vllm-reader"
            assert spec["automountServiceAccountToken"] is False
            assert {"key": "hedge.e2e/dedicated", "operator": "Equal", "value": namespace,
                    "effect": "NoSchedule"} in spec["tolerations"]  # fmt: skip
            assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
            assert pod["metadata"]["labels"]["team"] == "search"
            assert pod["metadata"]["annotations"]["example.com/owner"] == "search"
    finally:
        cluster.api.request("DELETE", f"/apis/scheduling.k8s.io/v1/priorityclasses/{priority}")


def test_settings_that_fight_hedge_are_refused(
    cluster: E2ECluster, namespace: str, operator: Operator
) -> None:
    """What the CRD can judge is refused at `kubectl apply`; what needs the profile (a
    node selector that contradicts it) is a Ready=False condition and an Event, and
    nothing is created for it."""
    gpu = model_deployment(
        "greedy",
        resources={"gpus": 1, "gpuType": "nvidia-l4"},
        engine={"pod": {"extraResources": {"nvidia.com/gpu": 8}}},
    )
    proc = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(gpu), check=False
    )
    assert proc.returncode != 0
    assert "engine.pod.extraResources: only extended resources other than the GPU" in proc.stderr
    label = model_deployment("squat", engine={"pod": {"labels": {"hedge.dev/revision": "x"}}})
    proc = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(label), check=False
    )
    assert proc.returncode != 0 and "are set by the operator" in proc.stderr

    contradicting = model_deployment(
        "elsewhere",
        resources={"gpus": 1, "gpuType": "nvidia-l4"},
        engine={"pod": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}}},
    )
    cluster.apply(contradicting, namespace)

    def refused() -> dict[str, Any] | None:
        ready = condition(get_md(cluster, namespace, "elsewhere"), "Ready")
        return ready if ready.get("reason") == "InvalidPodSettings" else None

    ready = wait_for(refused, 30, "elsewhere refused with InvalidPodSettings")
    assert ready["status"] == "False"
    assert "contradicts accelerator profile 'nvidia-l4'" in ready["message"]
    deployments = cluster.get(
        f"/apis/apps/v1/namespaces/{namespace}/deployments"
        "?labelSelector=hedge.dev/model-deployment%3Delsewhere"
    )["items"]
    assert deployments == []


# --------------------------------------------------------------------------- AMD


def amd_profile(namespace: str, image: str) -> dict[str, Any]:
    return {
        "resource": "amd.com/gpu",
        "nodeSelector": {"hedge.e2e/amd-pool": namespace},
        "tolerations": [{"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "image": image,
        "env": [{"name": "VLLM_ROCM_USE_AITER", "value": "1"}],
    }


def test_an_amd_profile_and_its_change_roll_out_on_a_full_node(
    cluster: E2ECluster,
    namespace: str,
    crd: None,
    hedge_process: Callable[..., HedgeProcess],
    nodes: Callable[[dict[str, Any]], str],
    tmp_path: Path,
) -> None:
    """An AMD profile asks for amd.com/gpu and runs its own (ROCm) engine image; when the
    platform team changes the profile's image, every ModelDeployment using it rolls out,
    on a node whose GPUs are all taken, with maxSurge 0: an old pod goes first, and never
    a GPU more than the node has."""
    node = nodes(
        kwok_node(
            f"{namespace}-mi300x",
            101,
            octet(cluster),
            labels={"hedge.e2e/amd-pool": namespace},
            taints=[{"key": "amd.com/gpu", "value": "present", "effect": "NoSchedule"}],
            resources={"amd.com/gpu": "2"},
        )
    )
    first = profiles_file(tmp_path, {"amd-e2e": amd_profile(namespace, "rocm/vllm:e2e-1")})
    op = Operator(hedge_process, namespace, "--accelerator-profiles", str(first)).start()
    ledger = GpuLedger(cluster.kubeconfig, namespace, resource="amd.com/gpu")
    try:
        cluster.apply(
            model_deployment("rocm", replicas=2, resources={"gpus": 1, "gpuType": "amd-e2e"}),
            namespace,
        )
        md = wait_ready(cluster, namespace, "rocm", replicas=2, timeout=90)
        before = md["status"]["revision"]
        for pod in engine_pods(cluster, namespace):
            (engine,) = pod["spec"]["containers"]
            assert engine["image"] == "rocm/vllm:e2e-1"
            assert engine["resources"]["requests"] == {
                "amd.com/gpu": "1", "cpu": "4", "memory": "32Gi"
            }  # fmt: skip
            assert {"name": "VLLM_ROCM_USE_AITER", "value": "1"} in engine["env"]
            assert pod["spec"]["nodeName"] == node
        assert ledger.peak == 2  # the node is full

        # The platform team's change: a new image in the profile, and the operator restarted
        # with it (the chart restarts it when operator.acceleratorProfiles changes).
        op.stop()
        second = profiles_file(
            tmp_path, {"amd-e2e": amd_profile(namespace, "rocm/vllm:e2e-2")}, "profiles-2.yaml"
        )
        Operator(hedge_process, namespace, "--accelerator-profiles", str(second)).start()
        md = wait_ready(cluster, namespace, "rocm", replicas=2, timeout=120, not_revision=before)
        assert md["spec"]["rollout"]["maxSurge"] in ("0", 0)
        images = {p["spec"]["containers"][0]["image"] for p in engine_pods(cluster, namespace)}
        assert images == {"rocm/vllm:e2e-2"}
        assert ledger.peak == 2  # never a GPU more than the node has, and no deadlock
        rollout = md["status"].get("rollout") or {}
        assert rollout.get("stableRevision", md["status"]["revision"]) == md["status"]["revision"]
    finally:
        ledger.close()
