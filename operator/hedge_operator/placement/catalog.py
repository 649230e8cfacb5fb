"""Pure: the accelerator profiles Hedge ships, one per kind of GPU node on each platform it
documents (docs/placement.md cites where each platform documents its labels and taints).

The profiles named before profiles existed (`nvidia-l4`, `nvidia-a100-80gb`, …) select on
the `nvidia.com/gpu.product` label of NVIDIA's GPU feature discovery exactly as they did,
so an upgrade leaves existing engine pods' templates (and revisions) unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hedge_core.api.constants import ROCM_ENGINE_IMAGE
from hedge_operator.placement.profiles import (
    AMD_GPU,
    NVIDIA_TOLERATION,
    AcceleratorProfile,
)

GFD_PRODUCT_LABEL = "nvidia.com/gpu.product"
GFD_DOCS = (
    "https://docs.nvidia.com/datacenter/cloud-native/gpu-operator/latest/gpu-feature-discovery.html",
)

#: Friendly GPU type -> the `nvidia.com/gpu.product` label that NVIDIA's GPU feature
#: discovery (the GPU operator runs it) puts on nodes.
GFD_PRODUCTS: dict[str, str] = {
    "nvidia-a10g": "NVIDIA-A10G",
    "nvidia-a100-40gb": "NVIDIA-A100-SXM4-40GB",
    "nvidia-a100-80gb": "NVIDIA-A100-SXM4-80GB",
    "nvidia-a100-80gb-pcie": "NVIDIA-A100-80GB-PCIe",
    "nvidia-h100-80gb": "NVIDIA-H100-80GB-HBM3",
    "nvidia-h200-141gb": "NVIDIA-H200",
    "nvidia-l4": "NVIDIA-L4",
    "nvidia-l40s": "NVIDIA-L40S",
    "nvidia-t4": "Tesla-T4",
}

#: Memory of one device of each GPU the catalog knows (the docs' column; never in a pod).
GPU_MEMORY: dict[str, str] = {
    "t4": "16Gi",
    "a10g": "24Gi",
    "l4": "24Gi",
    "l40s": "48Gi",
    "a100-40gb": "40Gi",
    "a100-80gb": "80Gi",
    "h100-80gb": "80Gi",
    "h100-nvl-94gb": "94Gi",
    "h200-141gb": "141Gi",
    "b200": "180Gi",
    "mi300x": "192Gi",
    "mi325x": "256Gi",
}

INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"

# --------------------------------------------------------------------------- GKE

GKE_ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
GKE_DOCS = (
    "https://cloud.google.com/kubernetes-engine/docs/how-to/gpus",
    "https://cloud.google.com/kubernetes-engine/docs/concepts/gpus",
)
#: Hedge name suffix -> the `cloud.google.com/gke-accelerator` values of that GPU (H100
#: comes as the A3 High `nvidia-h100-80gb` and the A3 Mega `nvidia-h100-mega-80gb`).
GKE_ACCELERATORS: dict[str, tuple[str, ...]] = {
    "l4": ("nvidia-l4",),
    "a100-40gb": ("nvidia-tesla-a100",),
    "a100-80gb": ("nvidia-a100-80gb",),
    "h100-80gb": ("nvidia-h100-80gb", "nvidia-h100-mega-80gb"),
    "h200-141gb": ("nvidia-h200-141gb",),
    "b200": ("nvidia-b200",),
}

# --------------------------------------------------------------------------- EKS

KARPENTER_GPU_NAME_LABEL = "karpenter.k8s.aws/instance-gpu-name"
KARPENTER_GPU_MEMORY_LABEL = "karpenter.k8s.aws/instance-gpu-memory"
KARPENTER_DOCS = (
    "https://karpenter.sh/docs/reference/instance-types/",
    "https://karpenter.sh/docs/concepts/scheduling/#well-known-labels",
    "https://docs.aws.amazon.com/eks/latest/best-practices/aiml-compute.html",
)
#: A100 40 GB (p4d, 40960 MiB) and 80 GB (p4de, 81920 MiB) share the gpu-name `a100`;
#: the per-GPU memory label (MiB) tells them apart, split halfway.
A100_MEMORY_SPLIT_MIB = "61440"
#: Hedge name suffix -> (`instance-gpu-name`, extra match expressions).
KARPENTER_GPUS: dict[str, tuple[str, tuple[Mapping[str, Any], ...]]] = {
    "l4": ("l4", ()),
    "a10g": ("a10g", ()),
    "l40s": ("l40s", ()),
    "a100-40gb": (
        "a100",
        ({"key": KARPENTER_GPU_MEMORY_LABEL, "operator": "Lt", "values": [A100_MEMORY_SPLIT_MIB]},),
    ),
    "a100-80gb": (
        "a100",
        ({"key": KARPENTER_GPU_MEMORY_LABEL, "operator": "Gt", "values": [A100_MEMORY_SPLIT_MIB]},),
    ),
    "h100-80gb": ("h100", ()),
    "h200-141gb": ("h200", ()),
    "b200": ("b200", ()),
}

EKS_NODEGROUP_DOCS = (
    "https://docs.aws.amazon.com/eks/latest/userguide/ml-workload-placement.html",
    "https://docs.aws.amazon.com/ec2/latest/instancetypes/ac.html",
    "https://docs.aws.amazon.com/eks/latest/userguide/ml-eks-optimized-ami.html",
)
_SIZES = ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge", "48xlarge")
#: Hedge name suffix -> the EC2 instance types (EKS GPU AMI nodes) that carry that GPU.
EKS_INSTANCE_TYPES: dict[str, tuple[str, ...]] = {
    "l4": tuple(f"g6.{s}" for s in _SIZES),
    "a10g": tuple(f"g5.{s}" for s in _SIZES),
    "l40s": tuple(f"g6e.{s}" for s in _SIZES),
    "a100-40gb": ("p4d.24xlarge",),
    "a100-80gb": ("p4de.24xlarge",),
    "h100-80gb": ("p5.4xlarge", "p5.48xlarge"),
    "h200-141gb": ("p5e.48xlarge", "p5en.48xlarge"),
    "b200": ("p6-b200.48xlarge",),
}

# --------------------------------------------------------------------------- AKS

#: The taint Microsoft's AKS GPU guide puts on GPU node pools (`--node-taints sku=gpu:NoSchedule`).
AKS_GPU_TOLERATION: Mapping[str, str] = {
    "key": "sku",
    "operator": "Equal",
    "value": "gpu",
    "effect": "NoSchedule",
}
AKS_DOCS = (
    "https://learn.microsoft.com/azure/aks/use-nvidia-gpu",
    "https://learn.microsoft.com/azure/aks/operator-best-practices-advanced-scheduler",
    "https://learn.microsoft.com/azure/virtual-machines/sizes/overview#gpu-accelerated",
)
AKS_AMD_DOCS = (
    "https://learn.microsoft.com/azure/aks/use-amd-gpus",
    "https://learn.microsoft.com/azure/virtual-machines/sizes/gpu-accelerated/ndmi300xv5-series",
)
#: Hedge name suffix -> the Azure VM sizes (AKS node pools) that carry that GPU.
AKS_VM_SIZES: dict[str, tuple[str, ...]] = {
    "nvidia-t4": (
        "Standard_NC4as_T4_v3",
        "Standard_NC8as_T4_v3",
        "Standard_NC16as_T4_v3",
        "Standard_NC64as_T4_v3",
    ),
    "nvidia-a100-80gb": (
        "Standard_NC24ads_A100_v4",
        "Standard_NC48ads_A100_v4",
        "Standard_NC96ads_A100_v4",
        "Standard_ND96amsr_A100_v4",
    ),
    "nvidia-h100-80gb": ("Standard_ND96isr_H100_v5",),
    "nvidia-h100-nvl-94gb": ("Standard_NC40ads_H100_v5", "Standard_NC80adis_H100_v5"),
    "nvidia-h200-141gb": ("Standard_ND96isr_H200_v5",),
    "amd-mi300x": ("Standard_ND96isr_MI300X_v5",),
}

# --------------------------------------------------------------------------- AMD

AMD_DEVICE_ID_LABEL = "amd.com/gpu.device-id"
AMD_TOLERATION: Mapping[str, str] = {"key": AMD_GPU, "operator": "Exists", "effect": "NoSchedule"}
AMD_DOCS = (
    "https://instinct.docs.amd.com/projects/gpu-operator/en/latest/device_plugin/device-plugin.html",
    "https://github.com/ROCm/k8s-device-plugin/blob/master/cmd/k8s-node-labeller/README.md",
    "https://docs.vllm.ai/en/stable/getting_started/installation/gpu/",
)
#: Hedge name suffix -> the PCI device ids the AMD node labeller puts in
#: amd.com/gpu.device-id: the bare-metal GPU, and for MI300X also the SR-IOV virtual
#: function (74b5) that cloud VMs such as Azure's ND MI300X v5 expose.
AMD_DEVICE_IDS: dict[str, tuple[str, ...]] = {"mi300x": ("74a1", "74b5"), "mi325x": ("74a5",)}


def _memory(gpu: str) -> str:
    """The device memory of a GPU by its catalog suffix (`a100-80gb`, `nvidia-t4`, …)."""
    return GPU_MEMORY[gpu.removeprefix("nvidia-").removeprefix("amd-")]


def _required(*expressions: Mapping[str, Any]) -> dict[str, Any]:
    """A node affinity of one required term: what a selector cannot say (In, Gt, Lt)."""
    return {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [dict(e) for e in expressions]}]
        }
    }


def _label_in(key: str, values: Sequence[str]) -> dict[str, Any]:
    return {"key": key, "operator": "In", "values": list(values)}


def gfd_profile(name: str, product: str, **extra: object) -> AcceleratorProfile:
    """An NVIDIA GPU operator / GFD profile: `nvidia.com/gpu` on nodes labelled with the
    product, tolerating the `nvidia.com/gpu` taint (the pod template of the operator
    before profiles)."""
    return AcceleratorProfile(
        name=name,
        node_selector={GFD_PRODUCT_LABEL: product},
        tolerations=(dict(NVIDIA_TOLERATION),),
        platform="NVIDIA GPU operator",
        description=f"{product} (GPU feature discovery)",
        docs=GFD_DOCS,
        **extra,  # type: ignore[arg-type]
    )


def gke_profile(gpu: str, accelerators: Sequence[str]) -> AcceleratorProfile:
    """A GKE GPU node pool: GKE labels the nodes `cloud.google.com/gke-accelerator` and
    taints them `nvidia.com/gpu=present:NoSchedule`; a selector when the GPU has one
    accelerator value, node affinity (In) when it has several."""
    one = len(accelerators) == 1
    return AcceleratorProfile(
        name=f"gke-nvidia-{gpu}",
        node_selector={GKE_ACCELERATOR_LABEL: accelerators[0]} if one else {},
        node_affinity=None if one else _required(_label_in(GKE_ACCELERATOR_LABEL, accelerators)),
        tolerations=(dict(NVIDIA_TOLERATION),),
        gpu_memory=_memory(gpu),
        platform="GKE",
        description=f"GKE node pool with {' or '.join(accelerators)}",
        docs=GKE_DOCS,
    )


def karpenter_profile(
    gpu: str, gpu_name: str, extra: Sequence[Mapping[str, Any]]
) -> AcceleratorProfile:
    """A Karpenter-provisioned EKS node: Karpenter labels it with the GPU's name (and its
    per-GPU memory in MiB); GPU NodePools conventionally taint `nvidia.com/gpu`."""
    return AcceleratorProfile(
        name=f"eks-karpenter-nvidia-{gpu}",
        node_selector={KARPENTER_GPU_NAME_LABEL: gpu_name},
        node_affinity=_required(*extra) if extra else None,
        tolerations=(dict(NVIDIA_TOLERATION),),
        gpu_memory=_memory(gpu),
        platform="EKS (Karpenter)",
        description=f"Karpenter node with instance-gpu-name {gpu_name}",
        docs=KARPENTER_DOCS,
    )


def eks_nodegroup_profile(gpu: str, instance_types: Sequence[str]) -> AcceleratorProfile:
    """An EKS managed node group on the EKS GPU AMI: nothing names the GPU but the instance
    type, so the profile lists the types that carry it."""
    return AcceleratorProfile(
        name=f"eks-nodegroup-nvidia-{gpu}",
        node_affinity=_required(_label_in(INSTANCE_TYPE_LABEL, instance_types)),
        tolerations=(dict(NVIDIA_TOLERATION),),
        gpu_memory=_memory(gpu),
        platform="EKS (managed node groups)",
        description=f"EKS managed node group of {', '.join(instance_types)}",
        docs=EKS_NODEGROUP_DOCS,
    )


def aks_profile(gpu: str, vm_sizes: Sequence[str]) -> AcceleratorProfile:
    """An AKS GPU node pool: found by VM size; tolerates the `sku=gpu:NoSchedule` taint
    Microsoft recommends and the vendor's device taint (GPU operator pools)."""
    amd = gpu.startswith("amd-")
    return AcceleratorProfile(
        name=f"aks-{gpu}",
        resource=AMD_GPU if amd else "nvidia.com/gpu",
        node_affinity=_required(_label_in(INSTANCE_TYPE_LABEL, vm_sizes)),
        tolerations=(dict(AKS_GPU_TOLERATION), dict(AMD_TOLERATION if amd else NVIDIA_TOLERATION)),
        image=ROCM_ENGINE_IMAGE if amd else None,
        gpu_memory=_memory(gpu),
        platform="AKS",
        description=f"AKS node pool of {', '.join(vm_sizes)}",
        docs=AKS_AMD_DOCS + AMD_DOCS[-1:] if amd else AKS_DOCS,
    )


