"""Fixtures for the chart, image and GitOps tests: the pinned helm and kubectl, a renderer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.chart.chart_support import Manifest, Render, generator, parse_manifests


@pytest.fixture(scope="session")
def helm() -> Path:
    path: Path = generator.find_helm()
    return path


@pytest.fixture(scope="session")
def kubectl() -> Path:
    from hedge_dev.tools import ensure_tools

    return ensure_tools(["kubectl"])["kubectl"]


@pytest.fixture(scope="session")
def render(helm: Path) -> Render:
    """Renders the chart and returns its objects; keyword arguments go to helm_template."""

    def _render(*values_files: Path, set_values: tuple[str, ...] = (), **kw: Any) -> list[Manifest]:
        text = generator.helm_template(
            helm, values_files=tuple(values_files), set_values=set_values, **kw
        )
        return parse_manifests(text)

    return _render
