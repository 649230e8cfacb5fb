"""The shipped catalog: every profile survives its own file format, says where the platform
documents it, and finds exactly the nodes of its GPU on real node label sets (written here
from the providers' docs) while tolerating the taints those platforms document."""

from __future__ import annotations

import re
from collections.abc import Mapping

import pytest

from hedge_core.api.constants import DNS_LABEL, ROCM_ENGINE_IMAGE
from hedge_operator.placement.catalog import GFD_PRODUCT_LABEL, GFD_PRODUCTS, shipped_profiles
from hedge_operator.placement.profiles import (
    AMD_GPU,
    NVIDIA_GPU,
    matches,
    parse_profile,
    profile_json,
    tolerates,
)

PROFILES = shipped_profiles()
NVIDIA_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}

#: (platform, node labels, taints, the one profile of that platform that must match).
NODES: list[tuple[str, Mapping[str, str], list[Mapping[str, str]], str]] = [
    ("GKE", {"cloud.google.com/gke-accelerator": "nvidia-l4",
             "node.kubernetes.io/instance-type": "g2-standard-8"},
     [NVIDIA_TAINT], "gke-nvidia-l4"),
    ("GKE", {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100",
             "node.kubernetes.io/instance-type": "a2-highgpu-1g"},
     [NVIDIA_TAINT], "gke-nvidia-a100-40gb"),
    ("GKE", {"cloud.google.com/gke-accelerator": "nvidia-h100-mega-80gb",
             "node.kubernetes.io/instance-type": "a3-megagpu-8g"},
     [NVIDIA_TAINT], "gke-nvidia-h100-80gb"),
    ("GKE", {"cloud.google.com/gke-accelerator": "nvidia-h200-141gb",
             "node.kubernetes.io/instance-type": "a3-ultragpu-8g"},
     [NVIDIA_TAINT], "gke-nvidia-h200-141gb"),
    ("EKS (Karpenter)", {"karpenter.k8s.aws/instance-gpu-name": "a100",
                         "karpenter.k8s.aws/instance-gpu-memory": "81920",
                         "karpenter.k8s.aws/instance-gpu-manufacturer": "nvidia",
                         "node.kubernetes.io/instance-type": "p4de.24xlarge"},
     [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}],
     "eks-karpenter-nvidia-a100-80gb"),
    ("EKS (Karpenter)", {"karpenter.k8s.aws/instance-gpu-name": "a100",
                         "karpenter.k8s.aws/instance-gpu-memory": "40960",
                         "node.kubernetes.io/instance-type": "p4d.24xlarge"},
     [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}], "eks-karpenter-nvidia-a100-40gb"),
    ("EKS (Karpenter)", {"karpenter.k8s.aws/instance-gpu-name": "l40s",
                         "karpenter.k8s.aws/instance-gpu-memory": "45776",
                         "node.kubernetes.io/instance-type": "g6e.2xlarge"},
     [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}],
     "eks-karpenter-nvidia-l40s"),
    ("EKS (managed node groups)", {"node.kubernetes.io/instance-type": "g6.12xlarge",
                                   "eks.amazonaws.com/nodegroup": "gpu"},
     [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}],
     "eks-nodegroup-nvidia-l4"),
    ("EKS (managed node groups)", {"node.kubernetes.io/instance-type": "p5e.48xlarge"},
     [], "eks-nodegroup-nvidia-h200-141gb"),
    ("AKS", {"node.kubernetes.io/instance-type": "Standard_NC24ads_A100_v4",
             "beta.kubernetes.io/instance-type": "Standard_NC24ads_A100_v4",
             "kubernetes.azure.com/accelerator": "nvidia", "agentpool": "gpunp"},
     [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}], "aks-nvidia-a100-80gb"),
    ("AKS", {"node.kubernetes.io/instance-type": "Standard_NC40ads_H100_v5",
             "kubernetes.azure.com/accelerator": "nvidia"},
     [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}], "aks-nvidia-h100-nvl-94gb"),
    ("AKS", {"node.kubernetes.io/instance-type": "Standard_ND96isr_MI300X_v5"},
     [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}], "aks-amd-mi300x"),
    ("AMD GPU operator", {"amd.com/gpu.device-id": "74a1", "amd.com/gpu.family": "AI",
                          "amd.com/gpu.product-name": "AMD_Instinct_MI300X_OAM",
                          "amd.com/gpu.vram": "192G"},
     [{"key": "amd.com/gpu", "effect": "NoSchedule"}], "amd-mi300x"),
    ("AMD GPU operator", {"amd.com/gpu.device-id": "74a5", "amd.com/gpu.family": "AI"},
     [], "amd-mi325x"),
    ("AMD GPU operator", {"amd.com/gpu.device-id": "74b5",  # MI300X virtual function (a VM)
                          "node.kubernetes.io/instance-type": "Standard_ND96isr_MI300X_v5"},
     [], "amd-mi300x"),
    ("NVIDIA GPU operator", {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
                             "nvidia.com/gpu.memory": "81559"},
     [NVIDIA_TAINT], "nvidia-h100-80gb"),
]  # fmt: skip


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_survives_its_file_format(name: str) -> None:
    profile = PROFILES[name]
    assert parse_profile(name, profile_json(profile)) == profile


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_says_what_it_is_and_where_that_is_documented(name: str) -> None:
    profile = PROFILES[name]
    assert re.search(DNS_LABEL, name) and len(name) <= 63
    assert profile.name == name
    assert profile.platform and profile.description and profile.gpu_memory
    assert profile.docs and all(d.startswith("https://") for d in profile.docs)
    assert profile.node_selector or profile.required_terms(), "a profile must find its nodes"


