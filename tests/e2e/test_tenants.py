"""Tenants on the local cluster: two namespaces claim the same model name; no namespace can
take the other's traffic (docs/gateway.md, "Tenants").

The operator watches both namespaces and the gateway discovers both; client keys live in a
Secret, one unscoped and one bound to each namespace (`namespace.<ns>` data keys).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from tests.e2e.conftest import (
    E2ECluster,
    HedgeProcess,
    condition,
    fresh_namespace,
    get_md,
    metric_sum,
    wait_for,
    wait_ready,
)
from tests.e2e.test_gateway import Gateway

SERVED = "shared-llama"


@pytest.fixture
def other_namespace(cluster: E2ECluster) -> Iterator[str]:
    yield from fresh_namespace(cluster)


def model_deployment(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "hedge.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "llama", "namespace": namespace},
        "spec": {
            "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "name": SERVED},
            "resources": {"gpus": 1, "gpuType": "nvidia-a100-80gb"},
        },
    }


def events(cluster: E2ECluster, namespace: str, reason: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get(f"/api/v1/namespaces/{namespace}/events")["items"]
    return [e for e in items if e.get("reason") == reason]


def test_no_namespace_takes_another_namespaces_traffic(
    cluster: E2ECluster,
    namespace: str,
    other_namespace: str,
    crd: None,
    hedge_process: Callable[..., HedgeProcess],
) -> None:
    team_a, team_b = namespace, other_namespace
    keys = {
        "keys": "admin-key",
        f"namespace.{team_a}": "key-a",
        f"namespace.{team_b}": "key-b",
    }
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "client-keys", "namespace": team_a},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in keys.items()},
        }
    )
    operator = hedge_process(
        "operator", "--namespace", team_a, "--namespace", team_b,
        "--metrics-port", "0", "--health-port", "0",
    )  # fmt: skip
    gateway_args = [
        "gateway", "--kubeconfig", str(cluster.kubeconfig),
        "--namespace", team_a, "--namespace", team_b,
        "--api-keys-secret", f"{team_a}/client-keys",
        "--port", "0", "--admin-port", "0", "--drain-delay", "0",
    ]  # fmt: skip
    gateway = Gateway(hedge_process(*gateway_args))

    # team-a serves the name first; team-b claims it later.
    cluster.apply(model_deployment(team_a))
    wait_ready(cluster, team_a, "llama")
    cluster.apply(model_deployment(team_b))

    def conflicted() -> dict[str, Any] | None:
        ready = condition(get_md(cluster, team_b, "llama"), "Ready")
        return ready if ready.get("reason") == "ModelNameConflict" else None

    ready = wait_for(conflicted, 60, "team-b's ModelNameConflict")
    assert ready["status"] == "False"
    assert f"already served by {team_a}/llama" in ready["message"]
    assert f"only as {team_b}/{SERVED}" in ready["message"]
    warning = wait_for(
        lambda: events(cluster, team_b, "ModelNameConflict"), 30, "the ModelNameConflict Event"
    )
    assert warning[0]["type"] == "Warning"
    assert condition(get_md(cluster, team_a, "llama"), "Ready")["status"] == "True"
    # team-b's pods run all the same: it is served under its qualified name.
    wait_for(
        lambda: get_md(cluster, team_b, "llama").get("status", {}).get("readyReplicas") == 1,
        90,
        "team-b's pod ready",
    )

    def ask(key: str, model: str) -> str:
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0) as client:
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
        text = gateway.metrics()
        a = metric_sum(text, "hedge_gateway_demand_arrivals_total", namespace=team_a)
        b = metric_sum(text, "hedge_gateway_demand_arrivals_total", namespace=team_b)
        return f"{a:.0f}/{b:.0f}"  # arrivals so far: team-a's / team-b's

    def routes_both() -> bool:
        text = gateway.metrics()
        return all(
            metric_sum(text, "hedge_gateway_backends", model=label, state="available") >= 1
            for label in (SERVED, f"{team_b}/{SERVED}")
        )

    wait_for(routes_both, 60, "the gateway to route both ModelDeployments")
    assert ask("admin-key", SERVED) == "1/0"  # the bare name: the older claim
    assert ask("key-b", SERVED) == "1/1"  # a team-b key: team-b's model
    assert ask("admin-key", f"{team_b}/{SERVED}") == "1/2"  # qualified
    assert ask("key-a", SERVED) == "2/2"
    with pytest.raises(openai.NotFoundError):
        ask("key-b", f"{team_a}/{SERVED}")

    # team-a deletes its model: team-b's claim becomes the bare name's owner (Ready), but
    # team-a's clients get 404 — never team-b's model.
    cluster.kubectl("delete", "md", "llama", "-n", team_a, "--wait=false")
    wait_for(
        lambda: condition(get_md(cluster, team_b, "llama"), "Ready").get("status") == "True",
        60,
        "team-b's ModelDeployment Ready once the name is free",
    )

    def team_a_gone() -> bool:
        try:
            ask("key-a", SERVED)
        except openai.NotFoundError:
            return True
        return False

    wait_for(team_a_gone, 30, "team-a's key to find no model")
    assert ask("admin-key", SERVED).endswith("/3")  # the bare name is team-b's now
    operator.assert_running()
