"""The chart's RBAC grants what the operator and the gateway need, where they need it, and
nothing else: evaluated the way the API server's RBAC authorizer would."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chart.chart_support import CHART, CI_VALUES, Manifest, Render, by_kind

OPERATOR = ("hedge-system", "hedge-operator")
GATEWAY = ("hedge-system", "hedge-gateway")
ANY_NAMESPACE = "some-team"  # a namespace no values file names


@dataclass(frozen=True)
class Request:
    verb: str
    group: str
    resource: str  # "deployments" or "modeldeployments/status"
    namespace: str | None  # None: a cluster-scoped object
    name: str | None = None


def _rule_allows(rule: dict[str, list[str]], req: Request) -> bool:
    if req.group not in rule.get("apiGroups", []) or req.resource not in rule.get("resources", []):
        return False
    if req.verb not in rule.get("verbs", []):
        return False
    names = rule.get("resourceNames")
    return not names or req.name in names


def allowed(manifests: list[Manifest], subject: tuple[str, str], req: Request) -> bool:
    """Whether the ServiceAccount `subject` (namespace, name) may do `req`."""
    roles = {
        (m["kind"], m["metadata"].get("namespace"), m["metadata"]["name"]): m.get("rules", [])
        for m in manifests
        if m["kind"] in ("Role", "ClusterRole")
    }
    for binding in by_kind(manifests, "ClusterRoleBinding") + by_kind(manifests, "RoleBinding"):
        bound = any(
            s["kind"] == "ServiceAccount" and (s["namespace"], s["name"]) == subject
            for s in binding["subjects"]
        )
        if not bound:
            continue
        binding_ns = binding["metadata"].get("namespace")
        if binding_ns is not None and binding_ns != req.namespace:
            continue  # a RoleBinding grants only inside its own namespace
        ref = binding["roleRef"]
        role_ns = None if ref["kind"] == "ClusterRole" else binding_ns
        rules = roles.get((ref["kind"], role_ns, ref["name"]), [])
        if any(_rule_allows(rule, req) for rule in rules):
            return True
    return False


OPERATOR_NEEDS = [
    (verb, group, resource)
    for group, resource, verbs in [
        ("hedge.dev", "modeldeployments", ["get", "list", "watch", "patch"]),
        ("hedge.dev", "modeldeployments/status", ["get", "patch"]),
        # blockOwnerDeletion on the children: OpenShift's OwnerReferencesPermissionEnforcement
        # admission wants `update` on the owner's finalizers subresource.
        ("hedge.dev", "modeldeployments/finalizers", ["update"]),
        # ClientPolicies: checked, status written; kopf annotates what it handled.
        ("hedge.dev", "clientpolicies", ["get", "list", "watch", "patch"]),
        ("hedge.dev", "clientpolicies/status", ["patch"]),
        ("apps", "deployments", ["get", "list", "watch", "create", "patch", "delete"]),
        ("", "services", ["get", "list", "watch", "create", "patch", "delete"]),
        ("", "persistentvolumeclaims", ["get", "list", "watch", "create", "patch", "delete"]),
        ("policy", "poddisruptionbudgets", ["get", "list", "watch", "create", "patch", "delete"]),
        ("", "pods", ["get", "list", "watch", "patch"]),  # patch: pod-deletion-cost
        ("", "events", ["create", "patch"]),
        ("events.k8s.io", "events", ["create", "patch"]),
        ("", "secrets", ["get"]),  # does a referenced Secret (and key) exist
    ]
    for verb in verbs
]
GATEWAY_NEEDS = [
    (verb, group, resource)
    for group, resource in [
        ("hedge.dev", "modeldeployments"),
        ("hedge.dev", "clientpolicies"),
        ("discovery.k8s.io", "endpointslices"),
        ("", "secrets"),
    ]
    for verb in ("get", "list", "watch")
]


def _all_renders(render: Render) -> list[tuple[str, list[Manifest]]]:
    return [(p.name, render(p)) for p in CI_VALUES]


def test_no_wildcards_and_no_privilege_escalation(render: Render) -> None:
    dangerous_resources = {
        "roles", "clusterroles", "rolebindings", "clusterrolebindings", "serviceaccounts/token",
        "pods/exec", "pods/attach", "pods/portforward", "nodes", "nodes/proxy",
        "mutatingwebhookconfigurations", "validatingwebhookconfigurations",
    }  # fmt: skip
    dangerous_verbs = {"escalate", "bind", "impersonate", "*", "deletecollection", "update"}
    for name, manifests in _all_renders(render):
        for role in by_kind(manifests, "Role") + by_kind(manifests, "ClusterRole"):
            assert "aggregationRule" not in role
            for rule in role["rules"]:
                for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                    assert "*" not in rule.get(field, []), (name, role["metadata"]["name"], rule)
                resources = set(rule["resources"])
                if rule["verbs"] == ["list"] and rule.get("apiGroups") == [""]:
                    resources -= {"nodes"}  # the operator's read-only scheduling diagnosis
                assert not resources & dangerous_resources, (name, rule)
                # `update` only on a finalizers subresource (what blockOwnerDeletion needs).
                finalizers_only = all(r.endswith("/finalizers") for r in rule["resources"])
                verbs = set(rule["verbs"]) - ({"update"} if finalizers_only else set())
                assert not verbs & dangerous_verbs, (name, rule)
                assert "nonResourceURLs" not in rule


def test_cluster_wide_install_grants_what_each_component_needs(render: Render) -> None:
    manifests = render(CHART / "ci" / "default-values.yaml")
    for verb, group, resource in OPERATOR_NEEDS:
        if resource != "secrets":
            assert allowed(manifests, OPERATOR, Request(verb, group, resource, ANY_NAMESPACE))
    for verb, group, resource in GATEWAY_NEEDS:
        if resource != "secrets":
            assert allowed(manifests, GATEWAY, Request(verb, group, resource, ANY_NAMESPACE))
    # Secrets: nowhere, until the install names the namespaces that hold provider keys.
    for subject in (OPERATOR, GATEWAY):
        for verb in ("get", "list", "watch"):
            assert not allowed(manifests, subject, Request(verb, "", "secrets", ANY_NAMESPACE))
            assert not allowed(manifests, subject, Request(verb, "", "secrets", None))
    # kopf's cluster-wide needs: CRD discovery and the shared ClusterKopfPeering.
    for verb in ("get", "list", "watch"):
        req = Request(verb, "apiextensions.k8s.io", "customresourcedefinitions", None)
        assert allowed(manifests, OPERATOR, req)
        assert allowed(manifests, OPERATOR, Request(verb, "kopf.dev", "clusterkopfpeerings", None))
    assert allowed(
        manifests, OPERATOR, Request("patch", "kopf.dev", "clusterkopfpeerings", None, "hedge")
    )
    # Nodes: the operator lists them (the scheduling diagnosis), nothing more; the gateway not.
    assert allowed(manifests, OPERATOR, Request("list", "", "nodes", None))
    for verb in ("get", "watch", "patch", "create", "delete"):
        assert not allowed(manifests, OPERATOR, Request(verb, "", "nodes", None))
    assert not allowed(manifests, GATEWAY, Request("list", "", "nodes", None))


def test_read_nodes_false_takes_node_access_away(render: Render) -> None:
    manifests = render(
        CHART / "ci" / "default-values.yaml", set_values=("operator.readNodes=false",)
    )
    assert not allowed(manifests, OPERATOR, Request("list", "", "nodes", None))
    assert allowed(
        manifests,
        OPERATOR,
        Request("list", "apiextensions.k8s.io", "customresourcedefinitions", None),
    )


def test_operator_may_block_owner_deletion_on_openshift(render: Render) -> None:
    """Children carry `blockOwnerDeletion: true`; OpenShift (OwnerReferencesPermission-
    Enforcement) then requires `update` on `modeldeployments/finalizers`, in every mode."""
    for name, manifests in _all_renders(render):
        if "bring-your-own" in name:
            continue  # rbac.create=false
        namespaces = [ANY_NAMESPACE] if "namespaced" not in name else ["team-a", "team-b"]
        for namespace in namespaces:
            req = Request("update", "hedge.dev", "modeldeployments/finalizers", namespace)
            assert allowed(manifests, OPERATOR, req), name
        # nothing else gets `update`
        assert not allowed(
            manifests, OPERATOR, Request("update", "hedge.dev", "modeldeployments", ANY_NAMESPACE)
        )
        finalizers = Request("update", "hedge.dev", "modeldeployments/finalizers", ANY_NAMESPACE)
        assert not allowed(manifests, GATEWAY, finalizers)


def test_components_get_nothing_beyond_their_job(render: Render) -> None:
    manifests = render(CHART / "ci" / "default-values.yaml")
    # The gateway only reads.
    for verb in ("create", "patch", "delete"):
        for _, group, resource in GATEWAY_NEEDS:
            assert not allowed(manifests, GATEWAY, Request(verb, group, resource, ANY_NAMESPACE))
    assert not allowed(manifests, GATEWAY, Request("list", "", "pods", ANY_NAMESPACE))
    assert not allowed(
        manifests, GATEWAY, Request("patch", "hedge.dev", "modeldeployments/status", ANY_NAMESPACE)
    )
    # The operator never deletes ModelDeployments, never touches Secrets beyond reading them,
    # and may patch only its own peering object.
    assert not allowed(
        manifests, OPERATOR, Request("delete", "hedge.dev", "modeldeployments", ANY_NAMESPACE)
    )
    assert not allowed(manifests, OPERATOR, Request("create", "", "secrets", ANY_NAMESPACE))
    assert not allowed(manifests, OPERATOR, Request("list", "", "secrets", ANY_NAMESPACE))
    assert not allowed(
        manifests, OPERATOR, Request("patch", "hedge.dev", "modeldeployments/scale", ANY_NAMESPACE)
    )
    assert not allowed(manifests, OPERATOR, Request("delete", "", "pods", ANY_NAMESPACE))
    assert not allowed(
        manifests, OPERATOR, Request("patch", "kopf.dev", "clusterkopfpeerings", None, "other")
    )
    assert not allowed(
        manifests,
        OPERATOR,
        Request("create", "apiextensions.k8s.io", "customresourcedefinitions", None),
    )
    assert not allowed(manifests, OPERATOR, Request("list", "", "namespaces", None))


@pytest.mark.parametrize(
    "values", [p for p in CI_VALUES if "bring-your-own" not in p.name], ids=lambda p: p.name
)
def test_the_operator_finds_the_gateways_in_the_release_namespace_only(
    render: Render, values: Path
) -> None:
    manifests = render(values)
    for verb in ("get", "list", "watch"):
        slices = Request(verb, "discovery.k8s.io", "endpointslices", "hedge-system")
        assert allowed(manifests, OPERATOR, slices)
    assert not allowed(
        manifests, OPERATOR, Request("create", "discovery.k8s.io", "endpointslices", "hedge-system")
    )


def test_secret_reads_live_in_their_own_roles(render: Render) -> None:
    for name, manifests in _all_renders(render):
        for role in by_kind(manifests, "Role") + by_kind(manifests, "ClusterRole"):
            grants_secrets = any("secrets" in rule["resources"] for rule in role["rules"])
            named_secret = all(rule.get("resourceNames") for rule in role["rules"])
            if grants_secrets and not named_secret:
                assert role["metadata"]["name"].endswith("-secrets"), (name, role["metadata"])


def test_namespaced_install_stays_in_its_namespaces(render: Render) -> None:
    manifests = render(CHART / "ci" / "namespaced-values.yaml")
    for namespace in ("team-a", "team-b"):
        for verb, group, resource in OPERATOR_NEEDS:
            if resource != "secrets":
                assert allowed(manifests, OPERATOR, Request(verb, group, resource, namespace))
        for verb, group, resource in GATEWAY_NEEDS:
            if resource != "secrets":
                assert allowed(manifests, GATEWAY, Request(verb, group, resource, namespace))
        for verb in ("get", "list", "watch"):
            assert allowed(
                manifests, OPERATOR, Request(verb, "kopf.dev", "kopfpeerings", namespace)
            )
        assert allowed(
            manifests, OPERATOR, Request("patch", "kopf.dev", "kopfpeerings", namespace, "hedge")
        )
    for verb, group, resource in OPERATOR_NEEDS:
        assert not allowed(manifests, OPERATOR, Request(verb, group, resource, ANY_NAMESPACE))
    for verb, group, resource in GATEWAY_NEEDS:
        assert not allowed(manifests, GATEWAY, Request(verb, group, resource, ANY_NAMESPACE))
    # The only cluster-wide grants are read-only: kopf's discovery of CRDs and namespaces,
    # and the nodes' labels and taints for the scheduling diagnosis. (The
    # aggregated hedge-view/hedge-edit ClusterRoles are bound to no one: they add
    # ModelDeployment access to the view/edit roles people already hold per namespace.)
    bound = {b["roleRef"]["name"] for b in by_kind(manifests, "ClusterRoleBinding")}
    aggregated = {"hedge-view", "hedge-edit"}
    for role in by_kind(manifests, "ClusterRole"):
        if role["metadata"]["name"] in aggregated:
            assert role["metadata"]["name"] not in bound
            assert {g for r in role["rules"] for g in r["apiGroups"]} == {"hedge.dev"}
            continue
        for rule in role["rules"]:
            allowed_kinds = {"customresourcedefinitions", "namespaces", "nodes"}
            assert set(rule["resources"]) <= allowed_kinds, rule
            assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
    assert not allowed(
        manifests, OPERATOR, Request("list", "kopf.dev", "clusterkopfpeerings", None)
    )


def test_secrets_are_readable_only_where_provider_keys_live(render: Render) -> None:
    manifests = render(CHART / "ci" / "namespaced-values.yaml")  # secretNamespaces: [team-a]
    for subject, verbs in ((OPERATOR, ["get"]), (GATEWAY, ["get", "list", "watch"])):
        for verb in verbs:
            assert allowed(manifests, subject, Request(verb, "", "secrets", "team-a"))
            assert not allowed(manifests, subject, Request(verb, "", "secrets", "team-b"))
            assert not allowed(
                manifests, subject, Request(verb, "", "secrets", "hedge-system", "x")
            )
    # Client API keys: the gateway reads that one Secret, by name, in the release namespace.
    keys = Request("get", "", "secrets", "hedge-system", "hedge-api-keys")
    assert allowed(manifests, GATEWAY, keys)
    assert allowed(
        manifests, GATEWAY, Request("watch", "", "secrets", "hedge-system", "hedge-api-keys")
    )
    assert not allowed(manifests, OPERATOR, keys)


def test_client_policies_are_read_by_the_gateway_and_checked_by_the_operator(
    render: Render,
) -> None:
    """The gateway lists and watches ClientPolicies and the labelled client-key Secrets where
    they live; the operator reads each named Secret by name and writes only the status."""
    manifests = render(CHART / "ci" / "namespaced-values.yaml")  # secretNamespaces: [team-a]
    for verb in ("get", "list", "watch"):
        assert allowed(manifests, GATEWAY, Request(verb, "hedge.dev", "clientpolicies", "team-a"))
        assert allowed(manifests, OPERATOR, Request(verb, "hedge.dev", "clientpolicies", "team-a"))
        assert not allowed(
            manifests, GATEWAY, Request(verb, "hedge.dev", "clientpolicies", ANY_NAMESPACE)
        )
    for verb in ("list", "watch"):  # the gateway's watch of hedge.dev/client-key=true Secrets
        assert allowed(manifests, GATEWAY, Request(verb, "", "secrets", "team-a"))
    assert allowed(manifests, OPERATOR, Request("get", "", "secrets", "team-a", "team-a-keys"))
    assert not allowed(manifests, OPERATOR, Request("list", "", "secrets", "team-a"))
    status = Request("patch", "hedge.dev", "clientpolicies/status", "team-a")
    assert allowed(manifests, OPERATOR, status)
    assert not allowed(manifests, GATEWAY, status)
    for verb in ("create", "delete", "update"):
        for subject in (OPERATOR, GATEWAY):
            req = Request(verb, "hedge.dev", "clientpolicies", "team-a")
            assert not allowed(manifests, subject, req), (subject, verb)


def test_people_view_client_policies_but_do_not_write_them(render: Render) -> None:
    """A ClientPolicy sets its tenant's limits: `view`/`edit`/`admin` in a namespace see it
    (the aggregated roles), none of them may write it."""
    manifests = render(CHART / "ci" / "default-values.yaml")
    roles = {r["metadata"]["name"]: r for r in by_kind(manifests, "ClusterRole")}
    view = [r for r in roles["hedge-view"]["rules"] if "clientpolicies" in r["resources"]]
    assert view and all(set(r["verbs"]) == {"get", "list", "watch"} for r in view)
    assert all("clientpolicies" not in r["resources"] for r in roles["hedge-edit"]["rules"])


# What the gateway's discovery sends, request by request (hedge_serving.gateway.discovery on
# hedge_core.kube.ListWatch): list+watch of ModelDeployments and EndpointSlices, cluster-wide
# in a cluster-wide install, and list+watch of each referenced Secret, by name
# (fieldSelector=metadata.name), in its namespace.
def gateway_requests(md_namespace: str | None, secret_namespace: str) -> list[Request]:
    return [
        Request(verb, group, resource, namespace)
        for group, resource, namespace in (
            ("hedge.dev", "modeldeployments", md_namespace),
            ("discovery.k8s.io", "endpointslices", md_namespace),
            ("", "secrets", secret_namespace),
        )
        for verb in ("list", "watch")
    ]


def test_narrowed_secrets_in_a_cluster_wide_install(render: Render) -> None:
    manifests = render(set_values=("rbac.secretNamespaces={llm-keys,shared-keys}",))
    for secret_namespace in ("llm-keys", "shared-keys"):
        for req in gateway_requests(None, secret_namespace):
            assert allowed(manifests, GATEWAY, req), req
    for verb in ("get", "list", "watch"):
        assert not allowed(manifests, GATEWAY, Request(verb, "", "secrets", ANY_NAMESPACE))
        assert not allowed(manifests, GATEWAY, Request(verb, "", "secrets", None))
        assert not allowed(manifests, GATEWAY, Request(verb, "", "secrets", "hedge-system"))
    assert allowed(manifests, OPERATOR, Request("get", "", "secrets", "llm-keys"))
    assert not allowed(manifests, OPERATOR, Request("get", "", "secrets", ANY_NAMESPACE))
    # Only Roles grant Secrets: no ClusterRole names them.
    for role in by_kind(manifests, "ClusterRole"):
        assert all("secrets" not in rule["resources"] for rule in role["rules"]), role


@pytest.mark.parametrize(
    "set_values",
    [("rbac.create=false",), ("rbac.create=false", "watchNamespaces={a}")],
)
def test_rbac_create_false_creates_no_rbac(render: Render, set_values: tuple[str, ...]) -> None:
    kinds = {m["kind"] for m in render(set_values=set_values)}
    assert not kinds & {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}


def test_bindings_follow_custom_service_account_names(render: Render) -> None:
    manifests = render(set_values=("gateway.serviceAccount.name=llm-gw",))
    assert allowed(
        manifests,
        ("hedge-system", "llm-gw"),
        Request("list", "discovery.k8s.io", "endpointslices", "x"),
    )
    assert not allowed(
        manifests, GATEWAY, Request("list", "discovery.k8s.io", "endpointslices", "x")
    )
