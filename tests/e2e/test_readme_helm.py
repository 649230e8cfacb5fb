"""The README's "Install with Helm" block, run verbatim on a fresh local cluster (bash, with the
cluster's kubectl and helm on PATH), twice — a second run of the same block must succeed, as
the README promises — then the first steps the chart's NOTES print, as printed. The NOTES'
`kubectl port-forward` needs a kubelet's streaming API, which kwok's simulated nodes do not
have, so their `curl` runs against the gateway Service's ClusterIP instead."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT, E2ECluster, wait_for

README = ROOT / "README.md"


def readme_block(heading: str) -> str:
    """The first ```bash block after `heading` in the README."""
    text = README.read_text()
    section = text[text.index(heading) :]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, f"no bash block under {heading!r}"
    return match.group(1)


def notes_steps(notes: str) -> tuple[str, str]:
    """(steps 1 and 2 as a script, step 3's curl command) from the NOTES Helm printed."""
    lines = notes.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("1. "))
    third = next(i for i, line in enumerate(lines) if line.startswith("3. "))
    script = [
        line[2:]
        for line in lines[first:third]
        if line.startswith("  ") and not line.lstrip().startswith("More examples")
    ]
    curl_at = next(i for i, line in enumerate(lines) if line.lstrip().startswith("curl "))
    curl = [lines[curl_at].strip()]
    while curl[-1].endswith("\\"):
        curl_at += 1
        curl.append(lines[curl_at].strip())
    return "\n".join(script) + "\n", "\n".join(curl) + "\n"


def bash(cluster: E2ECluster, script: str, env: dict[str, str] | None = None) -> str:
    tools = {str(Path(cluster.kubectl_bin).parent), str(Path(cluster.helm_bin).parent)}
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env={
            **cluster.env,
            "PATH": os.pathsep.join([*tools, os.environ.get("PATH", "")]),
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"failed ({proc.returncode}):\n{script}\n--- stdout\n{proc.stdout}\n"
                    f"--- stderr\n{proc.stderr}")  # fmt: skip
    return proc.stdout


@pytest.mark.timeout(900)
def test_readme_helm_install_runs_as_written(cluster: E2ECluster) -> None:
    block = readme_block("## Install with Helm")
    assert "helm upgrade --install hedge charts/hedge" in block
    try:
        out = bash(cluster, block)
        assert "modeldeployment.hedge.dev/llama-3-8b condition met" in out
        again = bash(cluster, block)  # the whole block, a second time
        assert "condition met" in again

        notes = cluster_helm(cluster, "get", "notes", "hedge", "-n", "hedge-system")
        assert "github.com" not in notes  # no link to a place that does not exist
        steps, curl = notes_steps(notes)
        shown = bash(cluster, steps)
        assert "qwen-0-5b condition met" in shown and "llama-3-8b" in shown
        service = cluster.get_json("service", "-n", "hedge-system", "hedge-gateway")
        url = f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}"
        # The client key the README's block created, read the way the NOTES show.
        key = bash(cluster, next(line for line in notes.splitlines() if "HEDGE_API_KEY=" in line)
                   + "\necho \"$HEDGE_API_KEY\"\n").strip()  # fmt: skip
        assert key
        reply = wait_for(
            lambda: _try(cluster, curl, url, key), 60, "a chat completion with the NOTES' curl"
        )
        assert "qwen-0-5b" in reply
    finally:
        cluster.kubectl("delete", "modeldeployments", "--all", "-n", "team-a", "--wait=true",
                        "--timeout=60s", check=False)  # fmt: skip
        cluster_helm(cluster, "uninstall", "hedge", "-n", "hedge-system", "--wait", check=False)
        cluster.kubectl("delete", "namespace", "team-a", "hedge-system", "--wait=false",
                        "--ignore-not-found", check=False)  # fmt: skip


def _try(cluster: E2ECluster, curl: str, url: str, key: str) -> str | None:
    proc = subprocess.run(
        ["bash", "-c", curl],
        env={**cluster.env, "GATEWAY": url, "HEDGE_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return proc.stdout if '"choices"' in proc.stdout else None


def cluster_helm(cluster: E2ECluster, *args: str, check: bool = True) -> str:
    proc = subprocess.run(
        [str(cluster.helm_bin), *args],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)}: {proc.stderr}")
    return proc.stdout
