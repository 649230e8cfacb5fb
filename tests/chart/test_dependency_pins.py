"""Dependency floors admit no release with a known HTTP-parser CVE, and the image installs
exact versions (issue 16, Low): scripts/image-constraints.txt pins what the image ships."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.chart.chart_support import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
RUNTIME = {canonicalize_name(Requirement(r).name): Requirement(r) for r in PROJECT["dependencies"]}
CONSTRAINTS = ROOT / "scripts" / "image-constraints.txt"


def test_the_aiohttp_floor_admits_no_release_with_a_known_parser_cve() -> None:
    spec = RUNTIME["aiohttp"].specifier
    # CVE-2024-52304 (fixed 3.10.11), CVE-2025-53643 (3.12.14), CVE-2025-69223 (3.13.3),
    # CVE-2026-54278 (3.14.1): the last release before each fix must be refused.
    for vulnerable in ("3.9.5", "3.10.10", "3.12.13", "3.13.2", "3.14.0"):
        assert Version(vulnerable) not in spec, f"aiohttp{spec} admits {vulnerable}"


def test_the_image_installs_exact_versions_of_every_runtime_dependency() -> None:
    pins: dict[str, Version] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][0-9A-Za-z.+-]*)", line)
            assert m, f"not an exact pin: {line!r}"
            pins[canonicalize_name(m.group(1))] = Version(m.group(2))
    for name, requirement in RUNTIME.items():
        assert name in pins, f"{name} is not pinned in {CONSTRAINTS.name}"
        assert pins[name] in requirement.specifier, f"{name}=={pins[name]} vs {requirement}"
    for transitive in ("yarl", "multidict", "propcache", "aiosignal", "frozenlist", "urllib3"):
        assert transitive in pins, f"{transitive} (a dependency of one) is not pinned"
    install = (ROOT / "scripts" / "install-image-deps").read_text()
    assert "image-constraints.txt" in install
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "scripts/image-constraints.txt" in dockerfile
