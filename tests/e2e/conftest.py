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
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
import yaml

from hedge_operator.dev import tools
from hedge_operator.dev.cluster import LocalCluster
from hedge_operator.dev.kubeclient import KubeAPIError, KubeConfig

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]


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
        except (AssertionError, KubeAPIError, OSError) as exc:
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
        self.api: KubeConfig = cluster.api()
        host = urlsplit(self.api.server).hostname or ""
        if not host.startswith("127."):
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
def cluster() -> Iterator[E2ECluster]:
    local = LocalCluster(f"e2e-{os.getpid()}")
    local.up()
    try:
        yield E2ECluster(local)
    finally:
        local.down(quiet=True)


@pytest.fixture
def namespace(cluster: E2ECluster) -> Iterator[str]:
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


class HedgeProcess:
    """A `hedge …` process run against the session's cluster (operator, gateway…)."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.args = args
        self.log_path = log_path
        with open(log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hedge_operator.cli", *args],
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
