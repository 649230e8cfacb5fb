"""The local cluster schedules GPU pods for real and runs engine simulators on loopback IPs."""

from __future__ import annotations

import ipaddress
import socket
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from hedge_core.kube import MERGE_PATCH, ApiError
from hedge_dev.cluster import ClusterError, LocalCluster, _alive

from .conftest import E2ECluster, pod_ready, wait_for

GPU_PRODUCTS = {"NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3"}


def engine_deployment(name: str, replicas: int, gpus: int) -> dict[str, Any]:
    labels = {"app": name, "hedge.dev/component": "engine"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {"sim.hedge.dev/ttft-ms": "1", "sim.hedge.dev/itl-ms": "1"},
                },
                "spec": {
                    "containers": [
                        {
                            "name": "engine",
                            "image": "vllm/vllm-openai:v0.11.0",
                            "args": [
                                "--model",
                                "org/tiny",
                                "--served-model-name",
                                "tiny",
                                "--port",
                                "8000",
                            ],
                            "ports": [{"name": "http", "containerPort": 8000}],
                            "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}},
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                        }
                    ],
                    "tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                },
            },
        },
    }


def service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 8000, "targetPort": "http"}],
        },
    }


def ready_pods(cluster: E2ECluster, namespace: str, app: str, count: int) -> list[dict[str, Any]]:
    pods = cluster.get(f"/api/v1/namespaces/{namespace}/pods?labelSelector=app%3D{app}")["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    ready = [p for p in live if pod_ready(p)]
    return ready if len(ready) == count and len(live) == count else []


def chat(ip: str) -> str:
    client = openai.OpenAI(
        base_url=f"http://{ip}:8000/v1", api_key="unused", max_retries=0, timeout=5
    )
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=4
    )
    assert reply.choices[0].message.content
    return reply.model


def refuses_connections(ip: str, port: int = 8000) -> bool:
    try:
        socket.create_connection((ip, port), timeout=0.5).close()
    except OSError:
        return True
    return False


def test_gpu_deployment_runs_simulators_on_gpu_nodes(cluster: E2ECluster, namespace: str) -> None:
    cluster.apply([engine_deployment("llm", 2, 1), service("llm")], namespace)
    pods = wait_for(lambda: ready_pods(cluster, namespace, "llm", 2), 60, "2 ready engine pods")

    nodes = {n["metadata"]["name"]: n for n in cluster.get("/api/v1/nodes")["items"]}
    for pod in pods:
        node = nodes[pod["spec"]["nodeName"]]
        assert node["metadata"]["labels"].get("nvidia.com/gpu.product") in GPU_PRODUCTS
        ip = pod["status"]["podIP"]
        assert ipaddress.ip_address(ip).is_loopback
        assert chat(ip) == "tiny"

    def both_ready_in_slice() -> bool:
        slices = cluster.get(
            f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
            "?labelSelector=kubernetes.io%2Fservice-name%3Dllm"
        )["items"]
        ready = {
            e["addresses"][0]
            for s in slices
            for e in s.get("endpoints") or []
            if e.get("conditions", {}).get("ready")
        }
        return ready == {p["status"]["podIP"] for p in pods}

    wait_for(both_ready_in_slice, 30, "EndpointSlice listing both pods as ready")

    # The Service's ClusterIP is on loopback too; the pod runner proxies it like kube-proxy.
    cluster_ip = cluster.get(f"/api/v1/namespaces/{namespace}/services/llm")["spec"]["clusterIP"]
    assert ipaddress.ip_address(cluster_ip).is_loopback
    assert wait_for(lambda: chat(cluster_ip), 30, "a chat completion through the Service")

    # Deleting a pod stops its simulator; the replacement pod (kwok may hand it the same IP)
    # answers from a fresh simulator, whose request counter starts at zero again.
    victim = pods[0]
    cluster.kubectl("delete", "pod", "-n", namespace, victim["metadata"]["name"], "--wait=false")
    survivors = {p["metadata"]["name"] for p in pods[1:]}
    new_pods = wait_for(
        lambda: [
            p
            for p in ready_pods(cluster, namespace, "llm", 2)
            if p["metadata"]["name"] not in survivors
            and p["metadata"]["name"] != victim["metadata"]["name"]
        ],
        60,
        "a ready replacement pod",
    )
    new_ip = new_pods[0]["status"]["podIP"]
    assert served_requests(new_ip) == 0
    assert chat(new_ip) == "tiny"
    assert served_requests(new_ip) == 1

    # Scaling down removes a pod without replacement: nothing listens on its IP any more.
    cluster.kubectl("scale", "deployment/llm", "-n", namespace, "--replicas=1")
    remaining = wait_for(lambda: ready_pods(cluster, namespace, "llm", 1), 60, "one pod left")
    gone = {p["status"]["podIP"] for p in [*pods[1:], *new_pods]} - {
        remaining[0]["status"]["podIP"]
    }
    assert len(gone) == 1
    gone_ip = gone.pop()
    wait_for(lambda: refuses_connections(gone_ip), 30, "the removed pod's simulator to stop")


