"""Helpers shared by the chart tests: paths, the manifest generator, manifest lookups."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "hedge"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))

Manifest = dict[str, Any]
# render(*values_files, set_values=(...), **helm_template_kwargs) -> objects
Render = Callable[..., list[Manifest]]


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "generate_manifests", ROOT / "scripts" / "generate_manifests.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


generator = _load_generator()


def parse_manifests(text: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, check=False)


def by_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    found = [m for m in by_kind(manifests, kind) if m["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def containers(manifest: Manifest) -> Iterator[Manifest]:
    yield from manifest["spec"]["template"]["spec"]["containers"]
