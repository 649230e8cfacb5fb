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
- parse time per object (`ModelDeployment.from_body`, in this process, no cluster): with the
  type hints resolved on every parse (as before they were cached), with them cached, and
  with the memo (a repeat of the same object, and a new generation of it).

Usage: .venv/bin/python bench/operator_scale.py [--count 200] [--idle 30] [--json FILE]
       .venv/bin/python bench/operator_scale.py --parse-only [--repeat 1000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from hedge_core.kube import BlockingKube
from hedge_dev import tools
from hedge_dev.cluster import DEFAULT_NODES, LocalCluster, gpu_nodes

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT / "crds" / "hedge.dev_modeldeployments.yaml"
NAMESPACE = "bench"
WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE", "APPLY", "CREATE", "UPDATE"}
WATCHED_RESOURCES = {"modeldeployments", "deployments", "services", "poddisruptionbudgets"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def model_deployment(i: int) -> dict[str, Any]:
    return {
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


def ready_times(api: BlockingKube, started: float, seen: dict[str, float]) -> int:
    items = api.request(
        "GET", f"/apis/hedge.dev/v1alpha1/namespaces/{NAMESPACE}/modeldeployments", timeout=30
    )["items"]
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
    """Microseconds per `from_body`, by body, in four ways (see the module docstring)."""
    from hedge_core.api import resource

    out = {body["metadata"]["name"]: parse_times_of(body, repeat) for body in parse_bodies()}
    resource._MEMO.clear()
    return out


def parse_times_of(body: dict[str, Any], repeat: int) -> dict[str, float]:
    import timeit
    import typing

    from hedge_core.api import ModelDeployment, resource, schema

    def per_call(fn: Any) -> float:
        fn()  # warm: hints resolved, memo filled
        return round(min(timeit.repeat(fn, number=repeat, repeat=3)) / repeat * 1e6, 1)

    cached_hints = schema._hints
    schema._hints = typing.get_type_hints  # what every parse did before the cache
    try:
        uncached = per_call(lambda: ModelDeployment.parse_body(body))
    finally:
        schema._hints = cached_hints
    generations = iter(range(2, 10**9))

    def new_generation() -> None:
        meta = {**body["metadata"], "generation": next(generations)}
        ModelDeployment.from_body({**body, "metadata": meta})

    resource._MEMO.clear()
    return {
        "uncached_hints_us": uncached,
        "cached_hints_us": per_call(lambda: ModelDeployment.parse_body(body)),
        "memo_hit_us": per_call(lambda: ModelDeployment.from_body(body)),
        "memo_miss_us": per_call(new_generation),
    }


def run(count: int, idle: float, timeout: float) -> dict[str, Any]:
    cluster = LocalCluster(f"bench-operator-{os.getpid()}")
    nodes = [*DEFAULT_NODES, *gpu_nodes(math.ceil(count / 8))]
    kubectl = str(tools.ensure_tools(["kubectl"])["kubectl"])
    operator: subprocess.Popen[bytes] | None = None
    api: BlockingKube | None = None
    log_file = Path(tempfile.mkstemp(prefix="hedge-operator-bench-", suffix=".log")[1])
    try:
        kubeconfig = cluster.up(nodes, timeout=300)
        api = cluster.api()
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

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

        k("apply", "--server-side", "-f", str(CRD))
        k("wait", "--for=condition=Established", "crd/modeldeployments.hedge.dev")
        k("create", "namespace", NAMESPACE)

        port = free_port()
        with open(log_file, "wb") as log:
            operator = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hedge_core.cli",
                    "operator",
                    "--metrics-port",
                    str(port),
                    "--health-port",
                    "0",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
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

        manifest = yaml.safe_dump_all([model_deployment(i) for i in range(count)])
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
                raise RuntimeError(f"only {len(seen)}/{count} Ready after {timeout:.0f}s")
            if operator.poll() is not None:
                raise RuntimeError(f"operator exited; see {log_file}")
            time.sleep(0.5)
        all_ready = time.monotonic() - started
        op_ready = operator_metrics(port)
        api_ready = apiserver_metrics(api)

        time.sleep(idle)  # a steady cluster: what does it cost?
        op_idle = operator_metrics(port)
        api_idle = apiserver_metrics(api)
        mem = proc_status(operator.pid)

        def delta(after: Any, before: Any, name: str, **labels: str) -> float:
            return total(after, name, **labels) - total(before, name, **labels)

        reconciles = delta(op_ready, op_before, "hedge_operator_reconciles_total")
        own_requests = delta(op_ready, op_before, "hedge_operator_api_requests_total")
        by_trigger = {
            t: delta(op_ready, op_before, "hedge_operator_reconciles_total", trigger=t)
            for t in ("spec", "child", "resync")
        }
        duration_sum = delta(op_ready, op_before, "hedge_operator_reconcile_duration_seconds_sum")
        times = sorted(seen.values())
        return {
            "count": count,
            "cpu_cores": os.cpu_count(),
            "kubectl_apply_seconds": round(applied, 2),
            "all_ready_seconds": round(all_ready, 2),
            "first_ready_seconds": round(times[0], 2),
            "median_ready_seconds": round(statistics.median(times), 2),
            "slowest": sorted(((round(t, 2), n) for n, t in seen.items()), reverse=True)[:3],
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
            "idle_window": {
                "seconds": idle,
                "reconciles": {
                    t: delta(op_idle, op_ready, "hedge_operator_reconciles_total", trigger=t)
                    for t in ("spec", "child", "resync")
                },
                "operator_api_requests": delta(
                    op_idle, op_ready, "hedge_operator_api_requests_total"
                ),
                "apiserver_writes_all_clients": apiserver_writes(api_ready, api_idle),
            },
        }
    finally:
        if operator is not None and operator.poll() is None:
            operator.terminate()
            try:
                operator.wait(timeout=15)
            except subprocess.TimeoutExpired:
                operator.kill()
        if api is not None:
            api.close()
        cluster.down(quiet=True)
        print(f"operator log: {log_file}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--idle", type=float, default=30.0, help="idle window (seconds)")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--parse-only", action="store_true", help="only the parse times (no cluster)"
    )
    parser.add_argument("--repeat", type=int, default=1000, help="parses per measurement")
    args = parser.parse_args()
    parse = parse_times(args.repeat)
    result = (
        {"parse": parse}
        if args.parse_only
        else {**run(args.count, args.idle, args.timeout), "parse": parse}
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
