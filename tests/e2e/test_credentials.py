"""`hedge operator` and `hedge gateway` log in the way managed clusters require: through an
`exec` credential plugin (what `aws eks get-token`, `gke-gcloud-auth-plugin` and `kubelogin`
are), with the kubeconfig split across two files in KUBECONFIG, and they keep working when
the ServiceAccount token behind the plugin is rotated and the old one revoked — the next
refused request runs the plugin again, without a restart."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from hedge_core.kube import ApiError, BlockingKube
from hedge_dev.cluster import free_port

from .conftest import E2ECluster, HedgeProcess, scrape, wait_for, wait_ready
from .test_api_server_restart import model_deployment, routed, start_gateway, wait_reconciled

ACCOUNT = "hedge-e2e"


class Account:
    """A ServiceAccount with cluster-admin whose tokens are bound to Secrets, so deleting
    the Secret revokes the token (as rotating a credential at a cloud provider does)."""

    def __init__(self, cluster: E2ECluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.binding = f"{namespace}-{ACCOUNT}"
        cluster.apply(
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": ACCOUNT}},
            namespace,
        )
        cluster.apply(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": self.binding},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "cluster-admin",
                },
                "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": namespace}],
            }
        )

    def token(self, secret: str) -> str:
        api = self.cluster.api
        created = api.request(
            "POST",
            f"/api/v1/namespaces/{self.namespace}/secrets",
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret}},
        )
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": 3600,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "name": secret,
                    "uid": created["metadata"]["uid"],
                },
            },
        }
        answer = api.request(
            "POST",
            f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{ACCOUNT}/token",
            request,
        )
        return str(answer["status"]["token"])

    def revoke(self, secret: str) -> None:
        self.cluster.api.request("DELETE", f"/api/v1/namespaces/{self.namespace}/secrets/{secret}")

    def close(self) -> None:
        self.cluster.kubectl(
            "delete", "clusterrolebinding", self.binding, "--ignore-not-found", check=False
        )


@pytest.fixture
def account(cluster: E2ECluster, namespace: str) -> Iterator[Account]:
    acc = Account(cluster, namespace)
    yield acc
    acc.close()


def write_plugin(directory: Path, token_file: Path) -> Path:
    """The credential plugin: prints an ExecCredential with the current token, and notes
    who ran it (HEDGE_E2E_WHO of the calling process) in `runs`."""
    script = directory / "get-token"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, pathlib\n"
        f"with open({str(directory / 'runs')!r}, 'a') as runs:\n"
        "    runs.write(os.environ.get('HEDGE_E2E_WHO', '?') + '\\n')\n"
        f"token = pathlib.Path({str(token_file)!r}).read_text().strip()\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1',\n"
        "                  'kind': 'ExecCredential', 'status': {'token': token}}))\n"
    )
    script.chmod(0o755)
    return script


def kubeconfigs(cluster: E2ECluster, directory: Path, plugin: Path) -> tuple[Path, Path, Path]:
    """(clusters file, users file, one combined file): the first two only work together."""
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    context = admin["contexts"][0]
    user = {
        "name": ACCOUNT,
        "user": {
            "exec": {
                "apiVersion": "client.authentication.k8s.io/v1",
                "command": str(plugin),
                "interactiveMode": "Never",
            }
        },
    }
    clusters = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "contexts": [
            {"name": "e2e", "context": {"cluster": context["context"]["cluster"], "user": ACCOUNT}}
        ],
        "current-context": "e2e",
    }
    users = {"apiVersion": "v1", "kind": "Config", "users": [user]}
    paths = (directory / "clusters.yaml", directory / "users.yaml", directory / "exec.yaml")
    paths[0].write_text(yaml.safe_dump(clusters))
    paths[1].write_text(yaml.safe_dump(users))
    paths[2].write_text(yaml.safe_dump({**clusters, "users": [user]}))
    return paths


def runs(directory: Path, who: str) -> int:
    path = directory / "runs"
    return path.read_text().split().count(who) if path.exists() else 0


def refused(cluster: E2ECluster, directory: Path, token: str) -> bool:
    """Whether the API server now refuses `token` (revocation takes a few seconds)."""
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    admin["users"] = [{"name": admin["users"][0]["name"], "user": {"token": token}}]
    path = directory / "old-token.yaml"
    path.write_text(yaml.safe_dump(admin))
    with BlockingKube(path) as kube:
        try:
            kube.request("GET", "/api/v1/namespaces/default")
        except ApiError as exc:
            return exc.status == 401
    return False


@pytest.mark.timeout(400)
def test_exec_plugin_split_kubeconfig_and_token_rotation(
    cluster: E2ECluster,
    namespace: str,
    crd: None,
    account: Account,
    hedge_process: Callable[..., HedgeProcess],
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "token"
    first_token = account.token("token-1")
    token_file.write_text(first_token)
    plugin = write_plugin(tmp_path, token_file)
    clusters, users, combined = kubeconfigs(cluster, tmp_path, plugin)

    # The operator: KUBECONFIG names two files, the user (the plugin) is in the second.
    metrics = free_port()
    operator = hedge_process(
        "operator",
        "--namespace",
        namespace,
        "--metrics-port",
        str(metrics),
        "--health-port",
        "0",
        env={"KUBECONFIG": f"{clusters}{os.pathsep}{users}", "HEDGE_E2E_WHO": "operator"},
    )
    wait_for(lambda: scrape(f"http://127.0.0.1:{metrics}/metrics", 2), 30, "operator metrics")
    # The gateway: --kubeconfig names the plugin's kubeconfig (KUBECONFIG points nowhere).
    gateway = start_gateway(
        hedge_process,
        namespace,
        str(combined),
        env={"KUBECONFIG": str(tmp_path / "nothing"), "HEDGE_E2E_WHO": "gateway"},
    )
    cluster.apply(model_deployment("one"), namespace)
    wait_ready(cluster, namespace, "one")
    wait_for(lambda: routed(gateway) == {"one"}, 30, "the gateway to route one")
    assert runs(tmp_path, "operator") >= 1 and runs(tmp_path, "gateway") >= 1
    operator_logins, gateway_logins = runs(tmp_path, "operator"), runs(tmp_path, "gateway")

    # Rotate: a new token behind the plugin, the old one revoked.
    token_file.write_text(account.token("token-2"))
    account.revoke("token-1")
    wait_for(
        lambda: refused(cluster, tmp_path, first_token),
        30,
        "the API server to refuse the revoked token",
    )

    # The operator's next writes are refused, it logs in again (plugin runs) and carries on.
    cluster.apply(model_deployment("two"), namespace)
    wait_ready(cluster, namespace, "two", timeout=120)
    assert runs(tmp_path, "operator") > operator_logins

    # The API server restarts: the gateway's watches reconnect with the revoked token,
    # are refused, and it logs in again too.
    cluster.cluster.restart_apiserver()
    cluster.apply(model_deployment("three"), namespace)
    wait_reconciled(cluster, namespace, "three")
    wait_for(lambda: routed(gateway) == {"one", "two", "three"}, 60, "the gateway's routes")
    assert runs(tmp_path, "gateway") > gateway_logins
    assert "logging in again" in gateway.proc.log()
    operator.assert_running()
    gateway.proc.assert_running()
    wait_ready(cluster, namespace, "three", timeout=180)  # the controller manager caught up
    for proc in (operator, gateway.proc):
        log = proc.log()
        assert first_token not in log and token_file.read_text().strip() not in log
