"""The local Kubernetes cluster: a real control plane on loopback with kwok GPU nodes.

``LocalCluster.up()`` starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
kwok and Hedge's pod runner as detached processes on random free loopback ports, creates
simulated GPU and CPU nodes, and waits until the cluster can schedule and run pods.
``down()`` stops every process it started and removes the state, leaving no port behind.
Everything lives under ``$HEDGE_CACHE_DIR/clusters/<name>/``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hedge_core.kube import BlockingKube, NotFound
from hedge_dev import tools
from hedge_dev.pki import ClusterPKI, create_pki, write_kubeconfig
from hedge_dev.volumes import storage_class

SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
STAGES_FILE = Path(__file__).with_name("kwok-stages.yaml")


def service_cidr(octet: int) -> str:
    """ClusterIPs live on loopback too (the pod runner proxies them), above the pod subnets."""
    return f"127.{octet}.128.0/17"


class ClusterError(RuntimeError):
    """The cluster could not be brought up or inspected; the message carries log tails."""


@dataclass(frozen=True)
class NodeSpec:
    """A kwok-simulated node; GPU nodes carry capacity, the GFD product label and a taint.

    `labels`, `taints` and `resources` add to that, so a node can look like another
    platform's GPU node (hedge_dev.platforms) without the GFD defaults."""

    name: str
    subnet: int  # third octet (1-126) of the node's pod CIDR, 127.<cluster octet>.<subnet>.0/24
    gpu_product: str | None = None
    gpus: int = 0
    cpu: str = "64"
    memory: str = "512Gi"
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    taints: tuple[Mapping[str, str], ...] = field(default=(), hash=False)
    #: Extended resources (capacity and allocatable), e.g. {"amd.com/gpu": "8"}.
    resources: Mapping[str, str] = field(default_factory=dict, hash=False)

    def manifest(self, cluster_octet: int) -> dict[str, Any]:
        pod_cidr = f"127.{cluster_octet}.{self.subnet}.0/24"
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
        }
        resources = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": "250",
            "ephemeral-storage": "1Ti",
        }
        taints: list[dict[str, str]] = []
        if self.gpu_product:
            labels["nvidia.com/gpu.product"] = self.gpu_product
            labels["nvidia.com/gpu.count"] = str(self.gpus)
            labels["nvidia.com/gpu.present"] = "true"
            resources["nvidia.com/gpu"] = str(self.gpus)
            taints.append(dict(GPU_TAINT))
        labels.update(self.labels)
        taints.extend(dict(t) for t in self.taints)
        resources.update(self.resources)
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": labels,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            },
            "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr], "taints": taints},
            "status": {"capacity": resources, "allocatable": resources},
        }


DEFAULT_NODES: tuple[NodeSpec, ...] = (
    NodeSpec("gpu-a100-0", 1, "NVIDIA-A100-SXM4-80GB", 8),
    NodeSpec("gpu-h100-0", 2, "NVIDIA-H100-80GB-HBM3", 8),
    NodeSpec("cpu-0", 3),
)


def gpu_nodes(
    count: int, product: str = "NVIDIA-A100-SXM4-80GB", gpus: int = 8, first_subnet: int = 20
) -> list[NodeSpec]:
    """Extra identical GPU nodes, e.g. for scale benchmarks."""
    slug = product.split("-")[1].lower() if "-" in product else product.lower()
    return [NodeSpec(f"gpu-{slug}-x{i}", first_subnet + i, product, gpus) for i in range(count)]


@dataclass
class Component:
    name: str
    pid: int
    log: str
    port: int | None = None
    cmd: list[str] | None = None  # how it was started (restart_apiserver starts it again)


@dataclass
class ClusterState:
    name: str
    kubeconfig: str
    apiserver_port: int
    # Second octet of every pod IP (127.<octet>.x.y): unique per live cluster, so clusters
    # side by side never hand out the same pod IP.
    octet: int = 10
    components: list[Component] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> ClusterState:
        raw = json.loads(path.read_text())
        raw["components"] = [Component(**c) for c in raw["components"]]
        return cls(**raw)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of this process counts as gone.
    try:
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return status != "Z"


