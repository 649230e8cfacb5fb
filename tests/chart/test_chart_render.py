"""The chart lints, renders every example values file, and its objects are well-formed."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.chart.chart_support import CHART, CI_VALUES, Render, by_kind, containers, one, run_helm

NAMESPACED_KINDS = {
    "Deployment", "Service", "ServiceAccount", "Role", "RoleBinding", "PodDisruptionBudget",
    "ServiceMonitor", "ConfigMap", "NetworkPolicy", "KopfPeering",
}  # fmt: skip
CLUSTER_KINDS = {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"}


def test_example_values_files_exist() -> None:
    names = {p.name for p in CI_VALUES}
    assert {"default-values.yaml", "namespaced-values.yaml", "ha-monitoring-values.yaml"} <= names


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda p: p.name if p else "no-file")
def test_helm_lint_strict(helm: Path, values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART), "--namespace", "hedge-system"]
    if values:
        args += ["--values", str(values)]
    proc = run_helm(helm, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_every_example_renders_well_formed_objects(render: Render, values: Path) -> None:
    manifests = render(values)
    kinds = {m["kind"] for m in manifests}
    assert {"Deployment", "Service", "NetworkPolicy"} <= kinds
    names = [(m["kind"], m["metadata"].get("namespace"), m["metadata"]["name"]) for m in manifests]
    assert len(names) == len(set(names)), "two objects share kind, namespace and name"
    for m in manifests:
        meta = m["metadata"]
        assert len(meta["name"]) <= 63
        labels = meta["labels"]
        assert labels["app.kubernetes.io/name"] == "hedge"
        assert labels["app.kubernetes.io/instance"] == "hedge"
        assert labels["app.kubernetes.io/part-of"] == "hedge"
        assert labels["helm.sh/chart"] == "hedge-0.1.0"
        if m["kind"] in NAMESPACED_KINDS:
            assert meta.get("namespace"), f"{m['kind']} {meta['name']} has no namespace"
        else:
            assert m["kind"] in CLUSTER_KINDS, f"unexpected kind {m['kind']}"
            assert "namespace" not in meta


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_pods_pass_restricted_pod_security(render: Render, values: Path) -> None:
    """The checks of the `restricted` Pod Security Standard that a manifest can show."""
    for deployment in by_kind(render(values), "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        pod_sc = pod["securityContext"]
        assert pod_sc["runAsNonRoot"] is True
        assert pod_sc["runAsUser"] != 0
        assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        for volume in pod.get("volumes", []):
            assert set(volume) - {"name"} <= {"emptyDir", "configMap", "secret", "projected"}
        for container in containers(deployment):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert not sc.get("capabilities", {}).get("add")
            assert sc["readOnlyRootFilesystem"] is True
            assert sc.get("privileged") is False
            assert "hostPort" not in str(container.get("ports", []))


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_containers_have_requests_limits_and_probes(render: Render, values: Path) -> None:
    for deployment in by_kind(render(values), "Deployment"):
        for container in containers(deployment):
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"])
            assert "memory" in resources["limits"]
            assert container["livenessProbe"]["httpGet"]["port"] in {
                p["name"] for p in container["ports"]
            }
            assert container["readinessProbe"]


def test_default_install(render: Render) -> None:
    manifests = render()
    operator = one(manifests, "Deployment", "hedge-operator")
    gateway = one(manifests, "Deployment", "hedge-gateway")
    (op,) = containers(operator)
    (gw,) = containers(gateway)
    assert op["image"] == gw["image"] == "ghcr.io/hedge-dev/hedge:0.1.0"
    assert op["args"] == [
        "operator",
        "--bind-address=0.0.0.0",
        "--metrics-port=9090",
        "--health-port=8081",
        "--peering=hedge",
        # the engine NetworkPolicies admit this release's gateway and operator pods only
        "--gateway-namespace=hedge-system",
        "--gateway-pod-label=app.kubernetes.io/component=gateway",
        "--gateway-pod-label=app.kubernetes.io/instance=hedge",
        "--gateway-pod-label=app.kubernetes.io/name=hedge",
        "--operator-namespace=hedge-system",
        "--operator-pod-label=app.kubernetes.io/component=operator",
        "--operator-pod-label=app.kubernetes.io/instance=hedge",
        "--operator-pod-label=app.kubernetes.io/name=hedge",
        "--gateway-service=hedge-system/hedge-gateway-admin",
    ]
    # Client keys by default (issue 16 High-5): the gateway requires them from this Secret.
    assert gw["args"] == [
        "gateway", "--host", "0.0.0.0", "--port=8080",
        "--admin-port=9090", "--drain-delay=5", "--drain-timeout=30", "--log-level=INFO",
        "--api-keys-secret=hedge-system/hedge-api-keys",
        # provider egress: the public providers only; fallback caps; 2 replicas share a budget
        "--egress-allow-host=api.openai.com", "--egress-allow-host=*.openai.azure.com",
        "--egress-allow-host=api.anthropic.com", "--fallback-max-n=4",
        "--fallback-max-tokens=4096", "--fallback-budget-share=0.5",
        # ClientPolicies' keys and limits; each replica's share without a shared store
        "--client-policies", "--quota-share=0.5",
    ]  # fmt: skip
    # Unready and still serving, then draining, then exit: the grace period outlasts both.
    assert gateway["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 45
    assert operator["spec"]["template"]["spec"]["serviceAccountName"] == "hedge-operator"
    assert gateway["spec"]["template"]["spec"]["serviceAccountName"] == "hedge-gateway"
    # The ServiceAccounts do not hand tokens to any pod; Hedge's pods ask for one explicitly.
    for sa in by_kind(manifests, "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False
    for deployment in (operator, gateway):
        assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    # Metrics Services exist only as ServiceMonitor targets (and stay off the pods' ports);
    # the headless admin Service is how the operator finds every gateway replica.
    assert [s["metadata"]["name"] for s in by_kind(manifests, "Service")] == [
        "hedge-gateway",
        "hedge-gateway-admin",
    ]
    service = one(manifests, "Service", "hedge-gateway")
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
    admin = one(manifests, "Service", "hedge-gateway-admin")
    assert admin["spec"]["clusterIP"] == "None"
    assert admin["spec"]["selector"] == gateway["spec"]["selector"]["matchLabels"]
    assert admin["spec"]["ports"] == [
        {"name": "admin", "port": 9090, "targetPort": "admin", "protocol": "TCP"}
    ]
    assert one(manifests, "ClusterKopfPeering", "hedge")
    assert one(manifests, "PodDisruptionBudget", "hedge-gateway")["spec"]["maxUnavailable"] == 1
    assert not by_kind(manifests, "ServiceMonitor")
    assert not by_kind(manifests, "ConfigMap")


def test_namespaced_install_passes_namespaces_and_creates_peerings(render: Render) -> None:
    manifests = render(CHART / "ci" / "namespaced-values.yaml")
    for name in ("hedge-operator", "hedge-gateway"):
        (container,) = containers(one(manifests, "Deployment", name))
        flags = [a for a in container["args"] if a.startswith("--namespace")]
        assert flags == ["--namespace=team-a", "--namespace=team-b"]
    (gw,) = containers(one(manifests, "Deployment", "hedge-gateway"))
    assert "--api-keys-secret=hedge-system/hedge-api-keys" in gw["args"]
    peerings = by_kind(manifests, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert not by_kind(manifests, "ClusterKopfPeering")


def test_ha_monitoring_install(render: Render) -> None:
    manifests = render(CHART / "ci" / "ha-monitoring-values.yaml")
    operator = one(manifests, "Deployment", "hedge-operator")
    assert operator["spec"]["replicas"] == 2
    assert operator["spec"]["strategy"]["type"] == "RollingUpdate"
    (op,) = containers(operator)
    assert op["image"] == "ghcr.io/hedge-dev/hedge@sha256:" + "0" * 64
    monitors = by_kind(manifests, "ServiceMonitor")
    assert sorted(m["metadata"]["name"] for m in monitors) == ["hedge-gateway", "hedge-operator"]
    services = by_kind(manifests, "Service")
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
        selector = monitor["spec"]["selector"]["matchLabels"]
        port = monitor["spec"]["endpoints"][0]["port"]
        # Some Service the monitor selects exposes the port it scrapes.
        assert any(
            selector.items() <= s["metadata"]["labels"].items()
            and port in {p["name"] for p in s["spec"]["ports"]}
            for s in services
        )
    dashboard = one(manifests, "ConfigMap", "hedge-dashboard")
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert '"title": "Hedge"' in dashboard["data"]["hedge.json"]
    assert one(manifests, "Service", "hedge-gateway")["spec"]["type"] == "LoadBalancer"


def test_the_operator_may_reach_the_gateways_admin_port_whoever_else_may(
    render: Render,
) -> None:
    """The autoscaler reads each gateway's /metrics: a metricsFrom narrowed to Prometheus'
    namespace must still admit the operator's pods to the admin port."""
    prometheus = "metricsFrom[0].namespaceSelector.matchLabels.name=monitoring"
    for set_values, narrowed in (((), False), ((f"networkPolicy.{prometheus}",), True)):
        manifests = render(set_values=set_values)
        policy = one(manifests, "NetworkPolicy", "hedge-gateway")
        operator_labels = one(manifests, "Deployment", "hedge-operator")["spec"]["selector"][
            "matchLabels"
        ]
        admin_rules = [
            r
            for r in policy["spec"]["ingress"]
            if r["ports"] == [{"port": "admin", "protocol": "TCP"}]
        ]
        open_to_all = any("from" not in r for r in admin_rules)
        operator_admitted = any(
            peer.get("podSelector", {}).get("matchLabels") == operator_labels
            for r in admin_rules
            for peer in r.get("from", [])
        )
        assert open_to_all is not narrowed, admin_rules
        assert open_to_all or operator_admitted, admin_rules


