"""Rollouts on the local cluster (docs/rollouts.md), the whole chain: a spec change → the
operator's rollout state machine → per-revision Deployments and Services → the gateway
splitting a bounded load (openai SDK clients) by the canary's weight and measuring each
revision → the operator judging the canary from the gateway's /metrics → promotion or
abort.

Bad canaries are real: the new revision's pod annotations make its engine simulator fail
(`sim.hedge.dev/error-rate`), slow (`sim.hedge.dev/slowdown`), crash-loop
(`sim.hedge.dev/container-state`) or ask for a GPU no node has. GPUs in use are counted from a
watch of the namespace's pods (every scheduled pod that has not finished holds its GPUs,
terminating ones included, as the scheduler counts them).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest
import yaml

from hedge_dev.ledger import GpuLedger
from hedge_operator.dataplane.signals import parse_gateway

from . import test_gateway as gateway_e2e
from .conftest import (
    API,
    ROOT,
    E2ECluster,
    HedgeProcess,
    Operator,
    condition,
    get_md,
    wait_for,
    wait_ready,
)
from .traffic import EGRESS_ARGS, FALLBACK_MODEL, FallbackProvider, Load

MD = "chat"
MODEL = "tiny"
GPU = "nvidia-h100-80gb"  # an 8-GPU node of the local cluster
LATENCY = {"sim.hedge.dev/ttft-ms": "20", "sim.hedge.dev/itl-ms": "2"}
# Load: a few threads of non-streamed chat completions, each bounded in time and count.
LOAD_THREADS = 3
LOAD_MAX_REQUESTS = 6000
LOAD_MAX_SECONDS = 120.0


# ----------------------------------------------------------------------------- specs


def model_deployment(
    *,
    version: str = "1",
    rollout: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    replicas: int = 2,
    gpus: int = 1,
    gpu_type: str = GPU,
    fallback_url: str | None = None,
) -> dict[str, Any]:
    """`version` goes into the pod template (a new one is a new revision)."""
    spec: dict[str, Any] = {
        "model": {"source": "hf://org/tiny", "name": MODEL},
        "replicas": replicas,
        "resources": {"gpus": gpus, "gpuType": gpu_type},
        "engine": {
            "podAnnotations": {**LATENCY, "hedge.test/version": version, **(annotations or {})}
        },
        "serving": {"requestTimeoutSeconds": 30},
        "rollout": rollout or {},
    }
    if fallback_url is not None:
        spec["fallback"] = {
            "providers": [
                {
                    "type": "OpenAICompatible",
                    "model": FALLBACK_MODEL,
                    "baseURL": fallback_url,
                    "apiKeySecretRef": {"name": "fallback", "key": "api-key"},
                }
            ]
        }
    return {
        "apiVersion": "hedge.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": MD},
        "spec": spec,
    }


def canary(*steps: tuple[int, int], **more: Any) -> dict[str, Any]:
    analysis = {"minRequests": 20, **more.pop("analysis", {})}
    return {
        "strategy": "Canary",
        "steps": [{"weight": w, "pauseSeconds": p} for w, p in steps],
        "analysis": analysis,
        **more,
    }


# ------------------------------------------------------------------------ the rig


def load_through(base_url: str) -> Load:
    return Load(
        base_url,
        MODEL,
        threads=LOAD_THREADS,
        max_requests=LOAD_MAX_REQUESTS,
        max_seconds=LOAD_MAX_SECONDS,
    )


@dataclass
class Rig:
    cluster: E2ECluster
    namespace: str
    gateway: gateway_e2e.Gateway
    operator: Operator
    fallback: FallbackProvider
    ledger: GpuLedger

    def apply(self, doc: dict[str, Any]) -> None:
        self.cluster.apply(doc, self.namespace)

    def md(self) -> dict[str, Any]:
        return get_md(self.cluster, self.namespace, MD)

    def rollout(self) -> dict[str, Any]:
        return dict((self.md().get("status") or {}).get("rollout") or {})

    def ready(self, replicas: int = 2, timeout: float = 90) -> str:
        """Waits for a settled, Ready model; its revision."""
        md = wait_ready(self.cluster, self.namespace, MD, replicas=replicas, timeout=timeout)
        return str(md["status"]["revision"])

    def until(
        self, check: Callable[[dict[str, Any]], Any], timeout: float, what: str
    ) -> dict[str, Any]:
        """Polls the ModelDeployment until `check(md)` is truthy and returns it; a timeout
        shows where the rollout stood and the operator's last words."""
        last: dict[str, Any] = {}

        def poll() -> Any:
            last["md"] = self.md()
            return check(last["md"])

        try:
            wait_for(poll, timeout, what, interval=0.1)
            return dict(last["md"])
        except pytest.fail.Exception:
            status = (last.get("md") or {}).get("status") or {}
            log = self.operator.proc.log() if self.operator.proc else ""
            print("status.rollout:", status.get("rollout"))
            print("conditions:", status.get("conditions"))
            print("operator log:\n" + "\n".join(log.splitlines()[-30:]))
            raise

    def events(self, reason: str | None = None) -> list[tuple[str, str, str]]:
        items = self.cluster.get(f"/api/v1/namespaces/{self.namespace}/events")["items"]
        out = [
            (e["type"], e["reason"], e.get("message", ""))
            for e in sorted(items, key=lambda e: e["metadata"]["creationTimestamp"])
            if e["involvedObject"].get("kind") == "ModelDeployment"
        ]
        return [e for e in out if reason is None or e[1] == reason]

    def routed(self) -> int:
        """Backends of MODEL in the gateway's routing table."""
        return len(
            [
                line
                for line in self.gateway.metrics().splitlines()
                if line.startswith("hedge_gateway_backend_in_flight{")
                and f'model="{MODEL}"' in line
            ]
        )

    def revision_counts(self) -> dict[str, dict[str, float]]:
        """The gateway's per-revision attempts by outcome."""
        reading = parse_gateway(self.gateway.metrics())
        out: dict[str, dict[str, float]] = {}
        for key, value in reading.counters.items():
            if key[0] == "requests" and key[1:3] == (self.namespace, MD):
                out.setdefault(key[3], {})[key[4]] = value
        return out

    def deployments(self) -> dict[str, int]:
        items = self.cluster.get(
            f"/apis/apps/v1/namespaces/{self.namespace}/deployments"
            f"?labelSelector=hedge.dev%2Fmodel-deployment%3D{MD}"
        )["items"]
        return {
            d["metadata"]["labels"]["hedge.dev/revision"]: int(d["spec"]["replicas"])
            for d in items
            if not d["metadata"].get("deletionTimestamp")
        }

    def hedge(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`hedge rollout ...` against the session cluster."""
        return subprocess.run(
            [sys.executable, "-m", "hedge_core.cli", "rollout", *args, MD, "-n", self.namespace],
            capture_output=True,
            text=True,
            timeout=60,
            env=self.cluster.env,
            cwd=ROOT,
            check=False,
        )


@pytest.fixture
def rig(
    cluster: E2ECluster,
    namespace: str,
    crd: None,
    hedge_process: Callable[..., HedgeProcess],
) -> Iterator[Rig]:
    fallback = FallbackProvider(gateway_e2e.FALLBACK_KEY)
    gw = gateway_e2e.Gateway(
        hedge_process(
            "gateway",
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--namespace",
            namespace,
            "--port",
            "0",
            "--admin-port",
            "0",
            "--drain-delay",
            "0",
            *EGRESS_ARGS,
        )
    )
    operator = Operator(
        hedge_process, namespace, "--gateway-metrics-url", f"{gw.admin}/metrics"
    ).start()
    cluster.apply(gateway_e2e.fallback_secret(), namespace)
    ledger = GpuLedger(cluster.kubeconfig, namespace)
    r = Rig(cluster, namespace, gw, operator, fallback, ledger)
    try:
        yield r
    finally:
        ledger.close()
        fallback.close()
    if operator.proc is not None:
        operator.proc.assert_running()
    gw.proc.assert_running()


def start(rig: Rig, **spec: Any) -> str:
    """The first revision, Ready with its pods in the gateway's table; its revision."""
    rig.apply(model_deployment(**spec))
    revision = rig.ready(spec.get("replicas", 2))
    wait_for(lambda: rig.routed() == spec.get("replicas", 2), 30, "the pods in the gateway")
    return revision


def new_revision(rig: Rig, stable: str) -> str:
    """The revision the operator reports once it has seen the spec change."""

    def seen(md: dict[str, Any]) -> str | None:
        status = md.get("status") or {}
        revision = status.get("revision")
        current = status.get("observedGeneration") == md["metadata"]["generation"]
        return str(revision) if current and revision not in (None, stable) else None

    return str(seen(rig.until(seen, 30, "the operator to see the new revision")))


# ------------------------------------------------------------------------------ tests


def test_a_good_canary_goes_through_every_step_and_is_promoted(rig: Rig) -> None:
    steps = canary((25, 3), (50, 3))
    stable = start(rig, rollout=steps)
    with load_through(rig.gateway.url + "/v1") as load:
        wait_for(lambda: len(load.answers) >= 20, 30, "load running")
        rig.apply(model_deployment(version="2", rollout=steps))
        target = new_revision(rig, stable)
        seen_weights: set[int] = set()

        def promoted(md: dict[str, Any]) -> bool:
            r = md.get("status", {}).get("rollout") or {}
            if r.get("canaryWeight"):
                seen_weights.add(int(r["canaryWeight"]))
            return r.get("stableRevision") == target and not r.get("canaryRevision")

        rig.until(promoted, 90, "the canary promoted")
        final = rig.ready(2, timeout=60)
        wait_for(lambda: rig.deployments() == {target: 2}, 30, "only the new Deployment")
        wait_for(lambda: len(load.answers) >= 20 + 40, 30, "load after the promotion")
    assert final == target
    assert load.failures == []
    assert seen_weights <= {25, 50} and 50 in seen_weights
    reasons = [r for _, r, _ in rig.events() if r.startswith("Rollout")]
    assert reasons.count("RolloutStarted") == 1
    assert reasons.count("RolloutStep") == 2 and reasons.count("RolloutStepPassed") == 2
    assert reasons.count("RolloutPromoted") == 1 and "RolloutAborted" not in reasons
    passed = [m for _, _, m in rig.events("RolloutStepPassed")]
    assert all("canary error rate 0.0%" in m and "TTFT" in m for m in passed), passed
    # maxSurge 0 (the default): never a GPU more than the stable revision had.
    assert rig.ledger.peak == 2
    # (The old revision's series left the gateway's /metrics with its last pod.)
    counts = rig.revision_counts()
    assert counts[target].get("success", 0) > 0 and counts[target].get("error", 0) == 0
    analysis = rig.rollout()["lastAnalysis"]
    assert analysis["verdict"] == "Pass" and analysis["canary"]["requests"] >= 20


def test_a_canary_failing_30_percent_is_rolled_back_without_a_client_failure(rig: Rig) -> None:
    # Half the traffic, so even a slowed-down machine sends the canary the tripwire's sample
    # (10 requests) within a few seconds.
    steps = canary((50, 60))
    stable = start(rig, rollout=steps)
    with load_through(rig.gateway.url + "/v1") as load:
        wait_for(lambda: len(load.answers) >= 20, 30, "load running")
        rig.apply(
            model_deployment(
                version="2", rollout=steps, annotations={"sim.hedge.dev/error-rate": "0.3"}
            )
        )
        target = new_revision(rig, stable)
        rig.until(lambda md: (md["status"].get("rollout") or {}).get("canaryWeight"), 60, "traffic")
        first_traffic = time.monotonic()
        rig.until(
            lambda md: (md["status"].get("rollout") or {}).get("abortedRevision") == target,
            30,
            "the abort",
        )
        aborted_after = time.monotonic() - first_traffic
        wait_for(lambda: rig.deployments() == {stable: 2, target: 0}, 30, "the canary at zero")
        wait_for(lambda: len(load.answers) >= 20 + 40, 30, "load after the abort")
    assert load.failures == []
    assert aborted_after <= 10, aborted_after
    r = rig.rollout()
    assert r.get("canaryWeight") in (None, 0) and "error rate" in r["abortReason"]
    md = rig.md()
    assert (condition(md, "Degraded")["status"], condition(md, "Degraded")["reason"]) == (
        "True",
        "RolloutAborted",
    )
    assert condition(md, "Stalled")["status"] == "True"  # kstatus (Flux): Failed
    (abort,) = [m for t, _, m in rig.events("RolloutAborted") if t == "Warning"]
    assert "tripwire" in abort and "%" in abort and f"traffic back on {stable}" in abort
    # The canary really failed requests (counted against it); the clients never saw one.
    counts = rig.revision_counts()
    assert counts[target]["error"] >= 2
    print(f"\n30% errors: aborted {aborted_after:.1f}s after its first traffic: {abort}")


def test_a_slow_canary_is_aborted_at_the_end_of_its_first_step(rig: Rig) -> None:
    pause = 5
    steps = canary((50, pause), (100, 5))
    stable = start(rig, rollout=steps)
    with load_through(rig.gateway.url + "/v1") as load:
        wait_for(lambda: len(load.answers) >= 20, 30, "load running")
        rig.apply(
            model_deployment(
                version="2", rollout=steps, annotations={"sim.hedge.dev/slowdown": "3"}
            )
        )
        target = new_revision(rig, stable)
        rig.until(lambda md: (md["status"].get("rollout") or {}).get("canaryWeight"), 60, "traffic")
        first_traffic = time.monotonic()
        rig.until(
            lambda md: (md["status"].get("rollout") or {}).get("abortedRevision") == target,
            pause + 30,
            "the abort",
        )
        aborted_after = time.monotonic() - first_traffic
    md = rig.md()
    assert load.failures == []
    reason = md["status"]["rollout"]["abortReason"]
    assert "is " in reason and "x stable's" in reason, reason
    assert "time to first token" in reason or "inter-token latency" in reason
    # Judged at the end of the step, not before (no errors: the tripwire has nothing).
    assert aborted_after >= pause - 1, aborted_after
    analysis = md["status"]["rollout"]["lastAnalysis"]
    assert analysis["verdict"] == "Fail"
    assert analysis["canary"]["ttftMeanSeconds"] > 2 * analysis["stable"]["ttftMeanSeconds"]
    assert next(m for _, _, m in rig.events("RolloutAborted")).startswith("canary ")
    print(f"\nslow canary: aborted {aborted_after:.1f}s after its first traffic: {reason}")


@pytest.mark.parametrize("fault", ["CrashLoopBackOff", "Unschedulable"])
def test_a_canary_that_cannot_start_is_aborted_and_stable_is_untouched(
    rig: Rig, fault: str
) -> None:
    # A free GPU for the canary (maxSurge 1) and none of stable's to give (maxUnavailable 0).
    steps = canary((50, 60), maxSurge=1, maxUnavailable=0, gpuWaitSeconds=3)
    stable = start(rig, rollout=steps)
    broken: dict[str, Any] = {"version": "2", "rollout": steps}
    if fault == "CrashLoopBackOff":
        broken["annotations"] = {"sim.hedge.dev/container-state": "CrashLoopBackOff"}
    else:
        broken["gpu_type"] = "nvidia-l4"  # a known GPU type no node of this cluster has
    stable_ready: list[int] = []

    def stable_pods_ready() -> int:
        pods = rig.cluster.get(
            f"/api/v1/namespaces/{rig.namespace}/pods?labelSelector=hedge.dev%2Frevision%3D{stable}"
        )["items"]
        return sum(
            1
            for p in pods
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p.get("status", {}).get("conditions", [])
            )
        )

    with load_through(rig.gateway.url + "/v1") as load:
        rig.apply(model_deployment(**broken))
        target = new_revision(rig, stable)

        def detected() -> bool:
            stable_ready.append(stable_pods_ready())
            pods = rig.cluster.get(
                f"/api/v1/namespaces/{rig.namespace}/pods"
                f"?labelSelector=hedge.dev%2Frevision%3D{target}"
            )["items"]
            text = str([p.get("status") for p in pods])
            return fault in text

        wait_for(detected, 60, f"the canary pod to show {fault}")
        detected_at = time.monotonic()

        def aborted() -> bool:
            stable_ready.append(stable_pods_ready())
            return rig.rollout().get("abortedRevision") == target

        wait_for(aborted, 30, "the abort")
        took = time.monotonic() - detected_at
        wait_for(lambda: rig.deployments() == {stable: 2, target: 0}, 30, "the canary at zero")
        wait_for(
            lambda: not rig.ledger.held or sum(rig.ledger.held.values()) == 2,
            30,
            "the canary's GPU freed",
        )
    assert load.failures == []
    assert took <= 30
    assert min(stable_ready) == 2  # stable never lost a pod
    reason = rig.rollout()["abortReason"]
    assert fault in reason or "waited" in reason, reason
    print(f"\n{fault}: aborted {took:.1f}s after it showed: {reason}")


