"""Fixtures for end-to-end tests against Hedge's local Kubernetes cluster.

One cluster per test session (brought up on random loopback ports, torn down at the end),
a fresh namespace per test, and helpers that wait on conditions with timeouts. The helpers
only ever talk to the cluster this session started: KUBECONFIG from the environment is
ignored, and a kubeconfig whose server is not on loopback is refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from hedge_core.kube import ApiError, BlockingKube
from hedge_dev import tools
from hedge_dev.cluster import LocalCluster, free_port

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "hedge.dev_modeldeployments.yaml"
API = "/apis/hedge.dev/v1alpha1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.e2e)


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """Polls ``check`` until it returns something truthy; fails with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except (AssertionError, ApiError, OSError, aiohttp.ClientError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


class E2ECluster:
    """The session's cluster: kubectl and raw API access pinned to its kubeconfig."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.kubeconfig = cluster.kubeconfig
        self.api: BlockingKube = cluster.api()
        host = urlsplit(self.api.server).hostname or ""
        if not host.startswith("127."):
            self.api.close()
            raise RuntimeError(f"refusing to run e2e tests against {self.api.server}")
        self.kubectl_bin = tools.ensure_tools(["kubectl"])["kubectl"]
        self.helm_bin = tools.ensure_tools(["helm"])["helm"]
        self.env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.kubectl_bin), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            check=False,
        )
        if check and proc.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def apply(
        self, manifest: dict[str, Any] | list[dict[str, Any]] | str, namespace: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        text = (
            manifest
            if isinstance(manifest, str)
            else yaml.safe_dump_all(manifest if isinstance(manifest, list) else [manifest])
        )
        ns = ["-n", namespace] if namespace else []
        return self.kubectl("apply", *ns, "-f", "-", input=text)

    def get(self, path: str) -> Any:
        return self.api.request("GET", path)

    def get_json(self, *args: str) -> Any:
        import json

        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[E2ECluster]:
    """The session's cluster; if any test failed, its components' logs are kept beside the
    cluster directories (``<name>.failed-logs``, the path is printed)."""
    local = LocalCluster(f"e2e-{os.getpid()}")
    local.up()
    try:
        e2e = E2ECluster(local)
        try:
            yield e2e
        finally:
            e2e.api.close()
    finally:
        keep = local.failed_logs_dir() if request.session.testsfailed else None
        local.down(quiet=True, keep_logs_in=keep)
        if keep is not None:
            print(f"\ncluster logs kept in {keep}", file=sys.stderr)


def fresh_namespace(cluster: E2ECluster) -> Iterator[str]:
    """A new namespace (with its default ServiceAccount), deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.api.request(
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
    )
    wait_for(
        lambda: cluster.get(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
        30,
        f"default ServiceAccount in {name}",
    )
    yield name
    cluster.api.request("DELETE", f"/api/v1/namespaces/{name}")


@pytest.fixture
def namespace(cluster: E2ECluster) -> Iterator[str]:
    yield from fresh_namespace(cluster)


class HedgeProcess:
    """A `hedge …` process run against the session's cluster (operator, gateway…)."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.args = args
        self.log_path = log_path
        with open(log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hedge_core.cli", *args],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=ROOT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def assert_running(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(
                f"hedge {' '.join(self.args)} exited with {self.proc.returncode}:\n"
                + "\n".join(self.log().splitlines()[-40:])
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def hedge_process(cluster: E2ECluster, tmp_path: Path) -> Iterator[Callable[..., HedgeProcess]]:
    """Factory: ``hedge_process("operator", "--namespace", ns)`` starts and later stops it."""
    started: list[HedgeProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> HedgeProcess:
        log_path = tmp_path / f"hedge-{len(started)}-{args[0]}.log"
        proc = HedgeProcess(list(args), log_path, {**cluster.env, **(env or {})})
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


# ------------------------------------------------------------------- the operator


def wait_established(cluster: E2ECluster, name: str, timeout: float = 60) -> None:
    """Waits for a CRD's Established condition. (`kubectl wait` fails outright when it reads
    the CRD before the API server has written any condition.)"""

    def established() -> bool:
        crd = cluster.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        return condition(crd, "Established").get("status") == "True"

    wait_for(established, timeout, f"CRD {name} Established")


@pytest.fixture(scope="session")
def crd(cluster: E2ECluster) -> None:
    """The ModelDeployment CRD, installed once per session and Established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    wait_established(cluster, "modeldeployments.hedge.dev")


class Operator:
    """`hedge operator` watching one namespace, with its metrics on a port of its own."""

    def __init__(self, start: Callable[..., HedgeProcess], namespace: str, *extra: str) -> None:
        self._start = start
        self.namespace = namespace
        self.extra = extra  # more flags, e.g. --gateway-metrics-url
        self.metrics_port = 0
        self.proc: HedgeProcess | None = None

    def start(self) -> Operator:
        # A port free_port() saw free can be taken by another process before the operator
        # binds it: the operator then exits at once with EADDRINUSE, and only that is retried.
        for _ in range(3):
            self.metrics_port = free_port()
            self.proc = self._start(
                "operator",
                "--namespace",
                self.namespace,
                "--metrics-port",
                str(self.metrics_port),
                "--health-port",
                "0",
                *self.extra,
            )
            wait_for(self._metrics_or_exit, 30, "the operator's metrics endpoint")
            if self.proc.proc.poll() is None:
                return self
            if "Address already in use" not in self.proc.log():
                self.proc.assert_running()  # fails with the operator's log
        self.proc.assert_running()
        return self

    def _metrics_or_exit(self) -> str | bool:
        """The metrics page, or True once the process has exited (the caller tells which)."""
        assert self.proc is not None
        if self.proc.proc.poll() is not None:
            return True
        return self.metrics()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def metrics(self) -> str:
        return scrape(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2)

    def counter(self, name: str, **labels: str) -> float:
        return metric_sum(self.metrics(), name, **labels)


@pytest.fixture
def operator(
    crd: None, namespace: str, hedge_process: Callable[..., HedgeProcess]
) -> Iterator[Operator]:
    """The operator for the test's namespace, running (and still running at teardown)."""
    op = Operator(hedge_process, namespace).start()
    yield op
    if op.proc is not None:
        op.proc.assert_running()


# ----------------------------------------------------------- ModelDeployments, pods


def get_md(cluster: E2ECluster, namespace: str, name: str) -> dict[str, Any]:
    md: dict[str, Any] = cluster.get(f"{API}/namespaces/{namespace}/modeldeployments/{name}")
    return md


def condition(md: dict[str, Any], type_: str) -> dict[str, Any]:
    """The status condition of that type, or {} when there is none."""
    for c in (md.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return {}


def current(md: dict[str, Any]) -> bool:
    return bool(md.get("status", {}).get("observedGeneration") == md["metadata"]["generation"])


def md_ready(cluster: E2ECluster, namespace: str, name: str) -> bool:
    """Whether the ModelDeployment's Ready condition is True."""
    return condition(get_md(cluster, namespace, name), "Ready").get("status") == "True"


def wait_ready(
    cluster: E2ECluster,
    namespace: str,
    name: str,
    replicas: int = 1,
    timeout: float = 90,
    not_revision: str | None = None,
) -> dict[str, Any]:
    """Waits for a current, Ready, settled ModelDeployment with that many ready replicas."""

    def check() -> dict[str, Any] | None:
        md = get_md(cluster, namespace, name)
        status = md.get("status", {})
        ok = (
            current(md)
            and condition(md, "Ready").get("status") == "True"
            and status.get("revision") != not_revision
            and status.get("readyReplicas") == replicas
            and status.get("replicas") == replicas
            and condition(md, "Progressing").get("status") == "False"
        )
        if not ok:  # wait_for reports the last of these when it times out
            ready = condition(md, "Ready")
            raise AssertionError(
                f"readyReplicas={status.get('readyReplicas')} replicas={status.get('replicas')} "
                f"Ready={ready.get('status')}/{ready.get('reason')}: {ready.get('message')}; "
                f"pods: {pods_summary(cluster, namespace, name)}"
            )
        return md

    return wait_for(check, timeout, f"{name} Ready with {replicas} replica(s)", interval=0.3)


def pods_summary(cluster: E2ECluster, namespace: str, name: str) -> str:
    """One line per pod of a ModelDeployment: node, phase, IP, conditions and container
    state, for a timeout to say where the pods got stuck."""
    pods = cluster.get(
        f"/api/v1/namespaces/{namespace}/pods?labelSelector=hedge.dev/model-deployment%3D{name}"
    )["items"]
    lines = []
    for pod in pods:
        status = pod.get("status") or {}
        conditions = ",".join(
            f"{c['type']}={c['status']}" + (f"({c['reason']})" if c.get("reason") else "")
            for c in status.get("conditions") or []
        )
        states = [
            list((c.get("state") or {}).items()) for c in status.get("containerStatuses") or []
        ]
        lines.append(
            f"{pod['metadata']['name']} node={pod['spec'].get('nodeName')} "
            f"phase={status.get('phase')} ip={status.get('podIP')} [{conditions}] {states}"
            + (" deleting" if pod["metadata"].get("deletionTimestamp") else "")
        )
    return "; ".join(lines) or "none"


def pod_ready(pod: dict[str, Any]) -> bool:
    """A live pod (not being deleted) whose Ready condition is True."""
    return not pod["metadata"].get("deletionTimestamp") and any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )


# ------------------------------------------------------------------------ metrics


def scrape(url: str, timeout: float = 5) -> str:
    """GET ``url``'s body; an HTTP error status raises HTTPError (an OSError, so wait_for
    retries), closed first: wait_for keeps the last error, and an unclosed one would leak
    its socket into a reference cycle (a ResourceWarning whenever the GC gets to it)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return str(resp.read().decode())
    except urllib.error.HTTPError as exc:
        exc.close()
        raise


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` (e.g. ``x_total``) carrying all of ``labels``."""
    return sum(
        (
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        ),
        0.0,
    )
