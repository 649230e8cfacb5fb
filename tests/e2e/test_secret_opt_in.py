"""Fallback provider keys opt in, on the real API server (issue 16, High-2).

A ModelDeployment whose fallback names a Secret without the label
`hedge.dev/provider-key: "true"` is refused (Ready=False, SecretNotOptedIn, a Warning Event
naming the label), with the same message whether that Secret exists or not and nothing about
its keys; labelling the Secret is enough for the operator to proceed, no spec change.
"""

from __future__ import annotations

import json
from typing import Any

from hedge_core.contracts import PROVIDER_KEY_LABEL

from .conftest import E2ECluster, Operator, condition, current, get_md, wait_ready
from .test_modeldeployment import events, example, fast, wait_reason


def with_fallback(name: str, secret: str) -> dict[str, Any]:
    doc = fast(example("quickstart.yaml"))
    doc["metadata"]["name"] = name
    doc["spec"]["model"]["name"] = name
    doc["spec"]["fallback"] = {
        "providers": [
            {
                "type": "OpenAI",
                "model": "gpt-4o-mini",
                "apiKeySecretRef": {"name": secret, "key": "api-key"},
            }
        ]
    }
    return doc


def test_a_provider_key_secret_must_opt_in(
    cluster: E2ECluster, namespace: str, operator: Operator
) -> None:
    # Someone else's Secret, with keys a probe would like to learn about.
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "db"},
            "stringData": {"api-key": "pg-secret-value", "root-password": "hunter2"},
        },
        namespace,
    )
    cluster.apply([with_fallback("probe-db", "db"), with_fallback("probe-none", "nope")], namespace)
    messages = {}
    for name, secret in (("probe-db", "db"), ("probe-none", "nope")):
        try:
            md = wait_reason(
                cluster, namespace, name, "Ready", "False", "SecretNotOptedIn", timeout=120
            )
        except BaseException:
            seen = get_md(cluster, namespace, name)
            log = operator.proc.log() if operator.proc else ""
            raise AssertionError(
                f"{name}: current={current(seen)} status={json.dumps(seen.get('status'))}\n"
                + "\n".join(log.splitlines()[-60:])
            ) from None
        message = condition(md, "Ready")["message"]
        assert f'{PROVIDER_KEY_LABEL}: "true"' in message
        assert f"kubectl label secret {secret} {PROVIDER_KEY_LABEL}=true" in message
        messages[name] = message.replace(f"'{secret}'", "S").replace(f" {secret} ", " S ")
        warned = [m for t, r, m in events(cluster, namespace, name) if r == "SecretNotOptedIn"]
        assert warned and all(t == "Warning" for t, r, _ in events(cluster, namespace, name)
                              if r == "SecretNotOptedIn")  # fmt: skip
        assert "root-password" not in json.dumps([md, warned])
    # An existing, unlabelled Secret reads exactly like none at all: no oracle.
    assert messages["probe-db"] == messages["probe-none"]

    # The owner opts the Secret in: the operator proceeds without a spec change.
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "db", "labels": {PROVIDER_KEY_LABEL: "true"}},
            "stringData": {"api-key": "pg-secret-value", "root-password": "hunter2"},
        },
        namespace,
    )
    md = wait_ready(cluster, namespace, "probe-db", timeout=120)
    assert "pg-secret-value" not in json.dumps(md)
    assert "pg-secret-value" not in (operator.proc.log() if operator.proc else "")
