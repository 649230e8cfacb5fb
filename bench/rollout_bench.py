"""Bad canaries: how long until the canary gets no traffic, and what clients saw, with Hedge
on the local cluster beside Flagger's and Argo Rollouts' default timing; and the extra GPUs a
rollout holds.

Hedge is run for real: a local cluster (hedge dev), the operator and the gateway, a
ModelDeployment of 2 simulated engine pods (1 GPU each) under a bounded load of non-streamed
chat completions (openai SDK, `--threads` at a time), and a Canary rollout (first step 20 %)
of a new revision that is bad through its pod annotations:

    hard-failing   sim.hedge.dev/error-rate: 1.0    (every request answers HTTP 500)
    slow           sim.hedge.dev/slowdown: 3        (3x time to first token and between tokens)

Measured: seconds from the canary's first traffic (the operator setting its weight) to its
weight back at 0 (the abort in status), the requests clients saw fail, and the canary
attempts that failed (retried on the stable revision). Then two good rollouts run to
promotion, with maxSurge 0 and 1, and a watch of the pods gives the most GPUs held at once
(terminating pods included) above the stable revision's.

Flagger and Argo Rollouts are not run (they need a service mesh or ingress and Prometheus);
their timing is computed from their published defaults at the request rate Hedge measured:

    Flagger        analysis.interval 1m, analysis.threshold 5 failed checks before rollback;
                   a failed canary request is not retried on the primary. Rollback after
                   threshold x interval. The canary Deployment runs at the primary's size
                   during the analysis (extra GPUs: the replicas).
    Argo Rollouts  the documented background analysis (interval 5m, failureLimit 3: the run
                   fails on the 4th failed measurement, more than failureLimit); a failed
                   request is not retried on stable. With traffic routing the stable
                   ReplicaSet stays at full size (dynamicStableScale false by default) while
                   the canary grows to its weight (extra GPUs: replicas x the highest weight).

Failed requests for them = rate x weight x error rate x time to weight 0 (the slow canary
fails no request; it is slow for everyone it serves meanwhile).

    .venv/bin/python bench/rollout_bench.py [--threads 3] [--keep-cluster]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import yaml

from hedge_dev import tools
from hedge_dev.cluster import LocalCluster, free_port
from hedge_dev.ledger import GpuLedger

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT / "crds" / "hedge.dev_modeldeployments.yaml"
MD, MODEL = "chat", "tiny"
REPLICAS = 2
WEIGHT = 20
FLAGGER_INTERVAL_S, FLAGGER_THRESHOLD = 60, 5
ARGO_INTERVAL_S, ARGO_FAILURE_LIMIT = 300, 3
MAX_LOAD_SECONDS = 180.0
MAX_LOAD_REQUESTS = 50_000


def model_deployment(version: str, rollout: dict[str, Any], bad: dict[str, str]) -> str:
    doc = {
        "apiVersion": "hedge.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": MD},
        "spec": {
            "model": {"source": "hf://org/tiny", "name": MODEL},
            "replicas": REPLICAS,
            "resources": {"gpus": 1, "gpuType": "nvidia-h100-80gb"},
            "engine": {
                "podAnnotations": {
                    "sim.hedge.dev/ttft-ms": "20",
                    "sim.hedge.dev/itl-ms": "2",
                    "bench.hedge.dev/version": version,
                    **bad,
                }
            },
            "rollout": rollout,
        },
    }
    return yaml.safe_dump(doc)


def canary(max_surge: int = 0, pause: int = 10) -> dict[str, Any]:
    return {
        "strategy": "Canary",
        "steps": [{"weight": WEIGHT, "pauseSeconds": pause}, {"weight": 50, "pauseSeconds": 3}],
        "maxSurge": max_surge,
        "maxUnavailable": 0 if max_surge else 1,
        "analysis": {"minRequests": 20},
    }


# ------------------------------------------------------------------------------ pieces


class Load:
    """Chat completions through the gateway from a few threads, bounded in time and count."""

    def __init__(self, url: str, threads: int) -> None:
        self.url = url
        self.done: list[float] = []
        self.failures: list[str] = []
        self._n = itertools.count()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + MAX_LOAD_SECONDS
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        client = openai.OpenAI(base_url=self.url, api_key="x", max_retries=0, timeout=30)
        try:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                n = next(self._n)
                if n >= MAX_LOAD_REQUESTS:
                    return
                try:
                    client.chat.completions.create(
                        model=MODEL,
                        messages=[{"role": "user", "content": f"bench {n}"}],
                        max_tokens=4,
                    )
                    self.done.append(time.monotonic())
                except openai.OpenAIError as exc:
                    self.failures.append(repr(exc))
        finally:
            client.close()

    def rate(self, since: float, until: float) -> float:
        n = sum(1 for t in self.done if since <= t <= until)
        return n / max(until - since, 1e-9)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(40)


@dataclass
class Hedge:
    """The local cluster with the operator and the gateway watching one namespace."""

    cluster: LocalCluster
    namespace: str
    gateway_url: str
    admin_url: str
    procs: list[subprocess.Popen[bytes]]

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        kubectl = tools.ensure_tools(["kubectl"])["kubectl"]
        out = subprocess.run(
            [str(kubectl), f"--kubeconfig={self.cluster.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return out.stdout

    def md(self) -> dict[str, Any]:
        out = self.kubectl("get", "md", MD, "-n", self.namespace, "-o", "json")
        return dict(json.loads(out))

    def apply(self, text: str) -> None:
        self.kubectl("apply", "-n", self.namespace, "-f", "-", stdin=text)

    def wait(self, check: Callable[[dict[str, Any]], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = check(self.md())
            if got:
                return got
            time.sleep(0.1)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")

    def gateway_counts(self, revision: str) -> dict[str, float]:
        """The gateway's attempts on one revision, by outcome."""
        with urllib.request.urlopen(self.admin_url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        counts: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("hedge_gateway_revision_requests_total{") and (
                f'revision="{revision}"' in line
            ):
                outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
                counts[outcome] = counts.get(outcome, 0.0) + float(line.rsplit(" ", 1)[1])
        return counts


def rollout_of(md: dict[str, Any]) -> dict[str, Any]:
    return dict((md.get("status") or {}).get("rollout") or {})


def settled(md: dict[str, Any]) -> str | None:
    s = md.get("status") or {}
    ready = next(
        (c for c in s.get("conditions", []) if c["type"] == "Ready" and c["status"] == "True"),
        None,
    )
    progressing = next(
        (c for c in s.get("conditions", []) if c["type"] == "Progressing"),
        {},
    )
    ok = (
        ready is not None
        and s.get("observedGeneration") == md["metadata"]["generation"]
        and progressing.get("status") == "False"
        and s.get("readyReplicas") == REPLICAS
        and s.get("replicas") == REPLICAS
    )
    return str(s["revision"]) if ok else None


def bring_up(args: argparse.Namespace, logs: Path) -> Hedge:
    cluster = LocalCluster("bench-rollout")
    cluster.up()
    namespace = "bench"
    hedge = Hedge(cluster, namespace, "", "", [])
    hedge.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    hedge.kubectl("wait", "--for=condition=Established", "crd/modeldeployments.hedge.dev")
    hedge.kubectl("create", "namespace", namespace)
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    port, admin = free_port(), free_port()
    hedge.gateway_url = f"http://127.0.0.1:{port}/v1"
    hedge.admin_url = f"http://127.0.0.1:{admin}"

    def run(name: str, *cmd: str) -> None:
        log = open(logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        hedge.procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "hedge_core.cli", *cmd],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )
        )

    run(
        "gateway",
        "gateway",
        "--kubeconfig",
        str(cluster.kubeconfig),
        "--namespace",
        namespace,
        "--port",
        str(port),
        "--admin-port",
        str(admin),
        "--drain-delay",
        "0",
    )
    run(
        "operator",
        "operator",
        "--namespace",
        namespace,
        "--metrics-port",
        "0",
        "--health-port",
        "0",
        "--gateway-metrics-url",
        f"{hedge.admin_url}/metrics",
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(hedge.admin_url + "/readyz", timeout=2):
                break
        except OSError:
            time.sleep(0.2)
    return hedge


def scenario(
    hedge: Hedge, args: argparse.Namespace, name: str, bad: dict[str, str]
) -> dict[str, Any]:
    """One bad canary under load: time to weight 0, failures, request rate."""
    rollout = canary(pause=10)
    hedge.apply(model_deployment("stable", rollout, {}))
    stable = hedge.wait(settled, 120, "the stable revision")
    with Load(hedge.gateway_url, args.threads) as load:
        time.sleep(2)  # the load gets going
        hedge.apply(model_deployment(f"{name}-canary", rollout, bad))
        hedge.wait(lambda md: rollout_of(md).get("canaryWeight"), 120, "the canary's traffic")
        first = time.monotonic()
        md = hedge.wait(
            lambda md: md if rollout_of(md).get("abortedRevision") else None, 120, "the abort"
        )
        zero = time.monotonic() - first
        target = rollout_of(md)["abortedRevision"]
        rate = load.rate(first, first + zero)
    return {
        "name": name,
        "seconds": zero,
        "failed": len(load.failures),
        "canary": hedge.gateway_counts(target),
        "rate": rate,
        "reason": rollout_of(md).get("abortReason", ""),
        "stable": stable,
    }


def good_rollout(hedge: Hedge, args: argparse.Namespace, surge: int) -> int:
    """A good canary to promotion; the most GPUs held at once above the stable revision's."""
    rollout = canary(max_surge=surge, pause=3)
    hedge.apply(model_deployment("stable" if surge == 0 else "good-0", rollout, {}))
    hedge.wait(settled, 120, "the stable revision")
    ledger = GpuLedger(hedge.cluster.kubeconfig, hedge.namespace)
    try:
        ledger.reset_peak()
        with Load(hedge.gateway_url, args.threads):
            hedge.apply(model_deployment(f"good-{surge}", rollout, {}))
            target = hedge.wait(
                lambda md: (
                    (md.get("status") or {}).get("revision")
                    if md["status"].get("observedGeneration") == md["metadata"]["generation"]
                    else None
                ),
                30,
                "the new revision",
            )
            hedge.wait(lambda md: settled(md) == target, 180, "the promotion")
        return ledger.peak - REPLICAS
    finally:
        ledger.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--threads", type=int, default=3, help="load threads")
    parser.add_argument("--keep-cluster", action="store_true")
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="hedge-rollout-bench-"))
    hedge = bring_up(args, logs)
    try:
        bad = {
            "hard-failing": {"sim.hedge.dev/error-rate": "1.0"},
            "slow (3x)": {"sim.hedge.dev/slowdown": "3"},
        }
        results = [scenario(hedge, args, n.split()[0], b) for n, b in bad.items()]
        surge0 = good_rollout(hedge, args, 0)
        surge1 = good_rollout(hedge, args, 1)
    finally:
        for p in hedge.procs:
            p.terminate()
        for p in hedge.procs:
            p.wait(30)
        if not args.keep_cluster:
            hedge.cluster.down(quiet=True)
    report(results, surge0, surge1, args)
    print(f"(logs in {logs})")
    return 0


