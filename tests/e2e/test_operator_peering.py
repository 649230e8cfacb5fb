"""Two operator replicas with kopf peering: the higher priority reconciles, the other waits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .conftest import ROOT, E2ECluster, HedgeProcess, md_ready, wait_established, wait_for

PEERING_CRDS = ROOT / "charts" / "hedge" / "crds" / "kopf-peerings.yaml"


def test_two_replicas_elect_one_active_operator(
    cluster: E2ECluster, namespace: str, crd: None, hedge_process: Callable[..., HedgeProcess]
) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(PEERING_CRDS))
    wait_established(cluster, "kopfpeerings.kopf.dev", timeout=30)
    cluster.apply(
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "hedge"}},
        namespace,
    )

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
