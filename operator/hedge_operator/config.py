"""Does I/O (reads the profiles files): operator-wide settings that are not part of any
ModelDeployment: the accelerator profiles, the images of the download step and the engine
NetworkPolicy. Loaded once at startup (flags, optional YAML files)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from hedge_operator.placement.catalog import gfd_profile, shipped_profiles
from hedge_operator.placement.profiles import (
    NVIDIA_GPU,
    AcceleratorProfile,
    ProfileError,
    parse_profiles,
)

#: The extended resource of NVIDIA GPUs (profiles name others, e.g. amd.com/gpu).
GPU_RESOURCE = NVIDIA_GPU

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
    #: spec.resources.gpuType -> its profile (the shipped catalog unless replaced).
    accelerator_profiles: Mapping[str, AcceleratorProfile] = field(default_factory=shipped_profiles)
    #: The profile of GPU pods whose spec names none (None: any nvidia.com/gpu).
    default_accelerator_profile: str | None = None
    s3_downloader_image: str = DEFAULT_S3_DOWNLOADER_IMAGE
    gcs_downloader_image: str = DEFAULT_GCS_DOWNLOADER_IMAGE
    #: The engine pods' NetworkPolicy (None: the operator writes none, --no-network-policy).
    network_policy: NetworkPolicyConfig | None = field(default_factory=NetworkPolicyConfig)

    def with_profiles(
        self, profiles: Mapping[str, AcceleratorProfile], *, replace_table: bool = False
    ) -> OperatorConfig:
        """Profiles merged over (or replacing) the current ones, by name."""
        merged = dict(profiles) if replace_table else {**self.accelerator_profiles, **profiles}
        return replace(self, accelerator_profiles=dict(sorted(merged.items())))

    def with_profiles_file(self, path: Path, *, replace_table: bool = False) -> OperatorConfig:
        """Merges (or replaces) the profiles with a YAML file (`acceleratorProfiles:`)."""
        return self.with_profiles(load_profiles_file(path), replace_table=replace_table)

    def with_gpu_file(self, path: Path, *, replace_table: bool = False) -> OperatorConfig:
        """The file of the operator before profiles, a YAML mapping `type: product-label`
        (nvidia.com/gpu.product): each entry becomes a GPU-operator profile."""
        table = load_gpu_table(path)
        profiles = {name: gfd_profile(name, product) for name, product in table.items()}
        return self.with_profiles(profiles, replace_table=replace_table)

    def check(self) -> None:
        """Raises ProfileError when the default profile names no profile."""
        default = self.default_accelerator_profile
        if default is not None and default not in self.accelerator_profiles:
            known = ", ".join(sorted(self.accelerator_profiles)) or "none"
            raise ProfileError(
                f"--default-accelerator-profile {default!r} is not a profile (known: {known})"
            )


def load_profiles_file(path: Path) -> dict[str, AcceleratorProfile]:
    try:
        data: Any = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ProfileError(f"{path}: not YAML: {err}") from None
    return parse_profiles(data, str(path))


def load_gpu_table(path: Path) -> dict[str, str]:
    data: Any = yaml.safe_load(path.read_text())
    if isinstance(data, Mapping) and "gpuTypes" in data:
        data = data["gpuTypes"]
    if not isinstance(data, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and k and v for k, v in data.items()
    ):
        raise ValueError(f"{path}: expected a mapping of GPU type -> nvidia.com/gpu.product")
    return {str(k): str(v) for k, v in data.items()}