def served_requests(ip: str) -> float:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{ip}:8000/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "vllm:request_success"
        for sample in family.samples
        if sample.name == "vllm:request_success_total"
    )


def test_readiness_follows_simulator_health(cluster: E2ECluster, namespace: str) -> None:
    import json
    import urllib.request

    cluster.apply([engine_deployment("sick", 1, 1)], namespace)
    pod = wait_for(lambda: ready_pods(cluster, namespace, "sick", 1), 60, "ready pod")[0]
    ip = pod["status"]["podIP"]
    request = urllib.request.Request(
        f"http://{ip}:8000/_hedge/sim/faults",
        data=json.dumps({"fail_health": True}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=5).close()
    wait_for(lambda: not ready_pods(cluster, namespace, "sick", 1), 30, "pod to turn NotReady")


def test_the_runner_puts_back_a_status_kwok_overwrote(cluster: E2ECluster, namespace: str) -> None:
    """kwok can apply its start stage to a pod twice (its cache lagging behind its own first
    patch): the second time it writes another pod IP and Ready=False over the runner's
    Ready=True. The runner, as a kubelet, puts its own status back (the flake behind a
    ModelDeployment that never became Ready although its simulator answered)."""
    cluster.apply([engine_deployment("llm", 1, 1)], namespace)
    (pod,) = wait_for(lambda: ready_pods(cluster, namespace, "llm", 1), 60, "a ready engine pod")
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    other = str(ipaddress.ip_address(ip) + 200)
    stale = {  # what kwok's second application of its pod-start-for-runner stage writes
        "status": {
            "podIP": other,
            "podIPs": [{"ip": other}],
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
                {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady"},
            ],
        }
    }
    cluster.api.request(
        "PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}/status", stale,
        content_type=MERGE_PATCH,
    )  # fmt: skip

    def restored() -> bool:
        now = cluster.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
        return now["status"]["podIP"] == ip and pod_ready(now)

    wait_for(restored, 15, f"{name} back at {ip} and Ready")
    assert chat(ip) == "tiny"


def test_pod_asking_for_too_many_gpus_stays_pending(cluster: E2ECluster, namespace: str) -> None:
    cluster.apply([engine_deployment("huge", 1, 64)], namespace)

    def unschedulable() -> dict[str, Any] | None:
        pods = cluster.get(f"/api/v1/namespaces/{namespace}/pods?labelSelector=app%3Dhuge")
        for pod in pods["items"]:
            for cond in pod.get("status", {}).get("conditions", []):
                if cond["type"] == "PodScheduled" and cond.get("reason") == "Unschedulable":
                    return {"pod": pod, "condition": cond}
        return None

    found = wait_for(unschedulable, 30, "PodScheduled=False/Unschedulable")
    assert found["pod"]["status"]["phase"] == "Pending"
    assert "Insufficient nvidia.com/gpu" in found["condition"]["message"]


def test_second_cluster_runs_side_by_side_and_down_leaves_nothing(
    cluster: E2ECluster, tmp_path: Path
) -> None:
    other = LocalCluster("aux", root=tmp_path)
    other.up(nodes=[])
    try:
        status = other.status()
        assert status["running"]
        assert status["apiserver"] != cluster.cluster.status()["apiserver"]
        comps = status["components"]
        pids = [c["pid"] for c in comps.values()]
        ports = [c["port"] for c in comps.values() if c["port"]]
    finally:
        other.down(quiet=True)
    assert not any(_alive(pid) for pid in pids)
    for port in ports:
        with socket.socket() as s:
            # SO_REUSEADDR tolerates TIME_WAIT leftovers but not a socket still listening.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
    assert cluster.cluster.is_up()


def test_crashed_component_is_reported_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = LocalCluster("broken", root=tmp_path)
    original = broken._etcd_cmd
    monkeypatch.setattr(
        broken, "_etcd_cmd", lambda etcd, ports: [*original(etcd, ports), "--no-such-flag"]
    )
    with pytest.raises(ClusterError) as err:
        broken.up(nodes=[], timeout=30)
    message = str(err.value)
    assert "etcd exited" in message
    assert "no-such-flag" in message
    assert broken.state() is None


def draining_engine(name: str, shutdown_timeout: int | None) -> dict[str, Any]:
    """One engine pod that answers slowly (a 40-token stream takes ~4 s), with a preStop
    sleep and, like the operator's, vLLM's --shutdown-timeout (None: vLLM's default, abort)."""
    deployment = engine_deployment(name, 1, 1)
    template = deployment["spec"]["template"]
    template["metadata"]["annotations"]["sim.hedge.dev/itl-ms"] = "100"
    container = template["spec"]["containers"][0]
    if shutdown_timeout is not None:
        container["args"] += ["--shutdown-timeout", str(shutdown_timeout)]
    container["lifecycle"] = {"preStop": {"sleep": {"seconds": 1}}}
    template["spec"]["terminationGracePeriodSeconds"] = 60
    return deployment


def stream_while_deleted(cluster: E2ECluster, namespace: str, app: str) -> tuple[str, float]:
    """Starts a 40-token stream on the pod, deletes the pod once tokens flow; returns the
    stream's outcome ("complete" or the error) and how long the pod object outlived the
    stream's end."""
    (pod,) = wait_for(lambda: ready_pods(cluster, namespace, app, 1), 60, "a ready engine pod")
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    client = openai.OpenAI(
        base_url=f"http://{ip}:8000/v1", api_key="unused", max_retries=0, timeout=30
    )
    outcome = "complete"
    chunks = 0
    try:
        stream = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "count"}], max_tokens=40,
            stream=True,
        )  # fmt: skip
        for _ in stream:
            chunks += 1
            if chunks == 3:
                cluster.kubectl("delete", "pod", "-n", namespace, name, "--wait=false")
        if chunks < 40:
            outcome = f"cut after {chunks} chunks"
    except (openai.APIError, OSError) as exc:
        outcome = f"{type(exc).__name__} after {chunks} chunks"
    finally:
        client.close()
    ended = time.monotonic()
    path = f"/api/v1/namespaces/{namespace}/pods/{name}"

    def gone() -> bool:
        try:
            cluster.get(path)
        except ApiError as exc:
            return exc.status == 404
        return False

    wait_for(gone, 30, f"pod {name} to be removed")
    return outcome, time.monotonic() - ended


def test_a_deleted_engine_pod_drains_its_streams_like_vllm(
    cluster: E2ECluster, namespace: str
) -> None:
    """A kubelet runs preStop, then SIGTERM; vLLM with --shutdown-timeout finishes what it
    is generating, and the pod object goes once the engine has stopped (not at the end of
    the grace period). Without the flag vLLM aborts, and so does the simulator."""
    cluster.apply(draining_engine("drains", shutdown_timeout=30), namespace)
    outcome, lingered = stream_while_deleted(cluster, namespace, "drains")
    assert outcome == "complete"
    assert lingered < 10, lingered  # removed once drained, not after the 60 s grace

    cluster.apply(draining_engine("aborts", shutdown_timeout=None), namespace)
    outcome, _ = stream_while_deleted(cluster, namespace, "aborts")
    assert outcome != "complete"
