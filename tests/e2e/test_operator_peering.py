"""Two operator replicas with kopf peering: the higher priority reconciles, the other waits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from . import test_gateway as gateway_e2e
from .conftest import (
    ROOT,
    E2ECluster,
    HedgeProcess,
    Operator,
    get_md,
    md_ready,
    wait_established,
    wait_for,
)
from .test_rollouts import canary, load_through, model_deployment

PEERING_CRDS = ROOT / "charts" / "hedge" / "crds" / "kopf-peerings.yaml"


def peering_object(cluster: E2ECluster, namespace: str) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(PEERING_CRDS))
    wait_established(cluster, "kopfpeerings.kopf.dev", timeout=30)
    cluster.apply(
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "hedge"}},
        namespace,
    )


def test_two_replicas_elect_one_active_operator(
    cluster: E2ECluster, namespace: str, crd: None, hedge_process: Callable[..., HedgeProcess]
) -> None:
    peering_object(cluster, namespace)

    def operator(priority: int) -> HedgeProcess:
        return hedge_process(
            "operator",
            f"--namespace={namespace}",
            "--peering=hedge",
            f"--peering-priority={priority}",
            "--metrics-port=0",
            "--health-port=0",
        )

    standby = operator(10)
    active = operator(20)

    # The stand-by, up first, may resume until it sees its peer: the model only comes once
    # both peers are registered, the active one runs and the stand-by is paused.
    def settled() -> bool:
        peering = cluster.get(f"/apis/kopf.dev/v1/namespaces/{namespace}/kopfpeerings/hedge")
        priorities = sorted(p.get("priority") for p in (peering.get("status") or {}).values())
        return (
            priorities == [10, 20]
            and peering_state(active.log()) == "running"
            and peering_state(standby.log()) == "paused"
        )

    wait_for(settled, 30, "the two peers to settle")
    cluster.apply(Path(ROOT / "examples" / "quickstart.yaml").read_text(), namespace)
    try:
        wait_for(lambda: md_ready(cluster, namespace, "llama-3-8b"), 90, "the model to be Ready")
    finally:
        print(f"standby log:\n{standby.log()[-3000:]}\nactive log:\n{active.log()[-3000:]}")
    active.assert_running()
    standby.assert_running()
    # kopf starts every peer paused; the higher priority resumes, the lower stays paused (it
    # logs "Pausing" only if it had resumed before seeing its peer).
    assert peering_state(active.log()) == "running"
    assert peering_state(standby.log()) == "paused"
    # Only the active replica reconciled: the stand-by never touched the model.
    assert "llama-3-8b" in active.log()
    assert "llama-3-8b" not in standby.log()


def peering_state(log: str) -> str:
    state = "paused"
    for line in log.splitlines():
        if "Resuming operations after the pause" in line:
            state = "running"
        elif "Pausing operations" in line or "Pausing all operators" in line:
            state = "paused"
    return state


WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")


def writes(op: Operator) -> dict[tuple[str, str], float]:
    """The operator's own API writes so far, by (verb, resource): its request counter."""
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(op.metrics()):
        for sample in family.samples:
            if (
                sample.name == "hedge_operator_api_requests_total"
                and sample.labels.get("verb", "").upper() in WRITE_VERBS
            ):
                key = (sample.labels["verb"], sample.labels["resource"])
                out[key] = out.get(key, 0.0) + sample.value
    return out


def test_a_paused_replica_writes_nothing_while_a_rollout_moves_on(
    cluster: E2ECluster, namespace: str, crd: None, hedge_process: Callable[..., HedgeProcess]
) -> None:
    """Split brain (issue 16): A (priority 20) runs a canary; A stops, B (10) takes over and
    drives the rollout (its nudges fire every second); A comes back and B pauses. From the
    moment B logs its pause it makes no write at all (its own request counter says so), and A
    completes the rollout."""
    peering_object(cluster, namespace)
    cluster.apply(gateway_e2e.fallback_secret(), namespace)
    gw = gateway_e2e.Gateway(
        hedge_process(
            "gateway", "--kubeconfig", str(cluster.kubeconfig), "--namespace", namespace,
            "--port", "0", "--admin-port", "0", "--drain-delay", "0",
        )
    )  # fmt: skip
    extra = ("--peering=hedge", "--gateway-metrics-url", f"{gw.admin}/metrics")

    def operator(priority: int) -> Operator:
        return Operator(hedge_process, namespace, *extra, f"--peering-priority={priority}")

    def log(op: Operator) -> str:
        return op.proc.log() if op.proc is not None else ""

    started: list[Operator] = []

    def start(priority: int) -> Operator:
        started.append(operator(priority).start())
        return started[-1]

    try:
        a = start(20)
        b = start(10)
        play(cluster, namespace, gw, a, b, start)
    finally:
        for i, op in enumerate(started):
            print(f"--- operator {i} log:\n{log(op)[-5000:]}")
        print(f"--- gateway log:\n{gw.proc.log()[-2000:]}")


def play(
    cluster: E2ECluster,
    namespace: str,
    gw: gateway_e2e.Gateway,
    a: Operator,
    b: Operator,
    start: Callable[[int], Operator],
) -> None:
    def log(op: Operator) -> str:
        return op.proc.log() if op.proc is not None else ""

    wait_for(
        lambda: peering_state(log(a)) == "running" and peering_state(log(b)) == "paused",
        30,
        "A active, B paused",
    )
    steps = canary((25, 20), (50, 20))
    cluster.apply(model_deployment(rollout=steps), namespace)

    def md() -> dict[str, Any]:
        return get_md(cluster, namespace, "chat")

    def rollout() -> dict[str, Any]:
        return dict((md().get("status") or {}).get("rollout") or {})

    wait_for(lambda: md_ready(cluster, namespace, "chat"), 90, "the first revision Ready")
    stable = str(md()["status"]["revision"])
    with load_through(gw.url + "/v1") as load:
        wait_for(lambda: len(load.answers) >= 20, 30, "load running")
        cluster.apply(model_deployment(version="2", rollout=steps), namespace)
        wait_for(lambda: rollout().get("canaryWeight"), 60, "the canary taking traffic")
        # A goes (kopf drops its peering record on SIGTERM): B takes over the rollout.
        a.stop()
        wait_for(lambda: peering_state(log(b)) == "running", 60, "B to resume")
        before = writes(b)
        wait_for(lambda: writes(b) != before, 60, "B to drive the rollout")
        # A comes back with the higher priority: B pauses, A resumes.
        a2 = start(20)
        wait_for(lambda: peering_state(log(b)) == "paused", 60, "B to pause")
        if "hedge_operator_standby " in b.metrics():
            # kopf's pause and the write gate read the same peering object on two watch
            # streams: count from the moment the gate has closed too.
            wait_for(lambda: b.counter("hedge_operator_standby") == 1, 10, "B's gate to close")
        paused_at = writes(b)
        wait_for(lambda: peering_state(log(a2)) == "running", 60, "A to resume")

        def promoted() -> bool:
            r = rollout()
            target = md()["status"].get("revision")
            return bool(target != stable and r.get("stableRevision") == target) and not (
                r.get("canaryRevision")
            )

        wait_for(promoted, 120, "the canary promoted by A")
        wait_for(lambda: md_ready(cluster, namespace, "chat"), 60, "the new revision Ready")
    assert writes(b) == paused_at, f"the paused replica wrote: {paused_at} -> {writes(b)}"
    assert load.failures == []
    for op in (b, a2):
        assert op.proc is not None
        op.proc.assert_running()