@pytest.mark.parametrize("strategy", ["RollingUpdate", "Canary"])
def test_a_full_gpu_node_with_no_surge_rolls_out_without_a_failed_request(
    rig: Rig, strategy: str
) -> None:
    # One pod of eight GPUs: the whole node. maxSurge 0: the stable pod goes first, and the
    # fallback answers while the new one starts (it takes 2 s to load).
    url = rig.fallback.url
    rollout = {"strategy": "RollingUpdate"} if strategy == "RollingUpdate" else canary((50, 3))
    spec: dict[str, Any] = {
        "rollout": rollout,
        "replicas": 1,
        "gpus": 8,
        "gpu_type": "nvidia-a100-80gb",
        "fallback_url": url,
        "annotations": {"sim.hedge.dev/startup-delay-ms": "2000"},
    }
    stable = start(rig, **spec)
    assert rig.ledger.peak == 8
    with load_through(rig.gateway.url + "/v1") as load:
        wait_for(lambda: len(load.answers) >= 20, 30, "load running")
        rig.apply(model_deployment(version="2", **spec))
        target = new_revision(rig, stable)
        rig.until(
            lambda md: (md["status"].get("rollout") or {}).get("stableRevision") == target,
            120,
            "the new revision stable",
        )
        rig.ready(1, timeout=90)
        wait_for(lambda: rig.deployments() == {target: 1}, 30, "only the new Deployment")
        back = len(load.answers)
        wait_for(lambda: len(load.answers) >= back + 20, 30, "load after the rollout")
    assert load.failures == []
    assert rig.ledger.peak == 8  # never a GPU more than the node has, and no deadlock
    served = {a.served_by for a in load.answers}
    assert served == {"self-hosted", "openai-compatible"}  # the fallback covered the gap
    fallback = sum(1 for a in load.answers if a.served_by != "self-hosted")
    print(
        f"\n{strategy}, full node: {len(load.answers)} requests, 0 failed, "
        f"{fallback} answered by the fallback while the new pod loaded"
    )


