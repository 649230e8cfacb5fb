"""How the operator copes with many ModelDeployments on the local cluster.

Brings up a dedicated local cluster with enough simulated A100 nodes, starts
`hedge operator`, applies N ModelDeployments (1 GPU each) in one `kubectl apply`, and
reports:

- seconds from the apply to every object Ready (observedGeneration current), with the
  times to the first, the median and the last;
- the operator's peak RSS (VmHWM), and its RSS when idle afterwards;
- reconciles and the operator's own API requests (per reconcile and per object), from its
  Prometheus metrics; kopf's requests counted by the API server (apiserver_request_total)
  for ModelDeployments and the children;
- requests during an idle window afterwards (a steady cluster should cost no writes);
- parse time per object (`ModelDeployment.from_body`, in a subprocess, no cluster): with the
  type hints resolved on every parse (as before they were cached), with them cached, and
  with the memo (a repeat of the same object, and a new generation of it);
- the operator's CPU seconds (utime + stime of its process, from /proc/PID/stat) from the
  apply to all Ready, and per minute of the idle window (and as % of one core). The idle
  window starts `--settle` seconds (10) after the last object is Ready.

`--autoscaled` gives every ModelDeployment `spec.autoscaling` {minReplicas 1, maxReplicas 2}:
each keeps its one pod (demand 0 never asks for a second, and minReplicas 1 never scales to
zero, which would leave no pod and no engine to read), and the operator's `autoscale` timer
ticks every second for every one of them: read the data plane, decide, reconcile if status
must change. So that the tick does real work instead of stopping at NoMetrics, the bench
serves a loopback "gateway" /metrics page (`hedge_gateway_demand_in_flight` 0 for each model
and state, `hedge_gateway_demand_arrivals_total` 0) and passes it to the operator with
`--gateway-metrics-url`; the operator also reads every autoscaled engine pod's /metrics (the
local cluster's simulators) each tick. Without `--autoscaled`, the objects have no
autoscaling and the idle window only sees kopf's watches and the resync timer.
`--import-handlers` starts the operator with hedge_operator.handlers imported first: the
workaround for a main.py that no longer imports it (kopf then has no handlers; nothing gets
Ready and the bench times out).

`--compare-with PATH` runs the same measurement (same N, idle window, a fresh local cluster
with the same binaries) for the checkout at PATH: its operator and its parse timings run with
PYTHONPATH=PATH/core:PATH/operator:PATH/serving:PATH/dev (its packages win over the editable
install) and its CRD, one after the other; then prints both side by side with ratios
(PATH / this checkout). A checkout without the memo or the hint cache gets only the parse
times that it has: `from_body` of the same object (reported as its "memo hit") and of a new
generation (its "memo miss"), both full parses there.

Usage: .venv/bin/python bench/operator_scale.py [--count 200] [--idle 30] [--json FILE]
           [--autoscaled] [--compare-with PATH]
       .venv/bin/python bench/operator_scale.py --parse-only [--repeat 1000] [--compare-with PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from hedge_core.kube import BlockingKube

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT / "crds" / "hedge.dev_modeldeployments.yaml"
NAMESPACE = "bench"
WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE", "APPLY", "CREATE", "UPDATE"}
WATCHED_RESOURCES = {"modeldeployments", "deployments", "services", "poddisruptionbudgets"}
TRIGGERS = ("spec", "child", "resync", "autoscale")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def model_deployment(i: int, autoscaled: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "hedge.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": f"model-{i:03d}", "namespace": NAMESPACE},
        "spec": {
            "model": {"source": f"hf://bench/model-{i:03d}"},
            "resources": {
                "gpus": 1,
                "gpuType": "nvidia-a100-80gb",
                "cpu": "1",
                "memory": "4Gi",
                "shmSize": "1Gi",
            },
            "engine": {"podAnnotations": {"sim.hedge.dev/ttft-ms": "1"}},
        },
    }
    if autoscaled:
        body["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 2}
    return body


def gateway_page(count: int) -> bytes:
    """A gateway's /metrics as the contract has it, with no demand for any of the models."""
    lines = [
        "# HELP hedge_gateway_demand_in_flight Requests in flight.",
        "# TYPE hedge_gateway_demand_in_flight gauge",
    ]
    for i in range(count):
        labels = f'namespace="{NAMESPACE}",model_deployment="model-{i:03d}"'
        lines += [
            f'hedge_gateway_demand_in_flight{{{labels},state="{state}"}} 0.0'
            for state in ("self_hosted", "held", "fallback")
        ]
    lines += [
        "# HELP hedge_gateway_demand_arrivals_total Requests arrived.",
        "# TYPE hedge_gateway_demand_arrivals_total counter",
    ]
    for i in range(count):
        labels = f'namespace="{NAMESPACE}",model_deployment="model-{i:03d}"'
        lines.append(f"hedge_gateway_demand_arrivals_total{{{labels}}} 0.0")
    return ("\n".join(lines) + "\n").encode()


