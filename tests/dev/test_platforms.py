"""The local cluster's platform-shaped nodes (hedge_dev.platforms): their JSON, their
subnets, and that every shipped accelerator profile finds exactly its own node."""

from __future__ import annotations

import pytest

from hedge_dev.cluster import DEFAULT_NODES, NodeSpec
from hedge_dev.platforms import (
    FIRST_SUBNET,
    LAST_SUBNET,
    all_platform_nodes,
    node_for_profile,
    platform_nodes,
    profile_nodes,
    shape,
)
from hedge_operator.placement.catalog import shipped_profiles
from hedge_operator.placement.profiles import matches, tolerates

PROFILES = shipped_profiles()


def test_default_nodes_json_is_unchanged() -> None:
    """The extension fields default to nothing: a GFD node is exactly what it was."""
    gpu = DEFAULT_NODES[0].manifest(10)
    assert gpu["metadata"]["labels"] == {
        "kubernetes.io/hostname": "gpu-a100-0",
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
        "nvidia.com/gpu.count": "8",
        "nvidia.com/gpu.present": "true",
    }
    assert gpu["spec"]["taints"] == [
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    ]
    assert gpu["status"]["allocatable"] == {
        "cpu": "64", "memory": "512Gi", "pods": "250", "ephemeral-storage": "1Ti",
        "nvidia.com/gpu": "8",
    }  # fmt: skip
    cpu = DEFAULT_NODES[2].manifest(10)
    assert cpu["spec"] == {"podCIDR": "127.10.3.0/24", "podCIDRs": ["127.10.3.0/24"], "taints": []}
    assert NodeSpec("x", 5, "NVIDIA-L4", 2) == NodeSpec("x", 5, "NVIDIA-L4", 2)


def test_platform_node_json_carries_labels_taints_and_allocatable() -> None:
    spec = next(n for n in platform_nodes() if n.name == "gke-l4")
    node = spec.manifest(12)
    labels = node["metadata"]["labels"]
    assert labels["cloud.google.com/gke-accelerator"] == "nvidia-l4"
    assert labels["cloud.google.com/gke-gpu"] == "true"
    assert labels["kubernetes.io/arch"] == "amd64"
    assert labels["topology.kubernetes.io/zone"] == "us-central1-a"
    assert "nvidia.com/gpu.product" not in labels  # GKE runs no GFD
    assert node["spec"]["taints"] == [
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    ]
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "8"
    amd = next(n for n in platform_nodes() if n.name == "aks-amd-mi300x").manifest(12)
    assert amd["status"]["allocatable"]["amd.com/gpu"] == "8"
    assert "nvidia.com/gpu" not in amd["status"]["allocatable"]
    assert amd["spec"]["taints"] == [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}]


def test_subnets_are_unique_and_in_range() -> None:
    nodes = platform_nodes()
    subnets = [n.subnet for n in nodes]
    assert len(set(subnets)) == len(subnets)
    assert min(subnets) >= FIRST_SUBNET and max(subnets) <= LAST_SUBNET
    assert not set(subnets) & {n.subnet for n in DEFAULT_NODES}
    names = [n.name for n in nodes]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_shipped_profile_finds_its_node(name: str) -> None:
    """The profile selects its platform's node of that GPU, tolerates every taint on it,
    asks for the resource the node has, and no other GPU's node of the platform matches."""
    profile = PROFILES[name]
    node = shape(node_for_profile(name))
    labels = node.spec(FIRST_SUBNET).manifest(10)["metadata"]["labels"]
    assert matches(profile, labels), f"{name} ({profile.selector_text()}) misses {node.name}"
    for taint in node.taints:
        assert tolerates(profile.tolerations, taint), f"{name} does not tolerate {taint}"
    assert profile.resource == node.resource
    for other in all_platform_nodes():
        if other.platform == node.platform and other.gpu != node.gpu:
            other_labels = other.spec(FIRST_SUBNET).manifest(10)["metadata"]["labels"]
            assert not matches(profile, other_labels), f"{name} also matches {other.name}"


def test_node_shapes_name_only_shipped_profiles() -> None:
    """Keeps the shapes and the catalog in step: a shape for a profile the catalog does
    not ship is a typo or a profile gone. Until the cloud profiles land in the catalog,
    only the GFD names are held to it."""
    unknown = sorted(set(profile_nodes()) - set(PROFILES))
    if not any(n.startswith("gke-") for n in PROFILES):
        unknown = [n for n in unknown if n.startswith("nvidia-")]
    assert unknown == []