def test_single_operator_without_peering_is_recreated_not_rolled(render: Render) -> None:
    manifests = render(CHART / "ci" / "bring-your-own-rbac-values.yaml")
    operator = one(manifests, "Deployment", "hedge-operator")
    assert operator["spec"]["strategy"] == {"type": "Recreate"}
    (op,) = containers(operator)
    assert not any(a.startswith("--peering") for a in op["args"])
    assert not by_kind(manifests, "ClusterKopfPeering")
    assert operator["spec"]["template"]["spec"]["serviceAccountName"] == "hedge-operator"
    assert not {"ServiceAccount", "ClusterRole", "Role"} & {m["kind"] for m in manifests}
    # One gateway replica: a PodDisruptionBudget would block every node drain.
    assert not by_kind(manifests, "PodDisruptionBudget")


@pytest.mark.parametrize(
    ("set_values", "complaint"),
    [
        (("gateway.replicas=3",), "replicas"),  # should be replicaCount
        (("operator.peering.enabeld=false",), "enabeld"),
        (("watchNamespace={team-a}",), "watchNamespace"),
        (("metrics.serviceMonitor.intervall=10s",), "intervall"),
        (("gateway.resources.request.cpu=1",), "request"),
        (("gateway.securityContext.runAsNonroot=true",), "runAsNonroot"),
        (("gateway.service.type=Ingress",), "type"),
        (("image.digest=latest",), "digest"),
        (("operator.replicaCount=-1",), "replicaCount"),
    ],
)
def test_schema_rejects_misspelt_or_invalid_values(
    render: Render, set_values: tuple[str, ...], complaint: str
) -> None:
    with pytest.raises(subprocess.CalledProcessError) as failure:
        render(set_values=set_values)
    assert "values don't meet the specifications of the schema" in failure.value.stderr
    assert complaint in failure.value.stderr