class FakeGateway:
    """A loopback HTTP server that serves `gateway_page` on /metrics and counts the reads."""

    def __init__(self, count: int) -> None:
        page = gateway_page(count)
        owner = self
        self.reads = 0

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.reads += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def prometheus(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def total(
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return sum(
        v
        for (n, lbl), v in metrics.items()
        if n == name and all(dict(lbl).get(k) == want for k, want in labels.items())
    )


def operator_metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return prometheus(resp.read().decode())


def apiserver_metrics(
    api: BlockingKube,
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = api.request_text("GET", "/metrics", timeout=30)
    return {k: v for k, v in prometheus(text).items() if k[0] == "apiserver_request_total"}


def apiserver_writes(before: dict[Any, float], after: dict[Any, float]) -> dict[str, float]:
    """Write requests per resource[/subresource] between two scrapes (all clients)."""
    out: dict[str, float] = {}
    for key, value in after.items():
        labels = dict(key[1])
        if labels.get("verb") not in WRITE_VERBS or labels.get("resource") not in WATCHED_RESOURCES:
            continue
        name = labels["resource"] + (
            f"/{labels['subresource']}" if labels.get("subresource") else ""
        )
        delta = value - before.get(key, 0.0)
        if delta:
            out[f"{labels['verb']} {name}"] = out.get(f"{labels['verb']} {name}", 0) + delta
    return dict(sorted(out.items()))


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0]) // 1024  # MiB
    return out


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def packages_env(root: Path) -> dict[str, str]:
    """The environment that runs `root`'s packages (before the editable install)."""
    paths = [str(root / d) for d in ("core", "operator", "serving", "dev")]
    old = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths + ([old] if old else []))}


def ready_times(api: BlockingKube, started: float, seen: dict[str, float]) -> int:
    from hedge_core.kube import Throttled

    try:
        items = api.request(
            "GET", f"/apis/hedge.dev/v1alpha1/namespaces/{NAMESPACE}/modeldeployments", timeout=30
        )["items"]
    except Throttled:  # "storage is (re)initializing" just after the CRD: the next poll
        return len(seen)
    now = time.monotonic() - started
    for md in items:
        status = md.get("status") or {}
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        if ready and status.get("observedGeneration") == md["metadata"]["generation"]:
            seen.setdefault(md["metadata"]["name"], now)
    return len(seen)


