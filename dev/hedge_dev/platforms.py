"""Pure: kwok nodes shaped like each platform's GPU nodes, written from the platforms' own
docs, so an accelerator profile is tested against a node that looks like the real one (its
labels, taints and extended resources) and not against the profile itself.

Where each platform documents what its GPU nodes carry:

- NVIDIA GPU operator / GPU feature discovery (`nvidia.com/gpu.product`, `.count`,
  `.memory`, `.family`, `nvidia.com/gpu.present`):
  https://docs.nvidia.com/datacenter/cloud-native/gpu-operator/latest/gpu-feature-discovery.html
  https://github.com/NVIDIA/k8s-device-plugin#catalog-of-labels
- GKE (`cloud.google.com/gke-accelerator`, `cloud.google.com/gke-gpu`, the
  `nvidia.com/gpu=present:NoSchedule` taint GKE adds to GPU node pools, machine types):
  https://cloud.google.com/kubernetes-engine/docs/how-to/gpus
  https://cloud.google.com/compute/docs/gpus
- EKS with Karpenter (`karpenter.k8s.aws/instance-gpu-*`, `karpenter.sh/nodepool`,
  `karpenter.sh/capacity-type`; the NodePool's `nvidia.com/gpu:NoSchedule` taint):
  https://karpenter.sh/docs/concepts/scheduling/#well-known-labels
  https://karpenter.sh/docs/reference/instance-types/
  https://docs.aws.amazon.com/eks/latest/best-practices/aiml-compute.html
- EKS managed node groups (`eks.amazonaws.com/nodegroup`, `eks.amazonaws.com/capacityType`,
  `eks.amazonaws.com/nodegroup-image`, the accelerated AMI; the taint is the group's own):
  https://docs.aws.amazon.com/eks/latest/userguide/managed-node-groups.html
  https://docs.aws.amazon.com/eks/latest/userguide/ml-eks-optimized-ami.html
- AKS (`kubernetes.azure.com/agentpool`, `kubernetes.azure.com/accelerator: nvidia`, the VM
  size as `node.kubernetes.io/instance-type`, the recommended `sku=gpu:NoSchedule` taint):
  https://learn.microsoft.com/azure/aks/use-nvidia-gpu
  https://learn.microsoft.com/azure/aks/use-node-taints
  https://learn.microsoft.com/azure/virtual-machines/sizes/overview#gpu-accelerated
- AMD GPU operator node labeller (`amd.com/gpu.product-name`, `.device-id`, `.family`,
  `.vram`, `.cu-count`; resource `amd.com/gpu`):
  https://instinct.docs.amd.com/projects/gpu-operator/en/latest/
  https://instinct.docs.amd.com/projects/k8s-device-plugin/en/latest/
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from hedge_dev.cluster import NodeSpec

FIRST_SUBNET = 60
LAST_SUBNET = 98
NVIDIA = "nvidia.com/gpu"
AMD = "amd.com/gpu"


@dataclass(frozen=True)
class PlatformNode:
    """One kind of GPU node on one platform, as that platform's docs describe it."""

    name: str
    platform: str  # "gpu-operator", "gke", "eks-karpenter", "eks-nodegroup", "aks", "amd"
    gpu: str  # the GPU, e.g. "nvidia-h100-80gb" (nodes of one platform differ by it)
    gpus: int
    labels: Mapping[str, str] = field(hash=False)
    taints: tuple[Mapping[str, str], ...] = field(default=(), hash=False)
    resource: str = NVIDIA

    def spec(self, subnet: int) -> NodeSpec:
        """The kwok node (no GFD defaults: the labels say everything)."""
        return NodeSpec(
            self.name,
            subnet,
            labels={"kubernetes.io/arch": "amd64", **self.labels},
            taints=self.taints,
            resources={self.resource: str(self.gpus)},
        )


