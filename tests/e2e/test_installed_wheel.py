"""`hedge dev` works from installed wheels, not only from a checkout: `hedge` and `hedge-dev`
are built as wheels, installed into a fresh virtual environment outside the repository (their
third-party dependencies borrowed from the project's .venv), and `hedge dev cluster up` runs
there from another directory, with the Go module as package data (the binaries it builds are
cached by content, so the checkout's build is reused)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from .conftest import ROOT


def run(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 240) -> str:
    proc = subprocess.run(
        list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


@pytest.mark.timeout(400)
def test_hedge_dev_cluster_from_installed_wheels(tmp_path: Path) -> None:
    dist, venv, elsewhere = tmp_path / "dist", tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Built from a copy: setuptools writes build/ folders next to the sources.
    source = tmp_path / "source"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", ".*")
    for part in ("core", "operator", "serving", "dev"):
        shutil.copytree(ROOT / part, source / part, ignore=skip)
    for file in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / file, source / file)
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "-w",
        str(dist),
        ".",
        "./dev",
        cwd=source,
    )
    wheels = sorted(p.name for p in dist.glob("*.whl"))
    assert [w.split("-")[0] for w in wheels] == ["hedge", "hedge_dev"]
    run(sys.executable, "-m", "venv", "--without-pip", str(venv), cwd=tmp_path)
    python = venv / "bin" / "python"
    run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "--quiet",
        "--no-deps",
        *(str(dist / w) for w in wheels),
        cwd=tmp_path,
    )
    # Dependencies (kopf, aiohttp, kubernetes_asyncio…) from the project's environment; a
    # .pth line adds a directory without running its .pth files, so the checkout's editable
    # installs stay out.
    site = Path(
        subprocess.check_output(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            text=True,
        ).strip()
    )
    (site / "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = run(
        str(python),
        "-c",
        "import hedge_dev, hedge_core; print(hedge_dev.__file__, hedge_core.__file__)",
        cwd=elsewhere,
    )
    assert str(ROOT) not in where and str(venv) in where, where

    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "VIRTUAL_ENV")}
    hedge = str(venv / "bin" / "hedge")
    assert "dev" in run(hedge, "--help", cwd=elsewhere, env=env)
    name = f"wheel-{os.getpid()}"
    try:
        out = run(hedge, "dev", "cluster", "up", "--name", name, cwd=elsewhere, env=env)
        assert f"cluster '{name}' up" in out
        assert '"running": true' in run(
            hedge, "dev", "cluster", "status", "--name", name, cwd=elsewhere, env=env
        )
    finally:
        subprocess.run(
            [hedge, "dev", "cluster", "down", "--name", name],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
