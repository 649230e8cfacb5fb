"""Fallback provider keys come only from Secrets that opted in (issue 16, High-2).

The operator refuses a provider-key reference to a Secret without the label
`hedge.dev/provider-key: "true"` with Ready=False, reason SecretNotOptedIn, naming the label
to add; the message is the same for a Secret that exists without the label and for none at
all, and never lists a Secret's keys, so creating a ModelDeployment tells nothing about the
namespace's other Secrets. Model credentials and env Secrets (used by the pods, not the
gateway) need no label.
"""

from __future__ import annotations

from typing import Any

import pytest

from hedge_operator.config import OperatorConfig
from hedge_operator.provisioning.secrets import UNCHECKED, SecretKeys
from hedge_operator.provisioning.validation import (
    SECRET_NOT_FOUND,
    SECRET_NOT_OPTED_IN,
    ProviderKeys,
    validate,
)
from tests.operator.factories import model, spec_with

CONFIG = OperatorConfig()


def with_provider(secret: str = "openai", key: str = "api-key", **extra: Any) -> dict[str, Any]:
    return spec_with(
        fallback={
            "providers": [
                {
                    "type": "OpenAI",
                    "model": "gpt-4o-mini",
                    "apiKeySecretRef": {"name": secret, "key": key},
                }
            ]
        },
        **extra,
    )


@pytest.mark.parametrize(
    "found",
    [
        None,  # no such Secret
        frozenset(),  # an empty Secret without the label
        frozenset({"api-key"}),  # the right key, no label
        frozenset({"password", "username"}),  # someone else's Secret
    ],
)
def test_a_secret_that_did_not_opt_in_is_refused_with_one_message(
    found: frozenset[str] | None,
) -> None:
    problem = validate(model(with_provider()), CONFIG, {"openai": found})
    assert problem is not None
    assert problem.reason == SECRET_NOT_OPTED_IN
    assert problem.waiting  # labelling the Secret fixes it: checked again soon
    assert problem.message == (
        "spec.fallback.providers[0].apiKeySecretRef names Secret 'openai', which is not a "
        "provider-key Secret: fallback provider keys are read only from Secrets labelled "
        "hedge.dev/provider-key: \"true\" in namespace 'team-a' (create the Secret with that "
        "label, or add it: kubectl label secret openai hedge.dev/provider-key=true)"
    )


def test_an_opted_in_secret_is_checked_for_its_key() -> None:
    assert validate(model(with_provider()), CONFIG, {"openai": ProviderKeys({"api-key"})}) is None
    problem = validate(model(with_provider()), CONFIG, {"openai": ProviderKeys({"key"})})
    assert problem is not None and problem.reason == SECRET_NOT_FOUND
    assert "has no key 'api-key'" in problem.message


def test_a_provider_reference_is_judged_before_anything_is_said_of_that_secret() -> None:
    """The same Secret named as model credentials too: the credentials check would list
    its keys; the provider check comes first and says only that it did not opt in."""
    spec = with_provider(model={"credentialsSecretRef": {"name": "openai", "key": "token"}})
    problem = validate(model(spec), CONFIG, {"openai": frozenset({"password"})})
    assert problem is not None and problem.reason == SECRET_NOT_OPTED_IN
    assert "password" not in problem.message


def test_pod_secrets_need_no_label() -> None:
    spec = spec_with(model={"credentialsSecretRef": {"name": "hf"}})
    assert validate(model(spec), CONFIG, {"hf": frozenset({"token"})}) is None


def test_a_secret_the_operator_may_not_read_is_left_to_the_gateway() -> None:
    assert validate(model(with_provider()), CONFIG, {"openai": UNCHECKED}) is None


class Reader:
    def __init__(self) -> None:
        self.secrets: dict[str, frozenset[str]] = {}
        self.calls = 0

    async def secret_keys(self, namespace: str, name: str) -> frozenset[str] | None:
        self.calls += 1
        return self.secrets.get(name)


async def test_a_secret_labelled_later_is_noticed_soon() -> None:
    now = [0.0]
    reader = Reader()
    reader.secrets["openai"] = frozenset({"api-key"})  # exists, not labelled
    keys = SecretKeys(reader, clock=lambda: now[0])
    md = model(with_provider())
    found, _ = await keys.lookup(md)
    assert validate(md, CONFIG, found) is not None
    reader.secrets["openai"] = ProviderKeys({"api-key"})
    now[0] += SecretKeys.MISSING_TTL + 1  # not the 5 minutes a complete answer is kept
    found, looked = await keys.lookup(md)
    assert looked == 1 and validate(md, CONFIG, found) is None