def report(
    results: list[dict[str, Any]], surge0: int, surge1: int, args: argparse.Namespace
) -> None:
    flagger_s = FLAGGER_INTERVAL_S * FLAGGER_THRESHOLD
    argo_s = ARGO_INTERVAL_S * (ARGO_FAILURE_LIMIT + 1)
    print(f"# bad canaries at {WEIGHT}% weight, {REPLICAS} replicas, {args.threads} client threads")
    print(
        f"{'canary':13} {'who':14} {'s to weight 0':>13} {'failed requests':>16} "
        f"{'badly served':>13}"
    )
    for r in results:
        hard = r["name"] == "hard-failing"
        canary_rps = r["rate"] * WEIGHT / 100
        # Hedge: errors it retried on stable (hard-failing), or slow answers (slow).
        bad = r["canary"].get("error" if hard else "success", 0.0)
        print(
            f"{r['name']:13} {'Hedge':14} {r['seconds']:13.1f} {r['failed']:16d} {bad:13.0f}"
            f"   measured at {r['rate']:.0f} req/s"
        )
        for who, secs in (("Flagger", flagger_s), ("Argo Rollouts", argo_s)):
            served = canary_rps * secs
            failed = math.floor(served) if hard else 0
            print(f"{'':13} {who:14} {secs:13.0f} {failed:16d} {math.floor(served):13d}   computed")
        print(f"{'':13} Hedge's reason: {r['reason']}")
    print("# extra GPUs held during a good rollout to promotion (above the stable revision's)")
    print(f"  Hedge maxSurge 0: {surge0}   Hedge maxSurge 1: {surge1}   (measured, pod watch)")
    print(
        f"  Flagger: {REPLICAS} (the canary runs at the primary's size)   Argo Rollouts with "
        f"traffic routing: {math.ceil(REPLICAS * 50 / 100)} at 50%, {REPLICAS} at 100% "
        "(stable stays full size)   (computed)"
    )
    print(
        "  badly served: requests the bad canary answered with an error (Hedge retried each "
        "on the stable revision) or slowly, until its weight was 0"
    )


if __name__ == "__main__":
    sys.exit(main())
