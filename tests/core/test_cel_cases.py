"""The CEL case table (tests/core/cel_cases.py) against the CRD and the Python checks; the
same cases go to a real API server in tests/e2e/test_cel_rules.py."""

from __future__ import annotations

from collections import Counter

import pytest

from hedge_core.api import ModelDeployment, SpecError
from tests.core.cel_cases import BASE_SPEC, CASES, CelCase, crd_rules, manifest
from tests.core.test_api import all_rules


def test_every_cel_rule_of_the_crd_has_exactly_one_case() -> None:
    rules = list(crd_rules())
    assert len(rules) == len(set(rules)), "two rules at one place share a message"
    cases = Counter(case.rule for case in CASES)
    assert [rule for rule in rules if rule not in cases] == [], "rules without a case"
    assert [rule for rule in cases if rule not in rules] == [], "cases for no rule"
    assert [rule for rule, n in cases.items() if n > 1] == [], "rules with several cases"


def test_the_base_is_valid() -> None:
    md = ModelDeployment.parse_body(manifest(BASE_SPEC))
    assert md.spec.model.source == BASE_SPEC["model"]["source"]


@pytest.mark.parametrize("case", [c for c in CASES if not c.transition], ids=lambda c: c.id)
def test_python_refuses_each_case_with_its_rule_and_only_that(case: CelCase) -> None:
    with pytest.raises(SpecError) as info:
        ModelDeployment.parse_body(case.body())
    assert [message for _, message in info.value.problems] == [case.message]


@pytest.mark.parametrize("case", [c for c in CASES if c.transition], ids=lambda c: c.id)
def test_transition_rules_are_for_the_api_server_alone(case: CelCase) -> None:
    # Only the API server sees oldSelf: Python has no check, and both states are valid alone.
    (rule,) = [r for r in all_rules() if r.message == case.message]
    assert rule.check is None and "oldSelf" in rule.rule
    ModelDeployment.parse_body(case.before_body())
    ModelDeployment.parse_body(case.body())


def test_only_transition_rules_lack_a_python_check() -> None:
    # Under spec; the object's own rules (path "") are checked by check_name and from_body,
    # which the parametrized test above runs.
    unchecked = {r.message for r in all_rules() if r.check is None}
    assert unchecked == {c.message for c in CASES if c.transition}