def test_misspelt_key_in_a_values_file_fails(render: Render, tmp_path: Path) -> None:
    values = tmp_path / "typo.yaml"
    values.write_text("gateway:\n  servce:\n    type: LoadBalancer\n")
    with pytest.raises(subprocess.CalledProcessError) as failure:
        render(values)
    assert "servce" in failure.value.stderr


@pytest.mark.parametrize(
    ("set_values", "complaint"),
    [
        (("operator.replicaCount=2", "operator.peering.enabled=false"), "needs operator.peering"),
        (("watchNamespaces={a}", "rbac.secretNamespaces={b}"), '"b", which is not in watch'),
    ],
)
def test_inconsistent_values_fail_with_a_reason(
    render: Render, set_values: tuple[str, ...], complaint: str
) -> None:
    with pytest.raises(subprocess.CalledProcessError) as failure:
        render(set_values=set_values)
    assert complaint in failure.value.stderr


def test_names_follow_overrides_and_stay_within_63_characters(render: Render) -> None:
    long_name = "a-very-long-release-name-that-goes-on-and-on-for-quite-a-while-x"
    manifests = render(set_values=(f"fullnameOverride={long_name[:63]}",))
    for m in manifests:
        name = m["metadata"]["name"]
        assert len(name) <= 63 and not name.endswith("-"), name
    gateway = [
        d for d in by_kind(manifests, "Deployment") if d["metadata"]["name"].endswith("gateway")
    ]
    assert len(gateway) == 1
    operator_names = {m["metadata"]["name"] for m in by_kind(manifests, "Deployment")}
    assert len(operator_names) == 2, "truncation made the operator and gateway names collide"

    renamed = render(set_values=("nameOverride=llm",))
    deployment_names = {d["metadata"]["name"] for d in by_kind(renamed, "Deployment")}
    assert deployment_names == {"hedge-llm-operator", "hedge-llm-gateway"}
    assert all(m["metadata"]["labels"]["app.kubernetes.io/name"] == "llm" for m in renamed)