def log_tail(path: Path | str, lines: int = 25) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class LocalCluster:
    """One named local cluster; several can run side by side on different ports."""

    def __init__(self, name: str = "hedge", root: Path | None = None) -> None:
        self.name = name
        self.dir = (root or tools.cache_dir() / "clusters") / name
        self.state_file = self.dir / "state.json"
        self.kubeconfig = self.dir / "kubeconfig"
        self.logs = self.dir / "logs"
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # ----------------------------------------------------------------- inspection
    def state(self) -> ClusterState | None:
        if not self.state_file.exists():
            return None
        return ClusterState.read(self.state_file)

    def api(self) -> BlockingKube:
        """A blocking client on the admin kubeconfig (close it, or use it in `with`)."""
        return BlockingKube(self.kubeconfig, user_agent="hedge-dev")

    def status(self) -> dict[str, Any]:
        """Which components run, and whether the API server answers /readyz."""
        state = self.state()
        if state is None:
            return {"name": self.name, "running": False, "components": {}}
        comps = {
            c.name: {"pid": c.pid, "alive": _alive(c.pid), "port": c.port, "log": c.log}
            for c in state.components
        }
        ready = False
        with contextlib.suppress(Exception), self.api() as api:
            ready = self._readyz(api)
        return {
            "name": self.name,
            "running": ready and all(c["alive"] for c in comps.values()),
            "apiserver": f"https://127.0.0.1:{state.apiserver_port}",
            "kubeconfig": state.kubeconfig,
            "components": comps,
        }

    def is_up(self) -> bool:
        return bool(self.status()["running"])

    # ----------------------------------------------------------------- lifecycle
    def up(
        self,
        nodes: tuple[NodeSpec, ...] | list[NodeSpec] = DEFAULT_NODES,
        timeout: float = 120.0,
        log: Callable[[str], None] | None = None,
    ) -> Path:
        """Brings the cluster up (or reuses a healthy one) and returns the kubeconfig path."""
        say = log or (lambda msg: print(f"hedge dev: {msg}", file=sys.stderr, flush=True))
        if self.state() is not None:
            if self.is_up():
                say(f"cluster {self.name!r} is already up")
                return self.kubeconfig
            say(f"cluster {self.name!r} has stale state; cleaning it first")
            self.down(quiet=True)
        binaries = tools.ensure_tools((*tools.CONTROL_PLANE, "kwok"))
        started = time.monotonic()
        deadline = started + timeout
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        pki = create_pki(self.dir / "pki")
        ports = {
            k: free_port() for k in ("etcd", "etcd-peer", "apiserver", "kcm", "scheduler", "kwok")
        }
        octet = self._free_octet()
        state = ClusterState(self.name, str(self.kubeconfig), ports["apiserver"], octet)
        state.write(self.state_file)
        api: BlockingKube | None = None
        try:
            self._start(state, "etcd", self._etcd_cmd(binaries["etcd"], ports), ports["etcd"])
            self._wait(state, deadline, "etcd", lambda: self._etcd_healthy(ports["etcd"]))
            self._start(
                state,
                "kube-apiserver",
                self._apiserver_cmd(binaries["kube-apiserver"], ports, pki, octet),
                ports["apiserver"],
            )
            write_kubeconfig(
                self.kubeconfig,
                f"hedge-{self.name}",
                f"https://127.0.0.1:{ports['apiserver']}",
                pki.ca_cert,
                pki.admin_cert,
                pki.admin_key,
            )
            api = self.api()
            self._wait(state, deadline, "kube-apiserver", lambda: self._readyz(api))
            kubeconfig = str(self.kubeconfig)
            self._start(
                state,
                "kube-controller-manager",
                [
                    str(binaries["kube-controller-manager"]),
                    f"--kubeconfig={kubeconfig}",
                    f"--authentication-kubeconfig={kubeconfig}",
                    f"--authorization-kubeconfig={kubeconfig}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={ports['kcm']}",
                    "--leader-elect=false",
                    f"--service-account-private-key-file={pki.sa_key}",
                    f"--root-ca-file={pki.ca_cert}",
                    "--use-service-account-credentials=false",
                    f"--cert-dir={self.dir / 'kcm-certs'}",
                    "--concurrent-deployment-syncs=10",
                    "--concurrent-replicaset-syncs=10",
                    "--kube-api-qps=200",
                    "--kube-api-burst=400",
                    "--v=1",
                ],
                ports["kcm"],
            )
            self._start(
                state,
                "kube-scheduler",
                [
                    str(binaries["kube-scheduler"]),
                    f"--kubeconfig={kubeconfig}",
                    f"--authentication-kubeconfig={kubeconfig}",
                    f"--authorization-kubeconfig={kubeconfig}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={ports['scheduler']}",
                    "--leader-elect=false",
                    f"--cert-dir={self.dir / 'scheduler-certs'}",
                    "--kube-api-qps=200",
                    "--kube-api-burst=400",
                    "--v=1",
                ],
                ports["scheduler"],
            )
            self._start(
                state,
                "kwok",
                [
                    str(binaries["kwok"]),
                    f"--kubeconfig={kubeconfig}",
                    "--manage-all-nodes=false",
                    "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                    "--node-ip=127.0.0.1",
                    "--cidr=127.11.0.1/16",
                    f"--server-address=127.0.0.1:{ports['kwok']}",
                    f"--config={STAGES_FILE}",
                    "--node-lease-duration-seconds=40",
                ],
                ports["kwok"],
            )
            self._start(
                state,
                "pod-runner",
                [
                    sys.executable,
                    "-m",
                    "hedge_core.cli",
                    "dev",
                    "podrunner",
                    f"--kubeconfig={kubeconfig}",
                    f"--ca-file={pki.ca_cert}",
                    f"--ready-file={self.dir / 'podrunner.ready'}",
                    f"--work-dir={self.dir / 'pods'}",
                ],
            )
            for node in nodes:
                api.request("POST", "/api/v1/nodes", node.manifest(octet))
            api.request("POST", "/apis/storage.k8s.io/v1/storageclasses", storage_class())
            self._wait(state, deadline, "nodes Ready", lambda: self._nodes_ready(api, nodes))
            self._wait(
                state,
                deadline,
                "default ServiceAccount",
                lambda: self._exists(api, "/api/v1/namespaces/default/serviceaccounts/default"),
            )
            self._wait(state, deadline, "kube-scheduler", lambda: self._healthz(ports["scheduler"]))
            self._wait(
                state, deadline, "kube-controller-manager", lambda: self._healthz(ports["kcm"])
            )
            self._wait(
                state, deadline, "pod runner", lambda: (self.dir / "podrunner.ready").exists()
            )
        except BaseException:
            if api is not None:
                api.close()
            self.down(quiet=True, keep_logs_in=self.failed_logs_dir())
            raise
        api.close()
        say(
            f"cluster {self.name!r} up in {time.monotonic() - started:.1f}s "
            f"({len(nodes)} nodes, API server https://127.0.0.1:{ports['apiserver']})"
        )
        return self.kubeconfig

    def down(self, quiet: bool = False, keep_logs_in: Path | None = None) -> None:
        """Stops every process of this cluster and removes its state."""
        state = self.state()
        components = list(state.components) if state else []
        for name, proc in self._procs.items():
            if all(c.name != name for c in components):
                components.append(Component(name, proc.pid, ""))
        for comp in reversed(components):
            self._stop_pid(comp.pid)
        for proc in self._procs.values():
            with contextlib.suppress(Exception):
                proc.wait(timeout=1)
        self._procs.clear()
        if keep_logs_in is not None and self.logs.exists():
            shutil.rmtree(keep_logs_in, ignore_errors=True)
            shutil.copytree(self.logs, keep_logs_in)
        shutil.rmtree(self.dir, ignore_errors=True)
        if not quiet:
            print(f"hedge dev: cluster {self.name!r} is down", file=sys.stderr)

    # ----------------------------------------------------------------- internals
    def _free_octet(self) -> int:
        """Picks the pod-IP octet: stable for a name, skipping those of other live clusters."""
        taken = set()
        for state_file in self.dir.parent.glob("*/state.json"):
            if state_file == self.state_file:
                continue
            with contextlib.suppress(Exception):
                other = ClusterState.read(state_file)
                if any(_alive(c.pid) for c in other.components):
                    taken.add(other.octet)
        start = 20 + sum(self.name.encode()) % 200
        for i in range(220):
            octet = 20 + (start - 20 + i) % 220
            if octet not in taken:
                return octet
        raise ClusterError("no free pod-IP range left for another local cluster")

    def failed_logs_dir(self) -> Path:
        return self.dir.parent / f"{self.name}.failed-logs"

    def _etcd_cmd(self, etcd: Path, ports: dict[str, int]) -> list[str]:
        client = f"http://127.0.0.1:{ports['etcd']}"
        peer = f"http://127.0.0.1:{ports['etcd-peer']}"
        return [
            str(etcd),
            "--name=hedge",
            f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=hedge={peer}",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
            "--quota-backend-bytes=4294967296",
        ]

    def _apiserver_cmd(
        self, binary: Path, ports: dict[str, int], pki: ClusterPKI, octet: int
    ) -> list[str]:
        return [
            str(binary),
            f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={ports['apiserver']}",
            f"--tls-cert-file={pki.apiserver_cert}",
            f"--tls-private-key-file={pki.apiserver_key}",
            f"--client-ca-file={pki.ca_cert}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--api-audiences={SA_ISSUER}",
            f"--service-cluster-ip-range={service_cidr(octet)}",
            "--authorization-mode=RBAC",
            # The default endpoint reconciler refuses a loopback advertise address.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
            f"--cert-dir={self.dir / 'apiserver-certs'}",
            "--max-requests-inflight=800",
            "--max-mutating-requests-inflight=400",
            "--v=1",
        ]

    def _start(
        self,
        state: ClusterState,
        name: str,
        cmd: list[str],
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        log_path = self.logs / f"{name}.log"
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(
                cmd,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
                env={**os.environ, **env} if env else None,
            )
        self._procs[name] = proc
        state.components.append(Component(name, proc.pid, str(log_path), port, list(cmd)))
        state.write(self.state_file)

    def start_component(
        self,
        name: str,
        cmd: list[str],
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """Runs one more process as part of this cluster: `down` stops it with the rest."""
        state = self.state()
        if state is None:
            raise ClusterError(f"cluster {self.name!r} is not up")
        self._start(state, name, cmd, port, env)

    def restart_apiserver(
        self, while_down: Callable[[], None] | None = None, timeout: float = 60.0
    ) -> None:
        """Stops kube-apiserver (SIGTERM, as a rolling control-plane upgrade does) and starts
        it again with the same flags; `while_down` runs in between."""
        state = self.state()
        comp = (
            next((c for c in state.components if c.name == "kube-apiserver"), None)
            if state
            else None
        )
        if state is None or comp is None or comp.cmd is None:
            raise ClusterError(f"cluster {self.name!r} has no restartable kube-apiserver")
        # It stops listening at once but then lingers in shutdown hooks; do not wait 10 s.
        self._stop_pid(comp.pid, grace=3.0)
        proc = self._procs.pop(comp.name, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)  # reap it
        state.components.remove(comp)
        if while_down is not None:
            while_down()
        self._start(state, comp.name, comp.cmd, comp.port)
        with self.api() as api:
            self._wait(
                state, time.monotonic() + timeout, "kube-apiserver", lambda: self._readyz(api)
            )

    def compact_etcd(self) -> int:
        """Writes a key to etcd and compacts its history up to it: once the API server has
        restarted, every watch resuming from an older resourceVersion gets 410 Gone.
        Returns the revision compacted to."""
        state = self.state()
        port = next((c.port for c in state.components if c.name == "etcd"), None) if state else None
        if port is None:
            raise ClusterError(f"cluster {self.name!r} has no etcd")

        def call(path: str, body: dict[str, Any]) -> Any:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST"
            )
            with urllib.request.urlopen(request, timeout=10) as resp:
                return json.loads(resp.read())

        key = base64.b64encode(b"/hedge-dev/compaction").decode()
        revision = int(call("/v3/kv/put", {"key": key, "value": key})["header"]["revision"])
        call("/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision

    def assert_alive(self, name: str) -> None:
        """Raises ClusterError with the log tail if component ``name`` has exited."""
        state = self.state()
        for comp in state.components if state else []:
            if comp.name == name and not _alive(comp.pid):
                raise ClusterError(
                    f"{name} exited; last log lines ({comp.log}):\n{log_tail(comp.log)}"
                )

    def _wait(
        self, state: ClusterState, deadline: float, what: str, check: Callable[[], bool]
    ) -> None:
        last_error = ""
        while True:
            for comp in state.components:
                if not _alive(comp.pid):
                    raise ClusterError(
                        f"{comp.name} exited while waiting for {what}; last log lines "
                        f"({comp.log}):\n{log_tail(comp.log)}"
                    )
            try:
                if check():
                    return
            except Exception as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out waiting for {what}; last error: {last_error}")
            time.sleep(0.1)

    @staticmethod
    def _stop_pid(pid: int, grace: float = 10.0) -> None:
        if not _alive(pid):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        end = time.monotonic() + grace
        while time.monotonic() < end:
            if not _alive(pid):
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        end = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < end:
            time.sleep(0.05)

    @staticmethod
    def _etcd_healthy(port: int) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
            return bool(json.loads(resp.read()).get("health") == "true")

    @staticmethod
    def _readyz(api: BlockingKube) -> bool:
        return api.request_text("GET", "/readyz", timeout=2) == "ok"

    @staticmethod
    def _healthz(port: int) -> bool:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # self-signed serving cert of a loopback component
        with urllib.request.urlopen(
            f"https://127.0.0.1:{port}/healthz", timeout=1, context=ctx
        ) as resp:
            return bool(resp.status == 200)

    @staticmethod
    def _exists(api: BlockingKube, path: str) -> bool:
        try:
            api.request("GET", path)
        except NotFound:
            return False
        return True

    @staticmethod
    def _nodes_ready(api: BlockingKube, nodes: tuple[NodeSpec, ...] | list[NodeSpec]) -> bool:
        listed = api.request("GET", "/api/v1/nodes")["items"]
        ready = {
            n["metadata"]["name"]
            for n in listed
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n.get("status", {}).get("conditions", [])
            )
        }
        return all(node.name in ready for node in nodes)
