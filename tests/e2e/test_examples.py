"""Every file in examples/ reaches Ready on the local cluster, applied as a user would: first
the Secrets its header comment says to create and label (`kubectl create|label secret …`), then
`kubectl apply -f`. examples/cache.yaml's weights volume is bound by the cluster's default
StorageClass — a directory under the cluster's folder — which goes away with the claim."""

from __future__ import annotations

import json
import re
import shlex
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, E2ECluster, Operator, md_ready, pod_ready, wait_for

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
SECRET_COMMAND = re.compile(r"^#\s+kubectl ((?:create|label) secret .*)$", re.M)


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


def test_a_pods_process_sees_its_claim(cluster: E2ECluster, namespace: str) -> None:
    """A claim of the default class is a directory; a `hedge` process the pod runner starts
    for a pod that mounts it reads the files there through the mount path (its routes file
    and client keys, here)."""
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "config"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}},
    }
    cluster.apply(claim, namespace)

    def bound_directory() -> Path | None:
        pvc = cluster.get_json("pvc", "config", "-n", namespace)
        if pvc["status"].get("phase") != "Bound":
            return None
        return Path(cluster.get_json("pv", pvc["spec"]["volumeName"])["spec"]["hostPath"]["path"])

    directory = wait_for(bound_directory, 60, "the claim to be bound")
    (directory / "routes.yaml").write_text(
        yaml.safe_dump({"models": [{"name": "from-the-claim", "backends": ["http://127.0.0.1:9"]}]})
    )
    (directory / "keys").write_text("key-on-the-claim\n")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "gateway", "labels": {"hedge.dev/component": "gateway"}},
        "spec": {
            "containers": [
                {
                    "name": "gateway",
                    "image": "hedge:dev",
                    "command": ["hedge"],
                    "args": [
                        "gateway",
                        "--routes",
                        "/etc/hedge/routes.yaml",
                        "--api-keys-file=/etc/hedge/keys",
                        "--host",
                        "0.0.0.0",
                        "--port",
                        "8080",
                        "--admin-port",
                        "9090",
                    ],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": 9090}},
                    "volumeMounts": [{"name": "config", "mountPath": "/etc/hedge"}],
                }
            ],
            "volumes": [{"name": "config", "persistentVolumeClaim": {"claimName": "config"}}],
        },
    }
    cluster.apply(pod, namespace)
    ready = wait_for(
        lambda: (p := cluster.get_json("pod", "gateway", "-n", namespace)) and pod_ready(p) and p,
        60,
        "the gateway pod to be Ready",
    )
    url = f"http://{ready['status']['podIP']}:8080/v1/models"
    request = urllib.request.Request(url, headers={"Authorization": "Bearer key-on-the-claim"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert [m["id"] for m in json.loads(resp.read())["data"]] == ["from-the-claim"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=5)
    assert refused.value.code == 401
    refused.value.close()