def test_the_canary_gets_its_weight_of_500_requests(rig: Rig) -> None:
    steps = canary((20, 3600))  # held at 20 % for the test
    stable = start(rig, rollout=steps)
    rig.apply(model_deployment(version="2", rollout=steps))
    target = new_revision(rig, stable)
    rig.until(lambda md: (md["status"].get("rollout") or {}).get("canaryWeight") == 20, 60, "20%")
    # Both revisions in the gateway's table (one canary pod, one stable: maxSurge 0).
    wait_for(lambda: rig.routed() == 2, 30, "a pod of each revision in the gateway")
    before = rig.revision_counts()
    client = openai.OpenAI(base_url=rig.gateway.url + "/v1", api_key="x", max_retries=0)
    try:
        for i in range(500):
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"split {i}"}], max_tokens=2
            )
    finally:
        client.close()
    after = rig.revision_counts()

    def sent(revision: str) -> float:
        return sum(after.get(revision, {}).values()) - sum(before.get(revision, {}).values())

    share = sent(target) / (sent(target) + sent(stable)) * 100
    print(f"\ncanary at 20%: {sent(target):.0f} of 500 requests ({share:.1f}%)")
    assert sent(target) + sent(stable) == 500
    assert 15 <= share <= 25


def test_pause_resume_promote_abort_and_retry_with_the_cli(rig: Rig) -> None:
    steps = canary((50, 3600))  # held: only the commands move it
    stable = start(rig, rollout=steps)
    rig.apply(model_deployment(version="2", rollout=steps))
    target = new_revision(rig, stable)
    rig.until(lambda md: (md["status"].get("rollout") or {}).get("canaryWeight") == 50, 60, "50%")

    out = rig.hedge("pause")
    assert out.returncode == 0, out.stderr
    md = rig.until(lambda md: md["status"]["rollout"].get("paused"), 15, "paused")
    assert condition(md, "Progressing")["reason"] == "RolloutPaused"
    status = rig.hedge("status")
    assert status.returncode == 0 and "paused        yes" in status.stdout, status.stdout
    assert f"rolling out   {target} over {stable}" in status.stdout
    assert rig.hedge("resume").returncode == 0
    rig.until(lambda md: not md["status"]["rollout"].get("paused"), 15, "resumed")

    assert rig.hedge("promote").returncode == 0
    rig.until(lambda md: md["status"]["rollout"].get("stableRevision") == target, 15, "promoted")
    rig.ready(2, timeout=60)
    promoted = [m for _, _, m in rig.events("RolloutPromoted")]
    assert any("hedge.dev/promote=" in m for m in promoted), promoted

    refused = rig.hedge("promote")  # nothing to promote now
    assert refused.returncode == 1 and "no rollout" in refused.stderr

    rig.apply(model_deployment(version="3", rollout=steps))
    third = new_revision(rig, target)
    rig.until(lambda md: md["status"]["rollout"].get("canaryWeight") == 50, 60, "50% again")
    assert rig.hedge("abort").returncode == 0
    md = rig.until(lambda md: md["status"]["rollout"].get("abortedRevision") == third, 15, "abort")
    assert "aborted by hedge.dev/abort=" in md["status"]["rollout"]["abortReason"]
    wait_for(lambda: rig.deployments() == {target: 2, third: 0}, 30, "the canary at zero")
    assert rig.hedge("retry").returncode == 0
    rig.until(lambda md: md["status"]["rollout"].get("canaryRevision") == third, 30, "retried")
    assert [r for _, r, _ in rig.events("RolloutRetried")] == ["RolloutRetried"]


