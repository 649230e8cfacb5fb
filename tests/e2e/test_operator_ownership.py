"""What the operator may write, on the real API server (issue 16): it never takes over an
object it did not create (NameInUse), it writes the engine NetworkPolicy (the local cluster
has no network plugin, so the object is checked, not its enforcement), and pods the API
server refuses to create (a ResourceQuota here; Pod Security admission alike) show at once.
"""

from __future__ import annotations

from typing import Any

from hedge_core.kube import NotFound

from .conftest import E2ECluster, Operator, condition, get_md, wait_for

MD = "llama-3-8b"


def quickstart(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "hedge.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": MD},
        "spec": {
            "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "name": MD},
            "resources": {"gpus": 1, "gpuType": "nvidia-a100-80gb"},
            **spec,
        },
    }


def ready_reason(cluster: E2ECluster, namespace: str, reason: str) -> dict[str, Any] | None:
    ready = condition(get_md(cluster, namespace, MD), "Ready")
    return ready if ready.get("reason") == reason else None


def events(cluster: E2ECluster, namespace: str, reason: str) -> list[str]:
    items = cluster.get(f"/api/v1/namespaces/{namespace}/events")["items"]
    return [e.get("message", "") for e in items if e.get("reason") == reason]


def test_a_hand_made_service_is_not_taken_over(
    cluster: E2ECluster, namespace: str, operator: Operator
) -> None:
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": MD, "labels": {"team": "mine"}},
            "spec": {"selector": {"team": "mine"}, "ports": [{"port": 80}]},
        },
        namespace,
    )
    cluster.apply(quickstart(), namespace)
    ready = wait_for(lambda: ready_reason(cluster, namespace, "NameInUse"), 60, "NameInUse")
    assert ready["status"] == "False"
    assert (
        f"Service {MD} already exists and is not owned by this ModelDeployment"
        in (ready["message"])
    )
    wait_for(lambda: events(cluster, namespace, "NameInUse"), 30, "the NameInUse Event")
    svc = cluster.get(f"/api/v1/namespaces/{namespace}/services/{MD}")
    assert not svc["metadata"].get("ownerReferences")
    assert svc["spec"]["selector"] == {"team": "mine"}
    managers = {m.get("manager") for m in svc["metadata"].get("managedFields") or []}
    assert "hedge-operator" not in managers
    # the rest is made: the engine Deployment, whose pods run
    deployments = cluster.get(f"/apis/apps/v1/namespaces/{namespace}/deployments")["items"]
    assert [d["metadata"]["name"] for d in deployments if d["metadata"]["name"].startswith(MD)]


def test_the_engine_network_policy_admits_gateways_operator_and_allow_from(
    cluster: E2ECluster, namespace: str, operator: Operator
) -> None:
    allow = [{"namespaceLabels": {"kubernetes.io/metadata.name": "monitoring"}}]
    cluster.apply(quickstart(serving={"allowFrom": allow}), namespace)
    path = f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies/{MD}"

    def written() -> dict[str, Any] | None:
        try:
            return dict(cluster.get(path))
        except NotFound:  # not yet
            return None

    policy = wait_for(written, 60, "the engine NetworkPolicy")
    md = get_md(cluster, namespace, MD)
    assert policy["metadata"]["ownerReferences"][0]["uid"] == md["metadata"]["uid"]
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == {
        "hedge.dev/model-deployment": MD,
        "hedge.dev/component": "engine",
    }
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"port": 8000, "protocol": "TCP"}]
    sources = rule["from"]
    assert sources[0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "gateway"}
    assert sources[1]["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "operator"}
    assert sources[2] == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    assert len(sources) == 3


def test_pods_refused_by_a_quota_show_at_once(
    cluster: E2ECluster, namespace: str, operator: Operator
) -> None:
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "no-pods"},
            "spec": {"hard": {"pods": "0"}},
        },
        namespace,
    )
    cluster.apply(quickstart(), namespace)
    ready = wait_for(
        lambda: ready_reason(cluster, namespace, "FailedCreate"), 60, "Ready=False FailedCreate"
    )
    assert "exceeded quota" in ready["message"] and "no-pods" in ready["message"]
    degraded = condition(get_md(cluster, namespace, MD), "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "FailedCreate")


def test_the_operator_finds_the_installed_crd_current(operator: Operator) -> None:
    """The CRD the session installed from crds/ is the one this operator was built for (the
    start-up check that catches a CRD Helm did not upgrade)."""
    # The metrics endpoint is up before the check has run: wait for its verdict.
    wait_for(lambda: "ModelDeployment CRD:" in log(operator), 30, "the CRD check")
    assert "ModelDeployment CRD: current" in log(operator), log(operator)[-3000:]
    assert operator.counter("hedge_operator_crd_current") == 1


def log(operator: Operator) -> str:
    return operator.proc.log() if operator.proc is not None else ""
