"""Every file in examples/ reaches Ready on the local cluster, applied as a user would: first
the Secrets its header comment says to create (`kubectl create secret …`), then
`kubectl apply -f`. examples/cache.yaml's weights volume is bound by the cluster's default
StorageClass — a directory under the cluster's folder — which goes away with the claim."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, E2ECluster, Operator, md_ready, wait_for

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
SECRET_COMMAND = re.compile(r"^#\s+kubectl (create secret .*)$", re.M)


def setup_commands(path: Path) -> list[list[str]]:
    return [shlex.split(m.group(1)) for m in SECRET_COMMAND.finditer(path.read_text())]


@pytest.mark.timeout(400)
def test_every_example_becomes_ready(
    cluster: E2ECluster, namespace: str, operator: Operator
) -> None:
    assert {p.name for p in EXAMPLES} >= {"quickstart.yaml", "cache.yaml", "fallback.yaml"}
    names = []
    for path in EXAMPLES:
        for command in setup_commands(path):
            cluster.kubectl(*command, "-n", namespace)
        cluster.kubectl("apply", "-n", namespace, "-f", str(path))
        names.append(yaml.safe_load(path.read_text())["metadata"]["name"])
    for name in names:
        wait_for(lambda name=name: md_ready(cluster, namespace, name), 180, f"{name} Ready")

    # The cache claim is bound to a directory of the cluster's default StorageClass.
    (claim,) = [
        c
        for c in cluster.get_json("pvc", "-n", namespace)["items"]
        if c["metadata"]["labels"].get("hedge.dev/model-deployment") == "llama-3-70b"
    ]
    assert claim["status"]["phase"] == "Bound"
    assert claim["spec"]["storageClassName"] == "hedge-local"
    volume = cluster.get_json("pv", claim["spec"]["volumeName"])
    directory = Path(volume["spec"]["hostPath"]["path"])
    assert directory.is_dir() and directory.is_relative_to(cluster.cluster.dir / "volumes")

    # Deleting the ModelDeployment deletes its claim; the volume and the directory follow.
    cluster.kubectl("delete", "-n", namespace, "-f", str(ROOT / "examples" / "cache.yaml"))
    wait_for(lambda: not directory.exists(), 60, "the volume's directory to be removed")
    wait_for(
        lambda: volume["metadata"]["name"] not in cluster.kubectl("get", "pv", "-o", "name").stdout,
        60,
        "the volume to be deleted",
    )