def test_the_profiles_named_before_profiles_are_unchanged() -> None:
    for name, product in GFD_PRODUCTS.items():
        profile = PROFILES[name]
        assert profile.node_selector == {GFD_PRODUCT_LABEL: product}
        assert profile.node_affinity is None and profile.runtime_class_name is None
        assert profile.resource == NVIDIA_GPU and profile.image is None and not profile.env
        assert profile.tolerations == (
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        )


def test_the_catalog_covers_every_platform() -> None:
    platforms = {p.platform for p in PROFILES.values()}
    assert platforms == {
        "NVIDIA GPU operator", "GKE", "EKS (Karpenter)", "EKS (managed node groups)", "AKS",
        "AMD GPU operator",
    }  # fmt: skip
    assert len(PROFILES) == 39


def test_amd_profiles_ask_for_amd_gpus_and_run_the_rocm_build() -> None:
    amd = [p for p in PROFILES.values() if "amd" in p.name]
    assert {p.name for p in amd} == {"amd-mi300x", "amd-mi325x", "aks-amd-mi300x"}
    assert all(p.resource == AMD_GPU and p.image == ROCM_ENGINE_IMAGE for p in amd)
    assert ROCM_ENGINE_IMAGE.endswith(":v0.32.0")


@pytest.mark.parametrize(("platform", "labels", "taints", "expected"), NODES)
def test_a_node_of_the_platform_matches_its_gpu_and_no_other(
    platform: str,
    labels: Mapping[str, str],
    taints: list[Mapping[str, str]],
    expected: str,
) -> None:
    same_platform = {n: p for n, p in PROFILES.items() if p.platform == platform}
    matching = {n for n, p in same_platform.items() if matches(p, labels)}
    assert matching == {expected}
    profile = PROFILES[expected]
    assert all(tolerates(profile.tolerations, t) for t in taints)


@pytest.mark.parametrize(
    ("platform", "taint"),
    [
        ("GKE", NVIDIA_TAINT),
        ("EKS (Karpenter)", {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}),
        ("EKS (managed node groups)", {"key": "nvidia.com/gpu", "effect": "NoSchedule"}),
        ("AKS", {"key": "sku", "value": "gpu", "effect": "NoSchedule"}),
        ("AMD GPU operator", {"key": "amd.com/gpu", "effect": "NoSchedule"}),
        ("NVIDIA GPU operator", NVIDIA_TAINT),
    ],
)
def test_every_profile_tolerates_its_platforms_documented_taint(
    platform: str, taint: Mapping[str, str]
) -> None:
    profiles = [p for p in PROFILES.values() if p.platform == platform]
    assert profiles
    assert all(tolerates(p.tolerations, taint) for p in profiles)
    # A taint nobody documents stays intolerable: the tolerations are not a wildcard.
    assert not any(tolerates(p.tolerations, {"key": "x", "effect": "NoSchedule"}) for p in profiles)
