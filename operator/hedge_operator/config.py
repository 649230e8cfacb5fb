"""Does I/O (reads the GPU file): operator-wide settings that are not part of any
ModelDeployment: the GPU type table and the images of the download step. Loaded once at
startup (flags, optional YAML file)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

#: Friendly GPU type -> the `nvidia.com/gpu.product` label that NVIDIA's GPU feature
#: discovery puts on nodes. Extend or replace it with `hedge operator --gpu-types FILE`.
DEFAULT_GPU_PRODUCTS: dict[str, str] = {
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

GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_RESOURCE = "nvidia.com/gpu"

# Images of the init step that copies s3:// and gs:// weights into the cache.
DEFAULT_S3_DOWNLOADER_IMAGE = "amazon/aws-cli:2.27.50"
DEFAULT_GCS_DOWNLOADER_IMAGE = "google/cloud-sdk:530.0.0-slim"


@dataclass(frozen=True)
class NetworkPolicyConfig:
    """Who the per-ModelDeployment NetworkPolicy admits to the engine pods: the gateways and
    the operator, each as pod labels in a namespace (None: any namespace; the chart always
    names the release namespace)."""

    gateway_namespace: str | None = None
    gateway_pod_labels: Mapping[str, str] = field(
        default_factory=lambda: {"app.kubernetes.io/component": "gateway"}
    )
    operator_namespace: str | None = None
    operator_pod_labels: Mapping[str, str] = field(
        default_factory=lambda: {"app.kubernetes.io/component": "operator"}
    )


@dataclass(frozen=True)
class OperatorConfig:
    gpu_products: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_GPU_PRODUCTS))
    s3_downloader_image: str = DEFAULT_S3_DOWNLOADER_IMAGE
    gcs_downloader_image: str = DEFAULT_GCS_DOWNLOADER_IMAGE
    #: The engine pods' NetworkPolicy (None: the operator writes none, --no-network-policy).
    network_policy: NetworkPolicyConfig | None = field(default_factory=NetworkPolicyConfig)

    def with_gpu_file(self, path: Path, *, replace_table: bool = False) -> OperatorConfig:
        """Merges (or replaces) the GPU table with a YAML mapping `type: product-label`."""
        table = load_gpu_table(path)
        merged = table if replace_table else {**self.gpu_products, **table}
        return replace(self, gpu_products=merged)


def load_gpu_table(path: Path) -> dict[str, str]:
    data: Any = yaml.safe_load(path.read_text())
    if isinstance(data, Mapping) and "gpuTypes" in data:
        data = data["gpuTypes"]
    if not isinstance(data, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and k and v for k, v in data.items()
    ):
        raise ValueError(f"{path}: expected a mapping of GPU type -> nvidia.com/gpu.product")
    return {str(k): str(v) for k, v in data.items()}