def _taint(key: str, value: str | None = None) -> Mapping[str, str]:
    out = {"key": key, "effect": "NoSchedule"}
    if value is not None:
        out["value"] = value
    return out


# --------------------------------------------------------------- NVIDIA GPU operator
#: gpuType -> (nvidia.com/gpu.product, GPUs per node, gpu.memory MiB, gpu.family).
GFD_NODES: dict[str, tuple[str, int, str, str]] = {
    "nvidia-l4": ("NVIDIA-L4", 8, "23034", "ada-lovelace"),
    "nvidia-a10g": ("NVIDIA-A10G", 8, "23028", "ampere"),
    "nvidia-a100-40gb": ("NVIDIA-A100-SXM4-40GB", 8, "40960", "ampere"),
    "nvidia-a100-80gb": ("NVIDIA-A100-SXM4-80GB", 8, "81920", "ampere"),
    "nvidia-a100-80gb-pcie": ("NVIDIA-A100-80GB-PCIe", 8, "81920", "ampere"),
    "nvidia-h100-80gb": ("NVIDIA-H100-80GB-HBM3", 8, "81559", "hopper"),
    "nvidia-h200-141gb": ("NVIDIA-H200", 8, "143771", "hopper"),
    "nvidia-l40s": ("NVIDIA-L40S", 8, "46068", "ada-lovelace"),
    "nvidia-t4": ("Tesla-T4", 4, "15360", "turing"),
}


def gpu_operator_nodes() -> list[PlatformNode]:
    """Nodes where NVIDIA's GPU operator runs GFD: product, count, memory and family
    labels, and the `nvidia.com/gpu=present:NoSchedule` taint clusters commonly add."""
    return [
        PlatformNode(
            f"gfd-{gpu.removeprefix('nvidia-')}",
            "gpu-operator",
            gpu,
            count,
            {
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": product,
                "nvidia.com/gpu.count": str(count),
                "nvidia.com/gpu.memory": memory,
                "nvidia.com/gpu.family": family,
            },
            (_taint(NVIDIA, "present"),),
        )
        for gpu, (product, count, memory, family) in GFD_NODES.items()
    ]


# ------------------------------------------------------------------------------ GKE
#: gpuType -> (cloud.google.com/gke-accelerator, machine type, GPUs per node).
GKE_NODES: dict[str, tuple[str, str, int]] = {
    "nvidia-l4": ("nvidia-l4", "g2-standard-96", 8),
    "nvidia-a100-40gb": ("nvidia-tesla-a100", "a2-highgpu-8g", 8),
    "nvidia-a100-80gb": ("nvidia-a100-80gb", "a2-ultragpu-8g", 8),
    "nvidia-h100-80gb": ("nvidia-h100-80gb", "a3-highgpu-8g", 8),
    "nvidia-h200-141gb": ("nvidia-h200-141gb", "a3-ultragpu-8g", 8),
    "nvidia-b200": ("nvidia-b200", "a4-highgpu-8g", 8),
}


def gke_nodes() -> list[PlatformNode]:
    """GKE Standard GPU node pools: GKE labels the accelerator and taints the pool
    `nvidia.com/gpu=present:NoSchedule` itself."""
    return [
        PlatformNode(
            f"gke-{gpu.removeprefix('nvidia-')}",
            "gke",
            gpu,
            count,
            {
                "cloud.google.com/gke-accelerator": accelerator,
                "cloud.google.com/gke-gpu": "true",
                "cloud.google.com/gke-nodepool": f"pool-{machine.split('-')[0]}",
                "cloud.google.com/machine-family": machine.split("-")[0],
                "node.kubernetes.io/instance-type": machine,
                "topology.kubernetes.io/region": "us-central1",
                "topology.kubernetes.io/zone": "us-central1-a",
            },
            (_taint(NVIDIA, "present"),),
        )
        for gpu, (accelerator, machine, count) in GKE_NODES.items()
    ]


