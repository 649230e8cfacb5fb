"""The Helm chart for real: `helm install` into the local cluster runs the operator and the
gateway as pods (the pod runner starts the real `hedge` processes, authenticated as the chart's
ServiceAccounts, so the chart's RBAC is what they get), a ModelDeployment serves a chat
completion through the gateway Service, `helm upgrade` rolls, re-applying changes nothing, and
`helm uninstall` leaves only the CRDs. A missing RBAC rule shows as a clear error."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from hedge_dev.cluster import free_port

from .conftest import ROOT, E2ECluster, condition, get_md, md_ready, pod_ready, wait_for

CHART = ROOT / "charts" / "hedge"
EXAMPLE = ROOT / "examples" / "quickstart.yaml"
MODEL = "llama-3-8b"


def helm(cluster: E2ECluster, *args: str, timeout: float = 240) -> str:
    proc = subprocess.run(
        [str(cluster.helm_bin), f"--kubeconfig={cluster.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cluster.env,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


def write_values(tmp_path: Path, namespace: str, **overrides: Any) -> Path:
    """Values for a release scoped to the test's namespace. The operator binds its metrics and
    health ports on every address of this shared machine, so they get free ports here."""
    values: dict[str, Any] = {
        "watchNamespaces": [namespace],
        "operator": {"metricsPort": free_port(), "healthPort": free_port()},
        # These tests are about the chart's objects, not client keys: the gateway serves
        # without them, said explicitly as the chart requires (issue 16 High-5).
        "gateway": {
            "replicaCount": 1,
            "drainTimeoutSeconds": 1,
            "drainDelaySeconds": 1,
            "apiKeys": {"secretName": ""},
            "allowUnauthenticated": True,
            "clientPolicies": {"enabled": False},
        },
    }
    for key, value in overrides.items():
        values.setdefault(key, {}).update(value)
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def ready_pods(
    cluster: E2ECluster, namespace: str, release: str, component: str
) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/component={component}"
    pods = cluster.get_json("pods", "-n", namespace, "-l", selector)["items"]
    return [p for p in pods if pod_ready(p)]


def chat_through_service(cluster: E2ECluster, namespace: str, release: str) -> str:
    service = cluster.get_json("service", "-n", namespace, f"{release}-gateway")
    ip, port = service["spec"]["clusterIP"], service["spec"]["ports"][0]["port"]
    client = openai.OpenAI(
        base_url=f"http://{ip}:{port}/v1", api_key="unused", max_retries=0, timeout=10
    )
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=4
    )
    assert reply.choices[0].message.content
    return reply.model


def try_chat(cluster: E2ECluster, namespace: str, release: str) -> str | None:
    try:
        return chat_through_service(cluster, namespace, release)
    except (openai.APIError, OSError):
        return None


def pod_log(cluster: E2ECluster, namespace: str, pod: str, container: str) -> str:
    path = cluster.cluster.dir / "pods" / f"{namespace}_{pod}" / f"{container}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def release_objects(cluster: E2ECluster, namespace: str, release: str) -> list[str]:
    selector = f"app.kubernetes.io/instance={release}"
    namespaced = cluster.kubectl(
        "get", "-n", namespace, "-l", selector, "-o", "name",
        "deployments,services,serviceaccounts,roles,rolebindings,networkpolicies,"
        "poddisruptionbudgets,configmaps,kopfpeerings.kopf.dev,pods",
    ).stdout.split()  # fmt: skip
    cluster_wide = cluster.kubectl(
        "get", "-l", selector, "-o", "name", "clusterroles,clusterrolebindings"
    ).stdout.split()
    return namespaced + cluster_wide


@pytest.mark.timeout(600)
def test_install_serve_upgrade_and_uninstall(
    cluster: E2ECluster, namespace: str, tmp_path: Path
) -> None:
    release = f"hedge-{namespace[2:]}"
    values = write_values(tmp_path, namespace)
    helm(cluster, "install", release, str(CHART), "-n", namespace, "-f", str(values),
         "--wait", "--timeout=180s")  # fmt: skip
    try:
        assert ready_pods(cluster, namespace, release, "operator")
        assert ready_pods(cluster, namespace, release, "gateway")

        # A first model, as the NOTES tell the user.
        cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))
        wait_for(
            lambda: md_ready(cluster, namespace, MODEL), 180, "the ModelDeployment to become Ready"
        )
        served = wait_for(lambda: try_chat(cluster, namespace, release), 60, "a chat completion")
        assert served == MODEL

        # GitOps: what is in Git (the chart's manifests and the ModelDeployment) shows no
        # difference from the cluster once the operator has done its work.
        manifest = helm(cluster, "get", "manifest", release, "-n", namespace)
        for source in (manifest, EXAMPLE.read_text()):
            diff = cluster.kubectl("diff", "-n", namespace, "-f", "-", input=source, check=False)
            assert diff.returncode == 0, diff.stdout + diff.stderr
        md = get_md(cluster, namespace, MODEL)
        spec_managers = {
            entry["manager"]
            for entry in md["metadata"]["managedFields"]
            if "f:spec" in entry.get("fieldsV1", {})
        }
        assert "hedge-operator" not in spec_managers, md["metadata"]["managedFields"]

        # The same values again: nothing rolls.
        gateway_before = cluster.get_json("deployment", "-n", namespace, f"{release}-gateway")
        helm(cluster, "upgrade", release, str(CHART), "-n", namespace, "-f", str(values),
             "--wait", "--timeout=120s")  # fmt: skip
        gateway_after = cluster.get_json("deployment", "-n", namespace, f"{release}-gateway")
        assert gateway_after["metadata"]["generation"] == gateway_before["metadata"]["generation"]

        # Changed values roll the gateway: two replicas with the new flag, still serving.
        old_pods = {
            p["metadata"]["name"] for p in ready_pods(cluster, namespace, release, "gateway")
        }
        helm(cluster, "upgrade", release, str(CHART), "-n", namespace, "-f", str(values),
             "--set", "gateway.replicaCount=2", "--set", "gateway.logLevel=DEBUG",
             "--wait", "--timeout=180s")  # fmt: skip
        new_pods = wait_for(
            lambda: (
                (pods := ready_pods(cluster, namespace, release, "gateway"))
                and len(pods) == 2
                and not {p["metadata"]["name"] for p in pods} & old_pods
                and pods
            ),
            120,
            "two gateway pods of the new revision",
        )
        for pod in new_pods:
            assert "--log-level=DEBUG" in pod["spec"]["containers"][0]["args"]
        assert wait_for(
            lambda: try_chat(cluster, namespace, release), 60, "a chat after the upgrade"
        )

        # The model goes first, while the operator is there to release its finalizer.
        cluster.kubectl(
            "delete", "-n", namespace, "-f", str(EXAMPLE), "--wait=true", "--timeout=60s"
        )
    finally:
        helm(cluster, "uninstall", release, "-n", namespace, "--wait", "--timeout=120s")

    wait_for(
        lambda: not release_objects(cluster, namespace, release), 60, "nothing of the release left"
    )
    crds = cluster.kubectl("get", "crd", "-o", "name").stdout.split()
    assert "customresourcedefinition.apiextensions.k8s.io/modeldeployments.hedge.dev" in crds
    assert "customresourcedefinition.apiextensions.k8s.io/kopfpeerings.kopf.dev" in crds


class Load:
    """Clients calling the gateway Service in a loop from threads, bounded in time and count;
    every failed request is kept with its error."""

    def __init__(self, base_url: str, workers: int = 4, max_requests: int = 20_000) -> None:
        self.base_url = base_url
        self.workers = workers
        self.max_requests = max_requests
        self.served = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self) -> None:
        client = openai.OpenAI(base_url=self.base_url, api_key="unused", max_retries=0, timeout=30)
        try:
            while not self._stop.is_set() and self.served + len(self.failures) < self.max_requests:
                try:
                    client.chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
                    )
                    with self._lock:
                        self.served += 1
                except (openai.APIError, OSError) as exc:
                    with self._lock:
                        self.failures.append(f"{time.strftime('%X')} {type(exc).__name__}: {exc}")
        finally:
            client.close()


@pytest.mark.timeout(600)
def test_rolling_restart_under_load_refuses_no_one(
    cluster: E2ECluster, namespace: str, tmp_path: Path
) -> None:
    """Two gateway replicas restarted one by one while clients call the Service: every
    request is answered (the old pod turns unready, serves through the drain delay while
    endpoints drop it, then drains)."""
    release = f"hedge-{namespace[2:]}"
    values = write_values(
        tmp_path,
        namespace,
        gateway={"replicaCount": 2, "drainDelaySeconds": 5, "drainTimeoutSeconds": 10},
    )
    helm(cluster, "install", release, str(CHART), "-n", namespace, "-f", str(values),
         "--wait", "--timeout=180s")  # fmt: skip
    try:
        cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))
        wait_for(lambda: md_ready(cluster, namespace, MODEL), 180, "the model to become Ready")
        wait_for(lambda: try_chat(cluster, namespace, release), 60, "a first chat completion")
        old = {p["metadata"]["name"] for p in ready_pods(cluster, namespace, release, "gateway")}
        assert len(old) == 2
        service = cluster.get_json("service", "-n", namespace, f"{release}-gateway")
        url = f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}/v1"

        with Load(url) as load:
            wait_for(lambda: load.served >= 20, 60, "the load to get going")
            cluster.kubectl("rollout", "restart", "-n", namespace, f"deployment/{release}-gateway")
            deployment = f"deployment/{release}-gateway"
            cluster.kubectl(
                "rollout", "status", "-n", namespace, deployment, "--timeout=240s", timeout=260
            )
            wait_for(
                lambda: not {
                    p["metadata"]["name"]
                    for p in cluster.get_json(
                        "pods", "-n", namespace, "-l",
                        f"app.kubernetes.io/instance={release},"
                        "app.kubernetes.io/component=gateway",
                    )["items"]
                } & old,
                120,
                "the old gateway pods to be gone",
            )  # fmt: skip
            served_during_rollout = load.served
            wait_for(lambda: load.served >= served_during_rollout + 20, 60, "serving afterwards")
        assert load.failures == [], load.failures[:10]
        assert load.served > 100, load.served

        cluster.kubectl(
            "delete", "-n", namespace, "-f", str(EXAMPLE), "--wait=true", "--timeout=60s"
        )
    finally:
        helm(cluster, "uninstall", release, "-n", namespace, "--wait", "--timeout=120s")


def rbac_without_deployment_writes(rendered: str) -> list[dict[str, Any]]:
    """The chart's RBAC objects, with the operator unable to create or patch Deployments."""
    objects = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in (
        "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")]  # fmt: skip
    for obj in objects:
        if obj["kind"] == "Role" and obj["metadata"]["name"].endswith("-operator"):
            for rule in obj["rules"]:
                if rule["resources"] == ["deployments"]:
                    rule["verbs"] = [v for v in rule["verbs"] if v not in ("create", "patch")]
    return objects


