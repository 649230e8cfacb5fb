"""Fixtures for tests that run the real vLLM (CPU build) from the cache.

`vllm_install` and `tiny_model` install vLLM and make the tiny model on first use (minutes,
once per machine; the progress lines are shown even under pytest's capture). `run_in_vllm`
runs a script with the install's Python, offline and outside Hedge's environment.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hedge_dev import vllm

HERE = Path(__file__).resolve().parent


def _uncaptured(config: pytest.Config) -> Any:
    capture = config.pluginmanager.getplugin("capturemanager")
    return capture.global_and_fixture_disabled()


@pytest.fixture(scope="session")
def vllm_install(pytestconfig: pytest.Config) -> vllm.VllmInstall:
    with _uncaptured(pytestconfig):
        return vllm.ensure_vllm()


@pytest.fixture(scope="session")
def tiny_model(pytestconfig: pytest.Config, vllm_install: vllm.VllmInstall) -> Path:
    with _uncaptured(pytestconfig):
        return vllm.ensure_tiny_model(vllm_install)


def run_in_vllm(
    install: vllm.VllmInstall, script: Path, payload: Any, tmp: Path, timeout: float = 240
) -> list[dict[str, Any]]:
    """Runs `script` with the vLLM environment's Python, JSON in, JSON lines out."""
    env = vllm.engine_env(os.environ, tmp / "vllm-state")
    proc = subprocess.run(
        [str(install.python), str(script)],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("engine")
