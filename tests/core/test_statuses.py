"""Status through the typed classes: what is written is what is read back, and a block
that does not parse loses only the part that does not."""

from __future__ import annotations

from hedge_core.api import AutoscalingStatus, ModelDeploymentStatus, RolloutStatus
from hedge_core.statuses import AUTOSCALING, FALLBACK_BUDGET, ROLLOUT, read, write

CONDITION = {
    "type": "Ready",
    "status": "True",
    "reason": "ReplicasReady",
    "message": "1/1",
    "lastTransitionTime": "2026-05-01T12:00:00Z",
    "observedGeneration": 3,
}


def test_write_then_read_round_trips_and_leaves_unset_fields_out() -> None:
    block = AutoscalingStatus(desired_replicas=2, reason="ScaleUp", message="demand 8")
    data = write(block)
    assert data == {"desiredReplicas": 2, "reason": "ScaleUp", "message": "demand 8"}
    assert read(AutoscalingStatus, data) == block


def test_an_empty_map_is_left_out_as_status_leaves_it() -> None:
    assert "handledCommands" not in write(RolloutStatus(strategy="Canary"))
    assert write(RolloutStatus(strategy="Canary", handled_commands={"abort": "r1"}))[
        "handledCommands"
    ] == {"abort": "r1"}


def test_the_blocks_keys_are_the_classes_json_names() -> None:
    assert (AUTOSCALING, FALLBACK_BUDGET, ROLLOUT) == ("autoscaling", "fallbackBudget", "rollout")


def test_a_part_that_does_not_parse_is_left_out_and_the_rest_is_read() -> None:
    status = read(
        ModelDeploymentStatus,
        {
            "observedGeneration": 3,
            "revision": "abc",
            # The first condition lacks fields the CRD requires; the second is whole.
            "conditions": [{"type": "Degraded", "status": "True"}, CONDITION],
            "rollout": {"strategy": "Canary", "canaryWeight": 500},  # above the maximum
        },
    )
    assert status.observed_generation == 3
    assert status.revision == "abc"
    assert [c.type for c in status.conditions] == ["Ready"]
    assert status.rollout is None


def test_what_is_not_a_block_reads_as_empty() -> None:
    assert read(RolloutStatus, None) == RolloutStatus()
    assert read(RolloutStatus, ["not", "an", "object"]) == RolloutStatus()
    assert read(AutoscalingStatus, {"desiredReplicas": True}) == AutoscalingStatus()