@pytest.mark.timeout(400)
def test_missing_rbac_rule_is_a_clear_error(
    cluster: E2ECluster, namespace: str, tmp_path: Path
) -> None:
    release = f"hedge-{namespace[2:]}"
    values = write_values(tmp_path, namespace)
    rendered = helm(cluster, "template", release, str(CHART), "-n", namespace, "-f", str(values))
    rbac = rbac_without_deployment_writes(rendered)
    cluster.apply(rbac)
    helm(cluster, "install", release, str(CHART), "-n", namespace, "-f", str(values),
         "--set", "rbac.create=false", "--wait", "--timeout=180s")  # fmt: skip
    try:
        cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))

        def failed_condition() -> dict[str, Any] | None:
            ready = condition(get_md(cluster, namespace, MODEL), "Ready")
            return (
                ready
                if ready and ready["status"] == "False" and "forbidden" in ready["message"]
                else None
            )

        ready = wait_for(failed_condition, 90, "Ready=False naming the forbidden request")
        assert ready["reason"] == "ApplyFailed"
        assert "deployments" in ready["message"] and f"{release}-operator" in ready["message"]
        degraded = condition(get_md(cluster, namespace, MODEL), "Degraded")
        assert degraded and degraded["status"] == "True"

        (operator,) = ready_pods(cluster, namespace, release, "operator")
        events = cluster.get_json("events", "-n", namespace, "--field-selector",
                                  f"involvedObject.name={MODEL}")["items"]  # fmt: skip
        messages = [e.get("message", "") for e in events]
        log = pod_log(cluster, namespace, operator["metadata"]["name"], "operator")
        assert any("forbidden" in m for m in messages) or "forbidden" in log, (
            messages,
            log[-3000:],
        )

        # Grant the missing rule back: the operator recovers without a restart.
        cluster.apply([o for o in yaml.safe_load_all(rendered) if o and o["kind"] == "Role"])
        wait_for(
            lambda: md_ready(cluster, namespace, MODEL),
            180,
            "the ModelDeployment to become Ready once the rule is back",
        )
        cluster.kubectl(
            "delete", "-n", namespace, "-f", str(EXAMPLE), "--wait=true", "--timeout=60s"
        )
    finally:
        helm(cluster, "uninstall", release, "-n", namespace, "--wait", "--timeout=120s")
        cluster.kubectl("delete", "--ignore-not-found", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": rbac}))  # fmt: skip
