"""Engine pods placed by accelerator profile and spec.engine.pod: the merge and its precedence."""

from __future__ import annotations

from typing import Any

import pytest

from hedge_operator.config import OperatorConfig
from hedge_operator.provisioning.builders import revision_of
from tests.operator.factories import model, spec_with


def _spec(**changes: Any) -> dict[str, Any]:
    spec = spec_with(**changes)
    spec["resources"] = {k: v for k, v in spec["resources"].items() if v is not None}
    return spec


@pytest.mark.parametrize(
    ("changes", "revision"),
    [
        ({}, "d031a8ee0f"),
        ({"resources": {"gpus": 0, "gpuType": None}}, "54d57e81c8"),
        ({"resources": {"gpus": 2, "gpuType": None}}, "b32a7d9a01"),
        ({"resources": {"gpus": 1, "gpuType": "nvidia-l4"}}, "598332e8e0"),
        (
            {
                "resources": {"gpus": 8, "gpuType": "nvidia-h100-80gb"},
                "engine": {
                    "securityProfile": "Restricted",
                    "env": [{"name": "A", "value": "b"}],
                    "podAnnotations": {"x": "y"},
                },
            },
            "3c1b0efa66",
        ),
    ],
)
def test_an_upgrade_to_profiles_keeps_every_revision(
    changes: dict[str, Any], revision: str
) -> None:
    """The revisions these specs had before accelerator profiles and pod settings existed
    (computed by the previous release): an upgrade restarts no engine pod."""
    assert revision_of(model(_spec(**changes)), OperatorConfig()) == revision
