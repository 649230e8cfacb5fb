"""Pure: the accelerator profiles Hedge ships, one per kind of GPU node on each platform it
documents (docs/placement.md cites where each platform documents its labels and taints).

The profiles named before profiles existed (`nvidia-l4`, `nvidia-a100-80gb`, …) select on
the `nvidia.com/gpu.product` label of NVIDIA's GPU feature discovery exactly as they did,
so an upgrade leaves existing engine pods' templates (and revisions) unchanged.
"""

from __future__ import annotations

from hedge_operator.placement.profiles import NVIDIA_TOLERATION, AcceleratorProfile

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


def shipped_profiles() -> dict[str, AcceleratorProfile]:
    """Every shipped profile by name (a fresh dict: callers may merge into it)."""
    profiles = {name: gfd_profile(name, product) for name, product in GFD_PRODUCTS.items()}
    return dict(sorted(profiles.items()))
