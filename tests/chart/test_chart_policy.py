"""Policy scan (checkov) of the rendered chart, the plain manifests and the Dockerfile: no failed
check, and every skipped one carries its justification next to the object it concerns
(`checkov.io/skipN` annotations in the templates, `# checkov:skip=` in the Dockerfile)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.chart.chart_support import CI_VALUES, ROOT, generator

# What the project accepts, and why (the per-object annotations repeat the reason in context).
JUSTIFIED = {
    # Operator and gateway both watch the API server, so their pods mount a token.
    "CKV_K8S_38",
    # Default image reference is an immutable release tag; image.digest pins by digest.
    "CKV_K8S_43",
    "CKV_K8S_15",
    # Fallback provider keys are Secrets next to the ModelDeployments that reference them.
    "CKV2_K8S_5",
    # Docker HEALTHCHECK is ignored by Kubernetes; the chart has probes per process.
    "CKV_DOCKER_2",
}


@pytest.fixture(scope="module")
def checkov() -> Path:
    proc = subprocess.run(
        [str(ROOT / "scripts" / "ensure-checkov")], capture_output=True, text=True, check=True
    )
    return Path(proc.stdout.strip())


def _scan(checkov: Path, *args: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [str(checkov), *args, "--output", "json", "--skip-download"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.stdout.strip(), proc.stderr[-2000:]
    reports = json.loads(proc.stdout)
    return reports if isinstance(reports, list) else [reports]


def _check(reports: list[dict[str, Any]], min_resources: int) -> None:
    for report in reports:
        summary = report["summary"]
        assert summary["parsing_errors"] == 0, summary
        assert summary["resource_count"] >= min_resources, summary
        failed = [
            f"{f['check_id']} {f['check_name']} on {f['resource']} ({f['file_path']})"
            for f in report["results"]["failed_checks"]
        ]
        assert not failed, "\n".join(failed)
        for skipped in report["results"]["skipped_checks"]:
            assert skipped["check_id"] in JUSTIFIED, skipped["check_id"]
            reason = skipped["check_result"].get("suppress_comment") or ""
            assert len(reason.split()) >= 5, f"{skipped['check_id']} skipped without a reason"


@pytest.mark.timeout(900)  # the first run installs checkov into Hedge's cache
def test_rendered_chart_and_plain_manifests_pass_checkov(
    checkov: Path, helm: Path, tmp_path: Path
) -> None:
    for values in CI_VALUES:
        text = generator.helm_template(helm, values_files=(values,))
        (tmp_path / values.name).write_text(text)
    shutil.copy(ROOT / "deploy" / "hedge.yaml", tmp_path / "deploy-hedge.yaml")
    _check(_scan(checkov, "--directory", str(tmp_path), "--framework", "kubernetes"), 60)


@pytest.mark.timeout(900)
def test_dockerfile_passes_checkov(checkov: Path) -> None:
    _check(_scan(checkov, "--file", str(ROOT / "Dockerfile"), "--framework", "dockerfile"), 1)


@pytest.mark.timeout(900)
def test_checkov_would_catch_a_privileged_gateway(
    checkov: Path, helm: Path, tmp_path: Path
) -> None:
    """The scan is live: a values file that breaks a policy makes it fail."""
    text = generator.helm_template(helm, set_values=("gateway.securityContext.privileged=true",))
    (tmp_path / "privileged.yaml").write_text(text)
    reports = _scan(checkov, "--directory", str(tmp_path), "--framework", "kubernetes")
    failed = {f["check_id"] for r in reports for f in r["results"]["failed_checks"]}
    assert "CKV_K8S_16" in failed  # "Container should not be privileged"
