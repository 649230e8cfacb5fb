"""The GPU ledger's rule for what a pod holds (the e2e tests and the rollout bench rely on it
for "never more GPUs than stable + surge")."""

from __future__ import annotations

from typing import Any

from hedge_dev.ledger import gpus_held


def pod(node: str | None, phase: str, *gpus: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [
            {"resources": {"requests": {"nvidia.com/gpu": str(n)}}} if n else {} for n in gpus
        ]
    }
    if node:
        spec["nodeName"] = node
    return {"spec": spec, "status": {"phase": phase}}


def test_a_pod_holds_its_gpus_from_binding_until_it_has_finished() -> None:
    assert gpus_held(pod(None, "Pending", 8)) == 0  # waiting for a node holds nothing
    assert gpus_held(pod("gpu-0", "Pending", 8)) == 8  # bound: the scheduler counts it
    assert gpus_held(pod("gpu-0", "Running", 2, 0, 1)) == 3  # every container's requests
    assert gpus_held(pod("gpu-0", "Succeeded", 8)) == 0
    assert gpus_held(pod("gpu-0", "Failed", 8)) == 0
    assert gpus_held(pod("cpu-0", "Running", 0)) == 0
