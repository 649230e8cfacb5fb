"""The kube-scheduler's Unschedulable message, parsed into counts and said in the
accelerator profile's terms."""

from __future__ import annotations

from hedge_operator.placement.diagnosis import (
    INSUFFICIENT_GPUS,
    NO_MATCHING_NODES,
    PRIORITY_CLASS_NOT_FOUND,
    SERVICE_ACCOUNT_NOT_FOUND,
    UNTOLERATED_TAINT,
    NodeCensus,
    creation_refusal,
    diagnose,
    node_census,
    parse_unschedulable,
)
from hedge_operator.placement.profiles import AMD_GPU, AcceleratorProfile

L4 = AcceleratorProfile(
    name="gke-nvidia-l4", node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"}
)
MI300X = AcceleratorProfile(
    name="amd-mi300x", resource=AMD_GPU, node_selector={"amd.com/gpu.product": "mi300x"}
)

MIXED = (
    "0/5 nodes are available: 2 Insufficient nvidia.com/gpu, 3 node(s) didn't match Pod's "
    "node affinity/selector. preemption: 0/5 nodes are available: 2 No preemption victims "
    "found for incoming pod, 3 Preemption is not helpful for scheduling."
)
NO_MATCH = (
    "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector. "
    "preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
)
TAINT_NAMED = (
    "0/2 nodes are available: 1 node(s) had untolerated taint {sku: gpu}, 1 node(s) didn't "
    "match Pod's node affinity/selector. preemption: 0/2 nodes are available: 2 Preemption "
    "is not helpful for scheduling."
)
TAINT_UNNAMED = (
    "0/3 nodes are available: 1 Insufficient example.com/gpu, 1 node(s) didn't match Pod's "
    "node affinity/selector, 1 node(s) had untolerated taint(s). preemption: 0/3 nodes are "
    "available: 1 No preemption victims found for incoming pod, 2 Preemption is not helpful "
    "for scheduling."
)
#: kube-scheduler v1.34 as measured on the e2e cluster (DRA's note before preemption's).
V134 = (
    "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 2 node(s) "
    "had untolerated taint(s). no new claims to deallocate, preemption: 0/3 nodes are "
    "available: 3 Preemption is not helpful for scheduling."
)


def test_counts_per_cause_ignore_the_preemption_verdict() -> None:
    causes = parse_unschedulable(MIXED)
    assert causes is not None
    assert (causes.total, causes.selector, dict(causes.insufficient)) == (
        5,
        3,
        {"nvidia.com/gpu": 2},
    )
    assert causes.tainted == 0


def test_a_named_taint_is_kept_as_key_value() -> None:
    causes = parse_unschedulable(TAINT_NAMED)
    assert causes is not None
    assert (causes.tainted, causes.taints, causes.selector) == (1, ("sku=gpu",), 1)


def test_not_the_schedulers_shape() -> None:
    assert parse_unschedulable("no GPU") is None


def test_no_node_has_the_profiles_labels() -> None:
    causes = parse_unschedulable(NO_MATCH)
    assert causes is not None
    found = diagnose(causes, L4, "pool=a")
    assert found is not None and found.reason == NO_MATCHING_NODES
    assert '"gke-nvidia-l4"' in found.summary or "'gke-nvidia-l4'" in found.summary
    assert "cloud.google.com/gke-accelerator=nvidia-l4" in found.summary
    assert "pool=a" in found.summary


def test_full_nodes_win_over_nodes_without_the_labels() -> None:
    causes = parse_unschedulable(MIXED)
    assert causes is not None
    found = diagnose(causes, L4)
    assert found is not None and found.reason == INSUFFICIENT_GPUS


def test_the_profiles_resource_counts_not_nvidias() -> None:
    amd = MIXED.replace("nvidia.com/gpu", AMD_GPU)
    causes = parse_unschedulable(amd)
    assert causes is not None
    found = diagnose(causes, MI300X)
    assert found is not None and found.reason == INSUFFICIENT_GPUS
    assert AMD_GPU in found.summary
    # The same shortage of another resource is not this profile's GPUs running out.
    other = diagnose(causes, L4)
    assert other is None or other.reason != INSUFFICIENT_GPUS


def test_a_taint_named_or_not() -> None:
    named = parse_unschedulable(TAINT_NAMED)
    assert named is not None
    found = diagnose(named, L4)
    assert found is not None and found.reason == UNTOLERATED_TAINT
    assert "sku=gpu" in found.summary and "spec.engine.pod.tolerations" in found.summary
    unnamed = parse_unschedulable(TAINT_UNNAMED.replace("example.com/gpu", "cpu"))
    assert unnamed is not None
    found = diagnose(unnamed, L4)
    assert found is not None and found.reason == UNTOLERATED_TAINT
    assert "lack cpu" in found.summary


