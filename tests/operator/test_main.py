"""`hedge operator`: flags and startup configuration."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from hedge_operator import main
from hedge_operator.placement.catalog import GFD_PRODUCT_LABEL, shipped_profiles


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    main.configure_parser(parser)
    return parser.parse_args(argv)


def test_defaults_watch_every_namespace_standalone() -> None:
    args = parse()
    assert args.namespace == []
    assert args.peering is None
    assert args.watch_timeout == 300 and isinstance(args.watch_timeout, int)
    config = main.build_config(args)
    assert dict(config.accelerator_profiles) == shipped_profiles()
    assert config.default_accelerator_profile is None


def test_namespaces_and_gpu_table_file(tmp_path: Path) -> None:
    table = tmp_path / "gpus.yaml"
    table.write_text("gpuTypes:\n  nvidia-b200: NVIDIA-B200\n  nvidia-l4: NVIDIA-L4-CUSTOM\n")
    args = parse("-n", "team-a", "--namespace", "team-b", "--gpu-types", str(table))
    assert args.namespace == ["team-a", "team-b"]
    config = main.build_config(args)
    product = {
        name: p.node_selector.get(GFD_PRODUCT_LABEL)
        for name, p in config.accelerator_profiles.items()
    }
    assert product["nvidia-b200"] == "NVIDIA-B200"
    assert product["nvidia-l4"] == "NVIDIA-L4-CUSTOM"
    assert product["nvidia-a100-80gb"] == "NVIDIA-A100-SXM4-80GB"

    only = main.build_config(parse("--gpu-types", str(table), "--replace-gpu-types"))
    assert set(only.accelerator_profiles) == {"nvidia-b200", "nvidia-l4"}


def test_bad_gpu_table_is_refused(tmp_path: Path) -> None:
    table = tmp_path / "gpus.yaml"
    table.write_text("- not a mapping\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        main.build_config(parse("--gpu-types", str(table)))
    assert main.run(parse("--gpu-types", str(table), "--metrics-port", "0")) == 2


def test_no_credentials_is_a_clear_error_not_a_retry_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    missing = tmp_path / "missing-kubeconfig"
    args = parse("--kubeconfig", str(missing), "--metrics-port", "0", "--health-port", "0")
    assert main.run(args) == 2
    assert str(missing) in caplog.text


def test_the_operator_runs_with_hedges_handlers_registered() -> None:
    """What `hedge operator` hands kopf holds the reconcile, resync, autoscale and event
    handlers (a fresh interpreter: no test here has imported the handlers before)."""
    code = (
        "from hedge_operator import main\n"
        "registry = main.registry()\n"
        "ids = {h.id for h in registry._changing.get_all_handlers()}\n"
        "ids |= {h.id for h in registry._spawning.get_all_handlers()}\n"
        "ids |= {h.id for h in registry._watching.get_all_handlers()}\n"
        "print(' '.join(sorted(ids)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    ids = set(out.stdout.split())
    assert {"reconcile", "resync", "autoscale", "model-event", "child-event"} <= ids, ids


def test_accelerator_profile_files_merge_replace_and_name_the_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = tmp_path / "a.yaml"
    first.write_text(
        "acceleratorProfiles:\n"
        "  pool-a: {resource: amd.com/gpu, nodeSelector: {pool: a}}\n"
        "  nvidia-l4: {nodeSelector: {cloud.google.com/gke-accelerator: nvidia-l4}}\n"
    )
    second = tmp_path / "b.yaml"
    second.write_text(
        "acceleratorProfiles:\n  pool-a: {resource: amd.com/gpu, nodeSelector: {pool: b}}\n"
    )
    config = main.build_config(
        parse(
            "--accelerator-profiles", str(first), "--accelerator-profiles", str(second),
            "--default-accelerator-profile", "pool-a",
        )
    )  # fmt: skip
    profiles = config.accelerator_profiles
    assert profiles["pool-a"].node_selector == {"pool": "b"}  # the later file wins
    assert profiles["nvidia-l4"].node_selector == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert "nvidia-h100-80gb" in profiles  # merged over the shipped catalog
    assert config.default_accelerator_profile == "pool-a"

    only = main.build_config(
        parse("--accelerator-profiles", str(first), "--replace-accelerator-profiles")
    )
    assert set(only.accelerator_profiles) == {"pool-a", "nvidia-l4"}

    args = parse("--accelerator-profiles", str(first), "--print-accelerator-profiles")
    assert main.run(args) == 0
    printed = capsys.readouterr().out
    assert "pool-a:" in printed and "cloud.google.com/gke-accelerator: nvidia-l4" in printed


def test_bad_accelerator_profiles_stop_the_operator_with_the_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("acceleratorProfiles:\n  pool-a: {resource: gpu}\n")
    assert main.run(parse("--accelerator-profiles", str(bad), "--metrics-port", "0")) == 2
    assert "accelerator profile 'pool-a': resource 'gpu' is not an extended resource" in caplog.text
    caplog.clear()
    assert main.run(parse("--default-accelerator-profile", "nope", "--metrics-port", "0")) == 2
    assert "--default-accelerator-profile 'nope' is not a profile" in caplog.text
