"""The chart is secure by default (issue 16, High-5, Medium-8 and High-2).

- The gateway requires client keys from the Secret `hedge-api-keys` unless a platform team
  turns that off on purpose: an empty `gateway.apiKeys.secretName` refuses to render unless
  `gateway.allowUnauthenticated: true`, and the NOTES then say that auth is off.
- The NOTES show bound keys (`namespace.<ns>`) as the way to give tenants keys.
- `hedge-view` / `hedge-edit` ClusterRoles aggregate ModelDeployment access into the built-in
  `view` / `edit` / `admin` roles, and grant nothing but ModelDeployments.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.chart.chart_support import CHART, Render, containers, one, run_helm


def gateway_args(render: Render, *set_values: str) -> list[str]:
    manifests = render(set_values=set_values)
    (gateway,) = containers(one(manifests, "Deployment", "hedge-gateway"))
    return list(gateway["args"])


def test_the_default_gateway_requires_client_keys(render: Render) -> None:
    assert "--api-keys-secret=hedge-system/hedge-api-keys" in gateway_args(render)


OPEN = (
    "gateway.apiKeys.secretName=",
    "gateway.clientPolicies.enabled=false",
    "gateway.allowUnauthenticated=true",
)


def test_no_client_keys_refuses_to_render_unless_on_purpose(render: Render) -> None:
    with pytest.raises(subprocess.CalledProcessError) as info:
        render(set_values=("gateway.apiKeys.secretName=", "gateway.clientPolicies.enabled=false"))
    assert "gateway.apiKeys.secretName is empty" in info.value.stderr
    assert "gateway.allowUnauthenticated=true" in info.value.stderr

    args = gateway_args(render, *OPEN)
    assert not any(a.startswith(("--api-keys", "--client-policies")) for a in args)


def test_client_policies_alone_are_a_keys_source_and_never_open(render: Render) -> None:
    """Keys from ClientPolicies only (no keys Secret): renders, authentication required;
    combined with allowUnauthenticated it refuses, since the gateway would not be open."""
    args = gateway_args(render, "gateway.apiKeys.secretName=")
    assert "--client-policies" in args
    assert "--quota-share=0.5" in args  # 1 / replicaCount by default
    assert not any(a.startswith("--quota-redis") for a in args)
    with pytest.raises(subprocess.CalledProcessError) as info:
        render(set_values=("gateway.apiKeys.secretName=", "gateway.allowUnauthenticated=true"))
    assert "gateway.clientPolicies.enabled=false as well" in info.value.stderr


def test_the_quota_store_url_travels_in_the_environment_never_the_arguments(
    render: Render,
) -> None:
    manifests = render(
        set_values=(
            "gateway.quotas.redisUrlSecret.name=quota-redis",
            "gateway.replicaCount=3",
        )
    )
    (gateway,) = containers(one(manifests, "Deployment", "hedge-gateway"))
    assert "--quota-redis-url-env=HEDGE_QUOTA_REDIS_URL" in gateway["args"]
    assert "--quota-share=0.3333333333333333" in gateway["args"]
    (env,) = [e for e in gateway["env"] if e["name"] == "HEDGE_QUOTA_REDIS_URL"]
    assert env["valueFrom"] == {"secretKeyRef": {"name": "quota-redis", "key": "url"}}


def test_allow_unauthenticated_alone_does_not_pretend_to_open_the_gateway(render: Render) -> None:
    with pytest.raises(subprocess.CalledProcessError) as info:
        render(set_values=("gateway.allowUnauthenticated=true",))
    assert 'gateway.apiKeys.secretName="" as well' in info.value.stderr


def notes(helm: Path, *set_values: str) -> str:
    args = [a for v in set_values for a in ("--set", v)]
    proc = run_helm(
        helm, "install", "hedge", str(CHART), "--dry-run=client", "--namespace", "hedge-system",
        *args,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("NOTES:", 1)[1]


def test_notes_say_when_auth_is_off_and_show_bound_keys(helm: Path) -> None:
    text = notes(helm, "watchNamespaces={team-a}")
    assert "WARNING" not in text
    assert "--from-literal=namespace.team-a=" in text
    assert "until it exists every request is\n  refused (401)" in text
    assert "Authorization: Bearer $HEDGE_API_KEY" in text

    text = notes(helm, *OPEN)
    assert "WARNING: client authentication is OFF" in text
    assert "HEDGE_API_KEY" not in text


def test_aggregated_roles_for_people(render: Render) -> None:
    manifests = render()
    view = one(manifests, "ClusterRole", "hedge-view")
    edit = one(manifests, "ClusterRole", "hedge-edit")
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in edit["metadata"]["labels"]
    for role in (view, edit):
        assert {g for r in role["rules"] for g in r["apiGroups"]} == {"hedge.dev"}
        assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in role["rules"])
    assert {v for r in view["rules"] for v in r["verbs"]} == {"get", "list", "watch"}
    assert "create" in edit["rules"][0]["verbs"]
    names = {m["metadata"]["name"] for m in render(set_values=("rbac.aggregatedRoles=false",))}
    assert not {"hedge-view", "hedge-edit"} & names