def test_the_same_commands_with_kubectl_annotate(rig: Rig) -> None:
    steps = canary((50, 3600))
    stable = start(rig, rollout=steps)
    rig.apply(model_deployment(version="2", rollout=steps))
    target = new_revision(rig, stable)
    rig.until(lambda md: (md["status"].get("rollout") or {}).get("canaryWeight") == 50, 60, "50%")

    def annotate(*args: str) -> None:
        rig.cluster.kubectl("annotate", "-n", rig.namespace, f"md/{MD}", "--overwrite", *args)

    annotate(f"hedge.dev/pause={target}")
    rig.until(lambda md: md["status"]["rollout"].get("paused"), 15, "paused")
    annotate("hedge.dev/pause-")
    rig.until(lambda md: not md["status"]["rollout"].get("paused"), 15, "resumed")
    annotate(f"hedge.dev/abort={target}")
    rig.until(lambda md: md["status"]["rollout"].get("abortedRevision") == target, 15, "aborted")
    annotate(f"hedge.dev/retry={target}")
    rig.until(lambda md: md["status"]["rollout"].get("canaryRevision") == target, 30, "retried")
    # The abort annotation is still there, but its value has been acted on: no new abort.
    rig.until(lambda md: md["status"]["rollout"].get("canaryWeight") == 50, 60, "50% again")
    assert rig.rollout().get("abortedRevision") is None
    annotate(f"hedge.dev/promote={stable}")  # names the wrong revision: ignored, with a Warning
    wait_for(lambda: rig.events("RolloutCommandIgnored"), 15, "the ignored command's Event")
    assert rig.rollout().get("canaryRevision") == target
    annotate(f"hedge.dev/promote={target}")
    rig.until(lambda md: md["status"]["rollout"].get("stableRevision") == target, 15, "promoted")
    rig.ready(2, timeout=60)