def amd_profile(gpu: str, device_ids: Sequence[str]) -> AcceleratorProfile:
    """An AMD Instinct node of the AMD GPU operator: `amd.com/gpu` on nodes the node
    labeller marks with the PCI device id (stable, unlike the product-name spelling),
    running the ROCm build of the pinned vLLM."""
    one = len(device_ids) == 1
    return AcceleratorProfile(
        name=f"amd-{gpu}",
        resource=AMD_GPU,
        node_selector={AMD_DEVICE_ID_LABEL: device_ids[0]} if one else {},
        node_affinity=None if one else _required(_label_in(AMD_DEVICE_ID_LABEL, device_ids)),
        tolerations=(dict(AMD_TOLERATION),),
        image=ROCM_ENGINE_IMAGE,
        gpu_memory=_memory(gpu),
        platform="AMD GPU operator",
        description=f"AMD Instinct {gpu.upper()} (device id {' or '.join(device_ids)})",
        docs=AMD_DOCS,
    )


def platform_profiles() -> list[AcceleratorProfile]:
    """The GKE, EKS, AKS and AMD profiles, from the tables above."""
    return [
        *(gke_profile(gpu, values) for gpu, values in GKE_ACCELERATORS.items()),
        *(karpenter_profile(gpu, n, extra) for gpu, (n, extra) in KARPENTER_GPUS.items()),
        *(eks_nodegroup_profile(gpu, types) for gpu, types in EKS_INSTANCE_TYPES.items()),
        *(aks_profile(gpu, sizes) for gpu, sizes in AKS_VM_SIZES.items()),
        *(amd_profile(gpu, ids) for gpu, ids in AMD_DEVICE_IDS.items()),
    ]


def shipped_profiles() -> dict[str, AcceleratorProfile]:
    """Every shipped profile by name (a fresh dict: callers may merge into it)."""
    profiles = {
        name: gfd_profile(name, product, gpu_memory=_memory(name.removesuffix("-pcie")))
        for name, product in GFD_PRODUCTS.items()
    }
    for profile in platform_profiles():
        assert profile.name not in profiles, profile.name
        profiles[profile.name] = profile
    return dict(sorted(profiles.items()))