def parse_bodies() -> list[dict[str, Any]]:
    """The examples' ModelDeployments and one of this benchmark's, as the API server has
    them (namespace, uid, generation)."""
    docs = [
        doc
        for path in sorted((ROOT / "examples").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") == "ModelDeployment"
    ]
    docs.append(model_deployment(0))
    return [
        {
            **doc,
            "metadata": {
                **doc["metadata"],
                "namespace": NAMESPACE,
                "uid": f"u{i}",
                "generation": 1,
            },
        }
        for i, doc in enumerate(docs)
    ]


def parse_times(repeat: int) -> dict[str, Any]:
    """Microseconds per `from_body`, by body, in four ways (see the module docstring); in a
    checkout without the memo and the hint cache (hedge_core.api a module, not a package),
    only `from_body` of the same object and of a new generation."""
    try:
        from hedge_core.api import resource
    except ImportError:
        return {b["metadata"]["name"]: plain_parse_times_of(b, repeat) for b in parse_bodies()}
    out = {body["metadata"]["name"]: parse_times_of(body, repeat) for body in parse_bodies()}
    resource._MEMO.clear()
    return out


def per_call(fn: Any, repeat: int) -> float:
    import timeit

    fn()  # warm: hints resolved, memo filled
    return round(min(timeit.repeat(fn, number=repeat, repeat=3)) / repeat * 1e6, 1)


def plain_parse_times_of(body: dict[str, Any], repeat: int) -> dict[str, float]:
    from hedge_core.api import ModelDeployment

    generations = iter(range(2, 10**9))

    def new_generation() -> None:
        meta = {**body["metadata"], "generation": next(generations)}
        ModelDeployment.from_body({**body, "metadata": meta})

    return {
        # Named as the memo's, so they compare with them: the same object, a new generation.
        "memo_hit_us": per_call(lambda: ModelDeployment.from_body(body), repeat),
        "memo_miss_us": per_call(new_generation, repeat),
    }


def parse_times_of(body: dict[str, Any], repeat: int) -> dict[str, float]:
    import typing

    from hedge_core.api import ModelDeployment, resource, schema

    cached_hints = schema._hints
    schema._hints = typing.get_type_hints  # type: ignore[assignment]  # as before the cache
    try:
        uncached = per_call(lambda: ModelDeployment.parse_body(body), repeat)
    finally:
        schema._hints = cached_hints
    generations = iter(range(2, 10**9))

    def new_generation() -> None:
        meta = {**body["metadata"], "generation": next(generations)}
        ModelDeployment.from_body({**body, "metadata": meta})

    resource._MEMO.clear()
    return {
        "uncached_hints_us": uncached,
        "cached_hints_us": per_call(lambda: ModelDeployment.parse_body(body), repeat),
        "memo_hit_us": per_call(lambda: ModelDeployment.from_body(body), repeat),
        "memo_miss_us": per_call(new_generation, repeat),
    }


def parse_times_of_checkout(root: Path, repeat: int) -> dict[str, Any]:
    """`parse_times` of the checkout at `root`, in a subprocess that runs its packages."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--parse-worker",
                out.name,
                "--repeat",
                str(repeat),
            ],
            env=packages_env(root),
            cwd=root,
            check=True,
            timeout=600,
        )
        result: dict[str, Any] = json.loads(Path(out.name).read_text())
    return result


def run(
    count: int,
    idle: float,
    timeout: float,
    *,
    root: Path = ROOT,
    autoscaled: bool = False,
    settle: float = 10.0,
    import_handlers: bool = False,
) -> dict[str, Any]:
    """The cluster measurement, with the operator (and the CRD) of the checkout at `root`;
    the cluster itself is this checkout's (`hedge_dev`), whichever operator runs."""
    from hedge_dev import tools
    from hedge_dev.cluster import DEFAULT_NODES, LocalCluster, gpu_nodes

    cluster = LocalCluster(f"bench-operator-{os.getpid()}-{int(time.time())}")
    nodes = [*DEFAULT_NODES, *gpu_nodes(math.ceil(count / 8))]
    kubectl = str(tools.ensure_tools(["kubectl"])["kubectl"])
    operator: subprocess.Popen[bytes] | None = None
    api: BlockingKube | None = None
    gateway: FakeGateway | None = None
    log_file = Path(tempfile.mkstemp(prefix="hedge-operator-bench-", suffix=".log")[1])
    try:
        kubeconfig = cluster.up(nodes, timeout=300)
        api = cluster.api()
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        operator_env = {**packages_env(root), "KUBECONFIG": str(kubeconfig)}

        def k(*args: str, input: str | None = None) -> None:
            subprocess.run(
                [kubectl, *args],
                env=env,
                input=input,
                text=True,
                check=True,
                capture_output=True,
                timeout=300,
            )

        k("apply", "--server-side", "-f", str(root / CRD.relative_to(ROOT)))
        for attempt in range(5):  # the CRD may not be listed yet on a loaded machine
            try:
                k(
                    "wait",
                    "--for=condition=Established",
                    "--timeout=60s",
                    "crd/modeldeployments.hedge.dev",
                )
                break
            except subprocess.CalledProcessError as e:
                if attempt == 4:
                    raise RuntimeError(f"the CRD is not Established: {e.stderr}") from None
                time.sleep(2)
        k("create", "namespace", NAMESPACE)

        port = free_port()
        gateway_args: list[str] = []
        if autoscaled:
            gateway = FakeGateway(count)
            gateway_args = ["--gateway-metrics-url", gateway.url]
        # `hedge operator`, or the same CLI with hedge_operator.handlers imported first (for
        # a checkout whose main.py no longer imports it, so kopf has no handlers).
        launcher = (
            ["-c", "import sys, hedge_operator.handlers, hedge_core.cli as c; sys.exit(c.main())"]
            if import_handlers
            else ["-m", "hedge_core.cli"]
        )
        with open(log_file, "wb") as log:
            operator = subprocess.Popen(
                [
                    sys.executable,
                    *launcher,
                    "operator",
                    "--metrics-port",
                    str(port),
                    "--health-port",
                    "0",
                    *gateway_args,
                ],
                env=operator_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=root,
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                operator_metrics(port)
                break
            except OSError:
                if time.monotonic() > deadline or operator.poll() is not None:
                    raise RuntimeError(f"operator did not start; see {log_file}") from None
                time.sleep(0.2)
        time.sleep(2)  # let kopf finish its initial listings before the clock starts
        base_rss = proc_status(operator.pid)["VmRSS"]
        api_before = apiserver_metrics(api)
        op_before = operator_metrics(port)

        manifest = yaml.safe_dump_all([model_deployment(i, autoscaled) for i in range(count)])
        cpu_start = cpu_seconds(operator.pid)
        started = time.monotonic()
        # One `kubectl apply` of every object, as a user or a GitOps tool would; readiness
        # is polled while it runs.
        applier = subprocess.Popen(
            [kubectl, "apply", "--server-side", "-f", "-"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert applier.stdin is not None
        applier.stdin.write(manifest)
        applier.stdin.close()
        applied: float | None = None
        seen: dict[str, float] = {}
        peak_rss = 0
        while ready_times(api, started, seen) < count or applied is None:
            peak_rss = max(peak_rss, proc_status(operator.pid)["VmRSS"])
            if applied is None and applier.poll() is not None:
                if applier.returncode != 0:
                    raise RuntimeError(f"kubectl apply failed: {applier.stderr}")
                applied = time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise RuntimeError(
                    f"only {len(seen)}/{count} Ready after {timeout:.0f}s; see {log_file}"
                )
            if operator.poll() is not None:
                raise RuntimeError(f"operator exited; see {log_file}")
            time.sleep(0.5)
        all_ready = time.monotonic() - started
        cpu_ready = cpu_seconds(operator.pid)
        op_ready = operator_metrics(port)
        api_ready = apiserver_metrics(api)
        if operator.poll() is not None:
            raise RuntimeError(f"operator exited; see {log_file}")

        # Let the last status writes and the autoscalers' first windows settle, then a
        # steady cluster: what does it cost?
        time.sleep(settle)
        op_settled = operator_metrics(port)
        api_settled = apiserver_metrics(api)
        gateway_reads = gateway.reads if gateway is not None else 0
        idle_cpu_start, idle_start = cpu_seconds(operator.pid), time.monotonic()
        time.sleep(idle)
        idle_cpu = cpu_seconds(operator.pid) - idle_cpu_start
        idle_seconds = time.monotonic() - idle_start
        op_idle = operator_metrics(port)
        api_idle = apiserver_metrics(api)
        mem = proc_status(operator.pid)
        if operator.poll() is not None:
            raise RuntimeError(f"operator exited; see {log_file}")

        def delta(after: Any, before: Any, name: str, **labels: str) -> float:
            return total(after, name, **labels) - total(before, name, **labels)

        reconciles = delta(op_ready, op_before, "hedge_operator_reconciles_total")
        own_requests = delta(op_ready, op_before, "hedge_operator_api_requests_total")
        by_trigger = {
            t: delta(op_ready, op_before, "hedge_operator_reconciles_total", trigger=t)
            for t in TRIGGERS
        }
        duration_sum = delta(op_ready, op_before, "hedge_operator_reconcile_duration_seconds_sum")
        times = sorted(seen.values())
        return {
            "checkout": str(root),
            "handlers_imported_by_the_bench": import_handlers,
            "count": count,
            "autoscaled": autoscaled,
            "cpu_cores": os.cpu_count(),
            "kubectl_apply_seconds": round(applied, 2),
            "all_ready_seconds": round(all_ready, 2),
            "first_ready_seconds": round(times[0], 2),
            "median_ready_seconds": round(statistics.median(times), 2),
            "slowest": sorted(((round(t, 2), n) for n, t in seen.items()), reverse=True)[:3],
            "operator_cpu_seconds_until_ready": round(cpu_ready - cpu_start, 2),
            "operator_rss_mib": {
                "before": base_rss,
                "peak_sampled": peak_rss,
                "peak_VmHWM": mem["VmHWM"],
                "idle_after": mem["VmRSS"],
            },
            "reconciles": {
                "total": reconciles,
                **by_trigger,
                "mean_seconds": round(duration_sum / reconciles, 4) if reconciles else None,
            },
            "operator_api_requests": {
                "total": own_requests,
                "per_reconcile": round(own_requests / reconciles, 3) if reconciles else None,
                "per_model_deployment": round(own_requests / count, 2),
                # One entry per verb, resource and status code (a 409 and a 200 are two).
                "by_verb_resource_code": {
                    f"{dict(lbl)['verb']} {dict(lbl)['resource']} {dict(lbl)['code']}": v
                    - op_before.get((n, lbl), 0)
                    for (n, lbl), v in sorted(op_ready.items())
                    if n == "hedge_operator_api_requests_total" and v - op_before.get((n, lbl), 0)
                },
            },
            "apiserver_writes_until_ready_all_clients": apiserver_writes(api_before, api_ready),
            "settle_window": {
                "seconds": settle,
                "reconciles": {
                    t: delta(op_settled, op_ready, "hedge_operator_reconciles_total", trigger=t)
                    for t in TRIGGERS
                },
                "apiserver_writes_all_clients": apiserver_writes(api_ready, api_settled),
            },
            "idle_window": {
                "seconds": round(idle_seconds, 2),
                "operator_cpu_seconds": round(idle_cpu, 3),
                "operator_cpu_seconds_per_minute": round(idle_cpu / idle_seconds * 60, 3),
                "operator_cpu_percent_of_a_core": round(idle_cpu / idle_seconds * 100, 2),
                "gateway_page_reads": (gateway.reads - gateway_reads) if gateway else None,
                "reconciles": {
                    t: delta(op_idle, op_settled, "hedge_operator_reconciles_total", trigger=t)
                    for t in TRIGGERS
                },
                "operator_api_requests": delta(
                    op_idle, op_settled, "hedge_operator_api_requests_total"
                ),
                "apiserver_writes_all_clients": apiserver_writes(api_settled, api_idle),
            },
        }
    finally:
        if operator is not None and operator.poll() is None:
            operator.terminate()
            try:
                operator.wait(timeout=15)
            except subprocess.TimeoutExpired:
                operator.kill()
        if gateway is not None:
            gateway.close()
        if api is not None:
            api.close()
        cluster.down(quiet=True)
        print(f"operator log ({root}): {log_file}", file=sys.stderr)


def side_by_side(new: dict[str, Any], base: dict[str, Any], base_name: str) -> str:
    """A table of the numbers that compare, this checkout against `base_name`."""
    rows: list[tuple[str, Any, Any]] = []

    def get(result: dict[str, Any], path: str) -> Any:
        value: Any = result
        for part in path.split("."):
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
        return value

    if "count" in new and "count" in base:
        for label, path in (
            ("kubectl apply (s)", "kubectl_apply_seconds"),
            ("all Ready (s)", "all_ready_seconds"),
            ("median Ready (s)", "median_ready_seconds"),
            ("operator CPU until all Ready (s)", "operator_cpu_seconds_until_ready"),
            ("operator peak RSS VmHWM (MiB)", "operator_rss_mib.peak_VmHWM"),
            ("operator RSS idle (MiB)", "operator_rss_mib.idle_after"),
            ("reconciles until Ready", "reconciles.total"),
            ("operator API requests until Ready", "operator_api_requests.total"),
            ("idle: window (s)", "idle_window.seconds"),
            ("idle: operator CPU (s)", "idle_window.operator_cpu_seconds"),
            ("idle: operator CPU s per idle minute", "idle_window.operator_cpu_seconds_per_minute"),
            ("idle: operator CPU % of a core", "idle_window.operator_cpu_percent_of_a_core"),
            ("idle: gateway page reads", "idle_window.gateway_page_reads"),
            ("idle: autoscale reconciles", "idle_window.reconciles.autoscale"),
            ("idle: child reconciles", "idle_window.reconciles.child"),
            ("idle: operator API requests", "idle_window.operator_api_requests"),
        ):
            rows.append((label, get(new, path), get(base, path)))
        rows.append(
            (
                "idle: API server writes (all clients)",
                sum(get(new, "idle_window.apiserver_writes_all_clients").values()),
                sum(get(base, "idle_window.apiserver_writes_all_clients").values()),
            )
        )
    for name, times in new["parse"].items():
        theirs = base["parse"].get(name, {})
        for key, what in (
            ("uncached_hints_us", "parse, hints resolved each time (us)"),
            ("cached_hints_us", "parse, hints cached (us)"),
            ("memo_hit_us", "from_body same object (us; new: memo hit)"),
            ("memo_miss_us", "from_body new generation (us; new: memo miss)"),
        ):
            rows.append((f"{name}: {what}", times.get(key), theirs.get(key)))
    for key, what in (
        ("memo_hit_us", "from_body same object, mean over bodies (us)"),
        ("memo_miss_us", "from_body new generation, mean over bodies (us)"),
    ):
        ours = [t[key] for t in new["parse"].values() if key in t]
        theirs_ = [t[key] for t in base["parse"].values() if key in t]
        rows.append(
            (
                what,
                round(statistics.mean(ours), 1) if ours else None,
                round(statistics.mean(theirs_), 1) if theirs_ else None,
            )
        )

    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)

    width = max(len(r[0]) for r in rows)
    lines = [f"{'':{width}}  {'this checkout':>14}  {base_name:>14}  {'ratio old/new':>13}"]
    for label, ours_v, theirs_v in rows:
        ratio = (
            f"{theirs_v / ours_v:.2f}x"
            if isinstance(ours_v, int | float) and isinstance(theirs_v, int | float) and ours_v
            else "-"
        )
        lines.append(f"{label:{width}}  {cell(ours_v):>14}  {cell(theirs_v):>14}  {ratio:>13}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--idle", type=float, default=30.0, help="idle window (seconds)")
    parser.add_argument(
        "--settle",
        type=float,
        default=10.0,
        help="seconds between all Ready and the idle window (the last status writes)",
    )
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--parse-only", action="store_true", help="only the parse times (no cluster)"
    )
    parser.add_argument("--repeat", type=int, default=1000, help="parses per measurement")
    parser.add_argument(
        "--autoscaled",
        action="store_true",
        help="give every ModelDeployment autoscaling (minReplicas 1, maxReplicas 2) and the "
        "operator a loopback gateway /metrics page",
    )
    parser.add_argument(
        "--compare-with",
        type=Path,
        metavar="PATH",
        help="also measure the checkout at PATH (its packages, its CRD) and print both",
    )
    parser.add_argument(
        "--import-handlers",
        action="store_true",
        help="start the operator with hedge_operator.handlers imported first (works around "
        "a main.py that does not import it: kopf then runs with no handlers at all)",
    )
    parser.add_argument("--parse-worker", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # `timeout` and friends send SIGTERM: stop the operator and the cluster on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.parse_worker:  # in a subprocess that runs some checkout's packages
        Path(args.parse_worker).write_text(json.dumps(parse_times(args.repeat)))
        return 0

    def measure(root: Path) -> dict[str, Any]:
        parse = parse_times_of_checkout(root, args.repeat)
        if args.parse_only:
            return {"parse": parse}
        return {
            **run(
                args.count,
                args.idle,
                args.timeout,
                root=root,
                autoscaled=args.autoscaled,
                settle=args.settle,
                import_handlers=args.import_handlers,
            ),
            "parse": parse,
        }

    result: dict[str, Any] = measure(ROOT)
    if args.compare_with is not None:
        if args.json:  # kept if the other checkout's run fails
            args.json.write_text(json.dumps({"this_checkout": result}, indent=2) + "\n")
        base_root = args.compare_with.resolve()
        result = {"this_checkout": result, "compare_with": measure(base_root)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.compare_with is not None:
        print()
        print(side_by_side(result["this_checkout"], result["compare_with"], base_root.name))
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
