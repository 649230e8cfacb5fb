"""The API server restarts under the operator and the gateway, and once comes back with
etcd's history compacted, so that every watch resuming from its last resourceVersion gets
410 Gone: both keep working without a restart of their own — new ModelDeployments are
reconciled to Ready and the gateway's routes follow (added and removed)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .conftest import (
    E2ECluster,
    HedgeProcess,
    Operator,
    current,
    get_md,
    scrape,
    wait_for,
    wait_ready,
)
from .test_gateway import Gateway


def model_deployment(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "hedge.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"source": f"hf://org/{name}"},
            "resources": {"gpus": 1},
            "engine": {"podAnnotations": {"sim.hedge.dev/ttft-ms": "1"}},
        },
    }


def wait_reconciled(cluster: E2ECluster, namespace: str, name: str) -> None:
    """The operator has handled this generation: its Deployment exists and status is current.
    (Not Ready: after an API-server restart, kube-controller-manager's own informers can take
    a minute to create the pods, which says nothing about Hedge.)"""

    def done() -> bool:
        md = get_md(cluster, namespace, name)
        deployments = cluster.get_json(
            "deployments", "-n", namespace, "-l", f"hedge.dev/model-deployment={name}"
        )["items"]
        return current(md) and bool(deployments)

    wait_for(done, 90, f"the operator to reconcile {name}")


def routed(gateway: Gateway) -> set[str]:
    return {m["id"] for m in json.loads(scrape(gateway.url + "/v1/models", timeout=2))["data"]}


def start_gateway(
    hedge_process: Callable[..., HedgeProcess],
    namespace: str,
    kubeconfig: str,
    env: dict[str, str] | None = None,
) -> Gateway:
    """`hedge gateway --kubeconfig KUBECONFIG` for one namespace, on ephemeral ports."""
    return Gateway(
        hedge_process(
            "gateway",
            "--kubeconfig",
            kubeconfig,
            "--namespace",
            namespace,
            "--port",
            "0",
            "--admin-port",
            "0",
            env=env,
        )
    )


def test_operator_and_gateway_survive_api_server_restarts_and_410(
    cluster: E2ECluster,
    namespace: str,
    operator: Operator,
    hedge_process: Callable[..., HedgeProcess],
) -> None:
    gateway = start_gateway(hedge_process, namespace, str(cluster.kubeconfig))
    cluster.apply(model_deployment("one"), namespace)
    wait_ready(cluster, namespace, "one")
    wait_for(lambda: routed(gateway) == {"one"}, 30, "the gateway to route one")

    # A plain restart: the watches reconnect from their resourceVersions.
    cluster.cluster.restart_apiserver()
    cluster.apply(model_deployment("two"), namespace)
    wait_reconciled(cluster, namespace, "two")
    wait_for(lambda: routed(gateway) == {"one", "two"}, 60, "the gateway to route two")

    # History compacted while it is down: every resumed watch gets 410 Gone and lists again.
    cluster.cluster.restart_apiserver(while_down=cluster.cluster.compact_etcd)
    cluster.kubectl("delete", "-n", namespace, "md", "one", "--wait=false")
    cluster.apply(model_deployment("three"), namespace)
    wait_reconciled(cluster, namespace, "three")
    wait_for(lambda: routed(gateway) == {"two", "three"}, 60, "the gateway's routes after 410")
    assert "expired (410 Gone); listing again" in gateway.proc.log()
    gateway.proc.assert_running()
    assert operator.proc is not None
    operator.proc.assert_running()
    # Leave the session's cluster as the next test expects it: the controller manager has
    # caught up too (its informers back off after the restarts).
    wait_ready(cluster, namespace, "three", timeout=180)