def test_release_name_containing_chart_name_is_not_repeated(helm: Path) -> None:
    proc = run_helm(helm, "template", "my-hedge", str(CHART), "--namespace", "x")
    assert proc.returncode == 0, proc.stderr
    assert "name: my-hedge-gateway" in proc.stdout
    assert "my-hedge-hedge" not in proc.stdout


def test_templates_render_the_same_every_time() -> None:
    """Applying the same manifests twice must change nothing (GitOps tools show them in sync),
    so no template may use functions whose output changes between renders."""
    nondeterministic = re.compile(
        r"\b(rand\w*|uuidv4|now|date\w*|genCA|genPrivateKey|genSelfSignedCert\w*|"
        r"genSignedCert\w*|htpasswd|lookup|randBytes|shuffle)\b"
    )
    for template in (CHART / "templates").rglob("*"):
        if template.is_file():
            for action in re.findall(r"\{\{(.*?)\}\}", template.read_text(), flags=re.S):
                assert not nondeterministic.search(action), f"{template.name}: {action.strip()}"


def test_notes_tell_how_to_reach_the_gateway_and_apply_a_model(helm: Path) -> None:
    proc = run_helm(
        helm, "install", "hedge", str(CHART), "--dry-run=client", "--namespace", "hedge-system"
    )
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "http://hedge-gateway.hedge-system.svc/v1" in notes
    assert "port-forward service/hedge-gateway 8080:80" in notes
    assert "kind: ModelDeployment" in notes and "apiVersion: hedge.dev/v1alpha1" in notes
    assert "/v1/chat/completions" in notes

    namespaced = run_helm(
        helm, "install", "hedge", str(CHART), "--dry-run=client", "--namespace", "hedge-system",
        "--values", str(CHART / "ci" / "namespaced-values.yaml"),
    )  # fmt: skip
    notes = namespaced.stdout.split("NOTES:", 1)[1]
    assert "kubectl apply -n team-a" in notes
    assert "Authorization: Bearer" in notes
