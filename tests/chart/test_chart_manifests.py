"""Generated files stay in sync with their sources: the chart's CRDs with crds/, the plain
manifests in deploy/ with the chart, the argocd-cm patch with the Lua health check."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.chart.chart_support import CHART, ROOT, generator, parse_manifests

TOP_CRDS = ROOT / "crds"
CHART_CRDS = CHART / "crds"


def _crd_names(directory: Path) -> set[str]:
    names = set()
    for path in directory.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                names.add(doc["metadata"]["name"])
    return names


def test_chart_ships_the_modeldeployment_crd() -> None:
    assert "modeldeployments.hedge.dev" in _crd_names(TOP_CRDS), "crds/ has no ModelDeployment CRD"
    assert "modeldeployments.hedge.dev" in _crd_names(CHART_CRDS)


def test_chart_crds_are_byte_identical_copies_of_top_level_crds() -> None:
    top = {p.name: p.read_bytes() for p in TOP_CRDS.glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in CHART_CRDS.iterdir()}
    extra = set(chart) - set(top)
    assert extra == {generator.KOPF_PEERING_CRDS}, f"chart-only CRD files: {sorted(extra)}"
    for name, content in top.items():
        assert chart.get(name) == content, f"charts/hedge/crds/{name} differs from crds/{name}"


def test_chart_peering_crds_are_the_ones_kopf_looks_for() -> None:
    from kopf._cogs.structs import references

    docs = list(yaml.safe_load_all((CHART_CRDS / generator.KOPF_PEERING_CRDS).read_text()))
    served = {
        (d["spec"]["group"], v["name"], d["spec"]["names"]["plural"], d["spec"]["scope"])
        for d in docs
        if d
        for v in d["spec"]["versions"]
    }
    cluster = references.CLUSTER_PEERINGS_K
    namespaced = references.NAMESPACED_PEERINGS_K
    assert (cluster.group, cluster.version, cluster.any_name, "Cluster") in served
    assert (namespaced.group, namespaced.version, namespaced.any_name, "Namespaced") in served


def test_generated_files_have_not_drifted(helm: Path) -> None:
    problems = generator.drift(generator.desired_files(helm))
    assert not problems, "run scripts/generate-manifests:\n" + "\n".join(problems)


def test_drift_check_reports_an_edit(helm: Path) -> None:
    files = generator.desired_files(helm)
    target = ROOT / "deploy" / "hedge.yaml"
    files[target] = files[target].replace(b"replicas: 2", b"replicas: 3", 1)
    problems = generator.drift(files)
    assert len(problems) == 1 and "+  replicas: 3" in problems[0]


def test_kustomization_builds_the_chart_objects_plus_a_restricted_namespace(kubectl: Path) -> None:
    built = subprocess.run(
        [str(kubectl), "kustomize", str(ROOT / "deploy")], capture_output=True, text=True
    )
    assert built.returncode == 0, built.stderr
    objects = parse_manifests(built.stdout)
    rendered = parse_manifests((ROOT / "deploy" / "hedge.yaml").read_text())

    def ids(manifests: list[dict[str, object]]) -> set[tuple[object, ...]]:
        return {
            (m["kind"], m["metadata"].get("namespace"), m["metadata"]["name"]) for m in manifests
        }  # type: ignore[index, union-attr]

    assert ids(objects) == ids(rendered) | {("Namespace", None, "hedge-system")}
    namespace = next(m for m in objects if m["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    kinds = {m["kind"] for m in objects}
    assert {"CustomResourceDefinition", "Deployment", "ClusterRole", "ClusterKopfPeering"} <= kinds


def test_argocd_cm_patch_carries_the_lua_unchanged() -> None:
    patch = yaml.safe_load((ROOT / "deploy" / "argocd" / "argocd-cm-patch.yaml").read_text())
    lua = (ROOT / "deploy" / "argocd" / "modeldeployment-health.lua").read_text()
    cpol_lua = (ROOT / "deploy" / "argocd" / "clientpolicy-health.lua").read_text()
    assert patch["metadata"] == {
        "name": "argocd-cm",
        "namespace": "argocd",
        "labels": {"app.kubernetes.io/part-of": "argocd"},
    }
    assert patch["data"] == {
        "resource.customizations.health.hedge.dev_ModelDeployment": lua,
        "resource.customizations.health.hedge.dev_ClientPolicy": cpol_lua,
    }