def test_a_newer_spec_replaces_the_rollout_and_a_restart_half_promotes_nothing(
    rig: Rig,
) -> None:
    steps = canary((50, 3600))
    stable = start(rig, rollout=steps)
    with load_through(rig.gateway.url + "/v1") as load:
        rig.apply(model_deployment(version="2", rollout=steps))
        second = new_revision(rig, stable)
        rig.until(lambda md: md["status"]["rollout"].get("canaryWeight") == 50, 60, "step 1")
        # A newer spec while the canary runs: it replaces the rollout, the intermediate
        # revision is scaled away.
        quick = canary((50, 4))
        rig.apply(model_deployment(version="3", rollout=quick))
        third = new_revision(rig, second)
        rig.until(lambda md: md["status"]["rollout"].get("canaryRevision") == third, 30, "v3")
        wait_for(lambda: second not in rig.deployments(), 30, "the intermediate revision gone")
        rig.until(lambda md: md["status"]["rollout"].get("canaryWeight") == 50, 60, "v3 step 1")
        # The operator restarts in the middle of the step: it carries on from status.
        assert rig.operator.proc is not None
        rig.operator.proc.stop()
        at_restart = rig.rollout()
        rig.operator.start()
        rig.until(lambda md: md["status"]["rollout"].get("stableRevision") == third, 60, "done")
        rig.ready(2, timeout=60)
        wait_for(lambda: rig.deployments() == {third: 2}, 30, "only v3 left")
    assert load.failures == []
    assert at_restart["canaryRevision"] == third and at_restart["step"] == 1
    reasons = [r for _, r, _ in rig.events() if r.startswith("Rollout")]
    assert reasons.count("RolloutReplaced") == 1
    assert reasons.count("RolloutStarted") == 2  # v2, v3; not again after the restart
    assert reasons.count("RolloutPromoted") == 1
    assert rig.ledger.peak == 2


# ---------------------------------------------------------------------- bad input


def test_cel_refuses_bad_rollouts(cluster: E2ECluster, namespace: str, crd: None) -> None:
    for rollout, message in (
        ({"strategy": "Canary", "steps": [{"weight": 50}, {"weight": 20}]}, "must not decrease"),
        ({"strategy": "RollingUpdate", "steps": [{"weight": 10}]}, "Canary strategy only"),
        ({"analysis": {"maxTtftRatio": 0.5}}, "spec.rollout.analysis.maxTtftRatio"),
        ({"maxSurge": 0, "maxUnavailable": 0}, "must not both be 0"),
    ):
        doc = model_deployment(rollout=rollout)
        proc = cluster.kubectl(
            "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc), check=False
        )
        assert proc.returncode != 0 and message in proc.stderr, (rollout, proc.stderr)
    assert cluster.get(f"{API}/namespaces/{namespace}/modeldeployments")["items"] == []