# ------------------------------------------------------------------------------ EKS
#: gpuType -> (instance type, instance-gpu-name, instance-gpu-memory MiB, GPUs).
EC2_GPU_INSTANCES: dict[str, tuple[str, str, str, int]] = {
    "nvidia-l4": ("g6.48xlarge", "l4", "22888", 8),
    "nvidia-a10g": ("g5.48xlarge", "a10g", "24576", 8),
    "nvidia-l40s": ("g6e.48xlarge", "l40s", "45776", 8),
    "nvidia-a100-40gb": ("p4d.24xlarge", "a100", "40960", 8),
    "nvidia-a100-80gb": ("p4de.24xlarge", "a100", "81920", 8),
    "nvidia-h100-80gb": ("p5.48xlarge", "h100", "81920", 8),
    "nvidia-h200-141gb": ("p5en.48xlarge", "h200", "143771", 8),
    "nvidia-b200": ("p6-b200.48xlarge", "b200", "183359", 8),
}
AWS_TOPOLOGY = {
    "topology.kubernetes.io/region": "us-west-2",
    "topology.kubernetes.io/zone": "us-west-2a",
}


def eks_karpenter_nodes() -> list[PlatformNode]:
    """Nodes a Karpenter NodePool launched: the AWS provider's instance-gpu-* labels and
    the NodePool's own `nvidia.com/gpu:NoSchedule` taint (the AWS GPU guidance's)."""
    return [
        PlatformNode(
            f"karpenter-{gpu.removeprefix('nvidia-')}",
            "eks-karpenter",
            gpu,
            count,
            {
                "node.kubernetes.io/instance-type": instance,
                "karpenter.sh/nodepool": "gpu",
                "karpenter.sh/capacity-type": "on-demand",
                "karpenter.k8s.aws/instance-family": instance.split(".")[0],
                "karpenter.k8s.aws/instance-gpu-name": name,
                "karpenter.k8s.aws/instance-gpu-manufacturer": "nvidia",
                "karpenter.k8s.aws/instance-gpu-memory": memory,
                "karpenter.k8s.aws/instance-gpu-count": str(count),
                **AWS_TOPOLOGY,
            },
            (_taint(NVIDIA),),
        )
        for gpu, (instance, name, memory, count) in EC2_GPU_INSTANCES.items()
    ]


def eks_nodegroup_nodes() -> list[PlatformNode]:
    """Managed node groups on the EKS accelerated AMI: EKS labels the group, capacity type
    and image; only the instance type tells the GPU. The `nvidia.com/gpu=true:NoSchedule`
    taint is the group's configuration (EKS adds none)."""
    return [
        PlatformNode(
            f"nodegroup-{gpu.removeprefix('nvidia-')}",
            "eks-nodegroup",
            gpu,
            count,
            {
                "node.kubernetes.io/instance-type": instance,
                "eks.amazonaws.com/nodegroup": f"gpu-{instance.split('.')[0]}",
                "eks.amazonaws.com/capacityType": "ON_DEMAND",
                "eks.amazonaws.com/nodegroup-image": "ami-0a1b2c3d4e5f60718",
                **AWS_TOPOLOGY,
            },
            (_taint(NVIDIA, "true"),),
        )
        for gpu, (instance, _name, _memory, count) in EC2_GPU_INSTANCES.items()
    ]


# ------------------------------------------------------------------------------ AKS
#: gpuType -> (VM size, GPUs per VM).
AKS_NODES: dict[str, tuple[str, int]] = {
    "nvidia-t4": ("Standard_NC64as_T4_v3", 4),
    "nvidia-a100-80gb": ("Standard_ND96amsr_A100_v4", 8),
    "nvidia-h100-80gb": ("Standard_ND96isr_H100_v5", 8),
    "nvidia-h100-nvl-94gb": ("Standard_NC80adis_H100_v5", 2),
    "nvidia-h200-141gb": ("Standard_ND96isr_H200_v5", 8),
    "amd-mi300x": ("Standard_ND96isr_MI300X_v5", 8),
}


