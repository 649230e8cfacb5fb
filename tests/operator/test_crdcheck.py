"""The start-up check of the installed CRD against this binary's schema."""

from __future__ import annotations

import copy

from hedge_core.api.definition import crd
from hedge_operator.crdcheck import skew


def test_the_generated_crd_is_current() -> None:
    assert skew(crd()) is None


def test_an_older_crd_is_reported() -> None:
    older = copy.deepcopy(crd())
    spec = older["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"]["serving"]["properties"].pop("allowFrom")
    message = skew(older)
    assert message is not None and "Helm does not upgrade CRDs" in message
    assert "spec.serving.allowFrom" in message
    assert skew(None) == "the ModelDeployment CRD is not installed"