def test_no_advice_for_other_causes() -> None:
    causes = parse_unschedulable("0/1 nodes are available: 1 node(s) were unschedulable.")
    assert causes is not None
    assert diagnose(causes, L4) is None


def test_refusals_at_creation() -> None:
    pc = creation_refusal('pods "x-1" is forbidden: no PriorityClass with name gold was found')
    assert pc is not None and pc.reason == PRIORITY_CLASS_NOT_FOUND and "'gold'" in pc.summary
    sa = creation_refusal(
        'pods "x-1" is forbidden: error looking up service account ns/robot: '
        'serviceaccount "robot" not found'
    )
    assert sa is not None and sa.reason == SERVICE_ACCOUNT_NOT_FOUND and "'robot'" in sa.summary
    assert creation_refusal('pods "x" is forbidden: exceeded quota: q') is None


def test_v134_wording_with_the_dra_note() -> None:
    causes = parse_unschedulable(V134)
    assert causes is not None
    assert (causes.total, causes.selector, causes.tainted, causes.other) == (3, 1, 2, ())
    found = diagnose(causes, L4)
    assert found is not None and found.reason == UNTOLERATED_TAINT
    assert "not named by the scheduler" in found.summary
    assert "cloud.google.com/gke-accelerator=nvidia-l4" in found.summary  # which labels
    assert "1 do not match the node selector/affinity" in found.summary


# --------------------------------------------------------------------------- nodes

GKE_L4_NODE = {
    "labels": {"cloud.google.com/gke-accelerator": "nvidia-l4", "kubernetes.io/os": "linux"},
    "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
}
NVIDIA_NODE = {
    "labels": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
    "taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}],
}
CPU_NODE = {"labels": {"kubernetes.io/os": "linux"}, "taints": []}
NVIDIA_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
# The scheduler counts a tainted node by its taint even when it lacks the labels.
TAINTED_ELSEWHERE = (
    "0/2 nodes are available: 1 node(s) had untolerated taint(s), 1 node(s) didn't match "
    "Pod's node affinity/selector. preemption: 0/2 nodes are available: 2 Preemption is not "
    "helpful for scheduling."
)


def test_census_counts_nodes_with_the_labels_and_their_untolerated_taints() -> None:
    census = node_census([GKE_L4_NODE, NVIDIA_NODE, CPU_NODE], L4, {}, None, ())
    assert census == NodeCensus(1, ("nvidia.com/gpu=present:NoSchedule",))
    tolerated = node_census([GKE_L4_NODE, CPU_NODE], L4, {}, None, [NVIDIA_TOLERATION])
    assert tolerated == NodeCensus(1, ())


def test_census_ands_the_specs_selector_and_affinity() -> None:
    assert node_census([GKE_L4_NODE], L4, {"pool": "a"}, None, ()).matching == 0
    zone = {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}
                    ]
                }
            ]
        }
    }
    assert node_census([GKE_L4_NODE, CPU_NODE], L4, {}, zone, ()).matching == 1


def test_prefer_no_schedule_does_not_block() -> None:
    soft = {"labels": GKE_L4_NODE["labels"], "taints": [{"key": "x", "effect": "PreferNoSchedule"}]}
    assert node_census([soft], L4, {}, None, ()).untolerated == ()


def test_nodes_tell_no_matching_node_from_a_taint_elsewhere() -> None:
    """An AMD profile on a cluster of tainted NVIDIA nodes: the scheduler says "taint",
    the nodes say no node has the labels."""
    causes = parse_unschedulable(TAINTED_ELSEWHERE)
    assert causes is not None
    census = node_census([NVIDIA_NODE, CPU_NODE], MI300X, {}, None, ())
    found = diagnose(causes, MI300X, "", census)
    assert found is not None and found.reason == NO_MATCHING_NODES
    assert "amd.com/gpu.product=mi300x" in found.summary
    # Without the nodes, the scheduler's message alone cannot tell.
    guess = diagnose(causes, MI300X, "")
    assert guess is not None and guess.reason == UNTOLERATED_TAINT


def test_nodes_name_the_taint_the_scheduler_does_not() -> None:
    causes = parse_unschedulable(TAINTED_ELSEWHERE)
    assert causes is not None
    census = node_census([GKE_L4_NODE, CPU_NODE], L4, {}, None, ())
    found = diagnose(causes, L4, "", census)
    assert found is not None and found.reason == UNTOLERATED_TAINT
    assert "nvidia.com/gpu=present:NoSchedule" in found.summary
    assert "1 node(s) match" in found.summary


def test_full_matching_nodes_stay_insufficient_with_a_census() -> None:
    causes = parse_unschedulable(MIXED)
    assert causes is not None
    found = diagnose(causes, L4, "", NodeCensus(2, ()))
    assert found is not None and found.reason == INSUFFICIENT_GPUS