def aks_nodes() -> list[PlatformNode]:
    """AKS GPU node pools: the agent pool and VM size labels, `kubernetes.azure.com/
    accelerator: nvidia` on NVIDIA VMs, and the `sku=gpu:NoSchedule` taint AKS docs
    recommend for GPU pools."""
    return [
        PlatformNode(
            f"aks-{gpu.removeprefix('nvidia-')}",
            "aks",
            gpu,
            count,
            {
                "node.kubernetes.io/instance-type": size,
                "kubernetes.azure.com/agentpool": f"gpu{gpu.split('-')[-1].replace('gb', '')}",
                "kubernetes.azure.com/mode": "user",
                "topology.kubernetes.io/region": "eastus",
                "topology.kubernetes.io/zone": "eastus-1",
                **(
                    {"kubernetes.azure.com/accelerator": "nvidia"}
                    if gpu.startswith("nvidia")
                    else {}
                ),
            },
            (_taint("sku", "gpu"),),
            resource=NVIDIA if gpu.startswith("nvidia") else AMD,
        )
        for gpu, (size, count) in AKS_NODES.items()
    ]


# ------------------------------------------------------------------------------ AMD
#: gpuType -> (amd.com/gpu.product-name, device-id, vram, cu-count).
AMD_NODES: dict[str, tuple[str, str, str, str]] = {
    "amd-mi300x": ("AMD_Instinct_MI300X_OAM", "74a1", "192G", "304"),
    "amd-mi325x": ("AMD_Instinct_MI325X_OAM", "74a5", "256G", "304"),
}


def amd_nodes() -> list[PlatformNode]:
    """Nodes the AMD GPU operator's node labeller labelled (8 OAM GPUs each); the
    operator adds no taint."""
    return [
        PlatformNode(
            f"amd-{gpu.removeprefix('amd-')}",
            "amd",
            gpu,
            8,
            {
                "feature.node.kubernetes.io/amd-gpu": "true",
                "amd.com/gpu.product-name": product,
                "amd.com/gpu.device-id": device,
                "amd.com/gpu.family": "AI",
                "amd.com/gpu.vram": vram,
                "amd.com/gpu.cu-count": cus,
            },
            resource=AMD,
        )
        for gpu, (product, device, vram, cus) in AMD_NODES.items()
    ]


def all_platform_nodes() -> list[PlatformNode]:
    """Every shape, in a fixed order (the subnets follow it)."""
    return [
        *gpu_operator_nodes(),
        *gke_nodes(),
        *eks_karpenter_nodes(),
        *eks_nodegroup_nodes(),
        *aks_nodes(),
        *amd_nodes(),
    ]


def platform_nodes(first_subnet: int = FIRST_SUBNET) -> list[NodeSpec]:
    """The kwok nodes, one pod subnet each from `first_subnet` on."""
    return [node.spec(first_subnet + i) for i, node in enumerate(all_platform_nodes())]


def shape(name: str) -> PlatformNode:
    """The shape of the node named `name` (KeyError: no such node)."""
    return {n.name: n for n in all_platform_nodes()}[name]


def profile_nodes() -> dict[str, str]:
    """Profile name -> the node that should take it. The GFD and AMD-operator profiles are
    named by the GPU alone (`nvidia-l4`, `amd-mi300x`); the cloud ones carry the platform
    first (`gke-nvidia-l4`, `eks-karpenter-nvidia-l4`, `aks-amd-mi300x`)."""
    bare = ("gpu-operator", "amd")
    return {
        node.gpu if node.platform in bare else f"{node.platform}-{node.gpu}": node.name
        for node in all_platform_nodes()
    }


def node_for_profile(name: str) -> str:
    """The node name a profile's pods should land on (KeyError: no shape for it)."""
    return profile_nodes()[name]
