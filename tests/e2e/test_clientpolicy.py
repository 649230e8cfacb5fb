"""ClientPolicy on the real API server and operator (docs/tenants.md, "The ClientPolicy
object"): the CEL rules refuse bad specs with their own messages; the operator marks a
policy Ready=True/KeysFound with status.keys once its labelled Secret is there, and
SecretNotFound or SecretNotLabelled otherwise; `kubectl get clientpolicies` shows the
columns; and no key value appears in the operator's log, the status or the Events."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hedge_core.api import CLIENT_POLICY_KIND
from hedge_core.contracts import CLIENT_KEY_LABEL
from tests.core.clientpolicy_cases import BASE_SPEC, CASES, manifest

from .conftest import API, E2ECluster, Operator, condition, wait_established, wait_for

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "hedge.dev_clientpolicies.yaml"
EXAMPLE = ROOT / "examples" / "tenants" / "clientpolicy.yaml"
VALUES = ("sk-team-a-example-1", "sk-team-a-example-2", "sk-team-a-ci-example")


@pytest.fixture(scope="module")
def cpol_crd(cluster: E2ECluster) -> None:
    """The ClientPolicy CRD, installed before the operator starts (it watches it at once)."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    wait_established(cluster, "clientpolicies.hedge.dev")


@pytest.fixture
def tenant_operator(cpol_crd: None, operator: Operator) -> Iterator[Operator]:
    yield operator


def get_cpol(cluster: E2ECluster, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = cluster.get(f"{API}/namespaces/{namespace}/clientpolicies/{name}")
    return obj


def wait_reason(
    cluster: E2ECluster, namespace: str, name: str, status: str, reason: str
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get_cpol(cluster, namespace, name)
        ready = condition(obj, "Ready")
        current = (obj.get("status") or {}).get("observedGeneration") == obj["metadata"].get(
            "generation"
        )
        return (
            obj
            if current and (ready.get("status"), ready.get("reason")) == (status, reason)
            else None
        )

    return wait_for(check, 60, f"ClientPolicy {name} Ready={status}/{reason}")


def events(cluster: E2ECluster, namespace: str, name: str) -> list[dict[str, Any]]:
    items = cluster.get(f"/api/v1/namespaces/{namespace}/events")["items"]
    return [
        e
        for e in items
        if e["involvedObject"].get("kind") == CLIENT_POLICY_KIND
        and e["involvedObject"].get("name") == name
    ]


def example() -> list[dict[str, Any]]:
    return list(yaml.safe_load_all(EXAMPLE.read_text()))


def test_invalid_policies_are_refused_with_the_cel_message(
    cluster: E2ECluster, namespace: str, cpol_crd: None
) -> None:
    for case in [c for c in CASES if c.cel]:
        proc = cluster.kubectl(
            "apply", "-n", namespace, "--dry-run=server", "-f", "-",
            input=yaml.safe_dump(manifest(case.spec)), check=False,
        )  # fmt: skip
        assert proc.returncode != 0, case.id
        assert case.message in proc.stderr, (case.id, proc.stderr)
    ok = cluster.kubectl(
        "apply", "-n", namespace, "--dry-run=server", "-f", "-",
        input=yaml.safe_dump(manifest(BASE_SPEC)),
    )  # fmt: skip
    assert "created (server dry run)" in ok.stdout


def test_the_example_gets_ready_with_its_keys(
    cluster: E2ECluster, namespace: str, tenant_operator: Operator
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))
    obj = wait_reason(cluster, namespace, "team-a", "True", "KeysFound")
    assert obj["status"]["keys"] == 2
    assert condition(obj, "Ready")["message"] == "2 keys in 1 Secret"
    assert [e["reason"] for e in events(cluster, namespace, "team-a")] == ["KeysFound"]

    out = cluster.kubectl("get", "clientpolicies", "-n", namespace).stdout.splitlines()
    assert out[0].split() == ["NAME", "PRIORITY", "WEIGHT", "KEYS", "READY", "AGE"]
    assert out[1].split()[:5] == ["team-a", "standard", "1", "2", "True"]
    wide = cluster.kubectl("get", "cpol", "-n", namespace, "-o", "wide").stdout
    assert "KeysFound" in wide

    # No key value anywhere the operator writes.
    assert tenant_operator.proc is not None
    written = json.dumps([obj, events(cluster, namespace, "team-a")]) + tenant_operator.proc.log()
    for value in VALUES:
        assert value not in written


def test_a_missing_then_an_unlabelled_secret(
    cluster: E2ECluster, namespace: str, tenant_operator: Operator
) -> None:
    secret, policy = example()
    cluster.apply(policy, namespace)
    obj = wait_reason(cluster, namespace, "team-a", "False", "SecretNotFound")
    assert "'team-a-keys' not found" in condition(obj, "Ready")["message"]

    del secret["metadata"]["labels"]
    cluster.apply(secret, namespace)
    obj = wait_reason(cluster, namespace, "team-a", "False", "SecretNotLabelled")
    assert f"label it {CLIENT_KEY_LABEL}=true" in condition(obj, "Ready")["message"]
    assert "keys" not in obj["status"]
    warned = {e["reason"]: e["type"] for e in events(cluster, namespace, "team-a")}
    assert warned == {"SecretNotFound": "Warning", "SecretNotLabelled": "Warning"}

    # Labelling the Secret is enough: the resync notices, no spec change needed.
    cluster.kubectl("label", "secret", "team-a-keys", "-n", namespace, f"{CLIENT_KEY_LABEL}=true")
    obj = wait_reason(cluster, namespace, "team-a", "True", "KeysFound")
    assert obj["status"]["keys"] == 2
    assert tenant_operator.proc is not None
    written = json.dumps([obj, events(cluster, namespace, "team-a")]) + tenant_operator.proc.log()
    for value in VALUES:
        assert value not in written
