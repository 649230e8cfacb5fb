"""The local cluster's pins, certificates and node shapes (no cluster needed)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from hedge_dev import tools
from hedge_dev.cluster import DEFAULT_NODES, NodeSpec, service_cidr
from hedge_dev.pki import create_pki

GO_MOD = tools.GO_MODULE_DIR / "go.mod"
ROOT = Path(__file__).resolve().parents[2]


def test_go_module_pins_match_the_tool_versions() -> None:
    text = GO_MOD.read_text()
    assert re.search(rf"^\s*(require )?k8s.io/kubernetes {tools.KUBERNETES_VERSION}$", text, re.M)
    staging = re.findall(r"^\s+(k8s\.io/\S+) => \1 (v\S+)$", text, re.MULTILINE)
    assert len(staging) >= 25, "every staging module must be replaced by its published version"
    expected = "v0." + tools.KUBERNETES_VERSION.split(".", 1)[1]
    assert {version for _, version in staging} == {expected}
    assert tools.KUBERNETES_VERSION.startswith("v1.34.")
    assert tools.ETCD_VERSION in (tools.GO_MODULE_DIR / "go.sum").read_text()


def test_binaries_are_cached_outside_the_repository(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HEDGE_CACHE_DIR", str(tmp_path))
    for tool in tools.ALL_TOOLS:
        directory = tools.bin_dir(tool)
        assert directory.is_relative_to(tmp_path)
        assert not directory.is_relative_to(ROOT)
    # A pin change moves the control plane to a new folder, so stale builds are never reused.
    assert tools.KUBERNETES_VERSION in tools.bin_dir("kube-apiserver").name


def test_unknown_tool_is_a_clear_error() -> None:
    with pytest.raises(tools.ToolError, match="unknown tool 'kubelet'"):
        tools.ensure_tools(["kubelet"])


def test_loopback_patch_targets_exactly_the_endpoint_ip_check() -> None:
    assert "IsLoopback" in tools.LOOPBACK_CHECK
    assert tools.LOOPBACK_CHECK.count("\n") == 3
    assert "IsLoopback" not in tools.LOOPBACK_REPLACEMENT


def test_pki_serving_cert_covers_loopback_and_admin_is_cluster_admin(tmp_path: Path) -> None:
    pki = create_pki(tmp_path)
    text = subprocess.run(
        ["openssl", "x509", "-in", str(pki.apiserver_cert), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "IP Address:127.0.0.1" in text
    assert "DNS:kubernetes.default.svc" in text
    subject = subprocess.run(
        ["openssl", "x509", "-in", str(pki.admin_cert), "-noout", "-subject"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "O = system:masters" in subject
    verify = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(pki.ca_cert),
            str(pki.apiserver_cert),
            str(pki.admin_cert),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
    assert oct(pki.admin_key.stat().st_mode & 0o777) == "0o600"


def test_gpu_nodes_carry_capacity_label_and_taint() -> None:
    gpu = NodeSpec("gpu-x", 5, "NVIDIA-L4", 4).manifest(cluster_octet=42)
    assert gpu["status"]["capacity"]["nvidia.com/gpu"] == "4"
    assert gpu["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-L4"
    assert gpu["spec"]["taints"] == [
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    ]
    assert gpu["spec"]["podCIDR"] == "127.42.5.0/24"
    cpu = NodeSpec("cpu-x", 6).manifest(cluster_octet=42)
    assert "nvidia.com/gpu" not in cpu["status"]["capacity"]
    assert cpu["spec"]["taints"] == []
    assert sum(1 for n in DEFAULT_NODES if n.gpu_product) >= 2


def test_service_range_does_not_overlap_pod_subnets() -> None:
    import ipaddress

    services = ipaddress.ip_network(service_cidr(42))
    assert services.subnet_of(ipaddress.ip_network("127.0.0.0/8"))
    for node in DEFAULT_NODES:
        pods = ipaddress.ip_network(node.manifest(42)["spec"]["podCIDR"])
        assert not pods.overlaps(services)


def test_demo_example_is_the_repository_quickstart() -> None:
    """`hedge dev demo` ships its own copy of the example (it runs from an installed wheel)."""
    from hedge_dev import demo

    root = Path(__file__).resolve().parents[2]
    assert demo.EXAMPLE.read_text() == (root / "examples" / "quickstart.yaml").read_text()
