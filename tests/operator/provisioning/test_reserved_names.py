"""A served name never takes another namespace's qualified form (issue 16, Medium-8)."""

from __future__ import annotations

import pytest

from hedge_operator.config import OperatorConfig
from hedge_operator.provisioning.validation import RESERVED_MODEL_NAME, validate_static
from tests.operator.factories import model, spec_with

CONFIG = OperatorConfig()  # the factories' objects live in namespace team-a


@pytest.mark.parametrize(
    ("served", "adapter"),
    [("team-b/llama", None), ("meta-llama/llama-3", None), ("llama", "team-b/lora")],
)
def test_a_served_name_of_another_namespaces_form_is_refused(
    served: str, adapter: str | None
) -> None:
    spec = spec_with(model={"name": served})
    if adapter:
        spec["adapters"] = [{"name": adapter, "source": "hf://org/lora"}]
    problem = validate_static(model(spec), CONFIG)
    assert problem is not None and problem.reason == RESERVED_MODEL_NAME
    assert not problem.waiting
    other = (adapter or served).split("/")[0]
    assert f"of namespace {other!r}'s models" in problem.message
    assert "team-a/..." in problem.message


@pytest.mark.parametrize("served", ["team-a/llama", "Qwen/Qwen2.5-7B", "org.io/model", "llama"])
def test_names_that_shadow_no_other_namespace_are_fine(served: str) -> None:
    assert validate_static(model(spec_with(model={"name": served})), CONFIG) is None
