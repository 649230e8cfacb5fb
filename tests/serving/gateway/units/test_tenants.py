"""ClientPolicies and their key Secrets → identities and limit sets (pure), and the
reservation a request makes (hedge_serving.gateway.tenants, .admission)."""

from __future__ import annotations

from typing import Any

import pytest

from hedge_core.api import ClientPolicy, Priority
from hedge_serving.gateway.admission import reserved_tokens
from hedge_serving.gateway.auth import ClientAuth
from hedge_serving.gateway.endpoints import Endpoint
from hedge_serving.gateway.errors import AuthenticationFailed
from hedge_serving.gateway.quota.limits import LimitSet
from hedge_serving.gateway.tenants import (
    digest,
    merge,
    policy_keys,
    secret_digests,
)


def policy(namespace: str = "team-a", name: str = "default", **spec: Any) -> ClientPolicy:
    body = {
        "apiVersion": "hedge.dev/v1alpha1",
        "kind": "ClientPolicy",
        "metadata": {"name": name, "namespace": namespace, "generation": 1},
        "spec": {"keys": [{"secretRef": {"name": "keys"}}], **spec},
    }
    return ClientPolicy.from_body(body)


def test_each_key_of_the_named_secrets_becomes_an_identity_bound_to_the_namespace() -> None:
    p = policy(
        keys=[
            {"secretRef": {"name": "keys", "key": "ci"}, "name": "ci-bot",
             "limits": {"requestsPerMinute": 10}},
            {"secretRef": {"name": "more"}},
        ],
        limits={"tokensPerMinute": 6000, "concurrentRequests": 4},
        models=[{"model": "llama", "limits": {"tokensPerDay": 100000}}],
        priority="sheddable",
        weight=3,
    )  # fmt: skip
    secrets = {
        "keys": secret_digests({"ci": "k-ci-1, k-ci-2", "other": "k-not-named"}),
        "more": secret_digests({"a": "k-more-a", "b": "k-more-b"}),
    }
    found = dict(policy_keys(p, secrets))
    assert set(found) == {digest(k) for k in ("k-ci-1", "k-ci-2", "k-more-a", "k-more-b")}
    ci = found[digest("k-ci-1")]
    assert ci.scope == frozenset({"team-a"})
    assert ci.key == "ci-bot"
    assert found[digest("k-more-b")].key == "more.b"  # default: <secret>.<data key>
    tenant = ci.tenant
    assert tenant is not None
    assert (tenant.label, tenant.priority, tenant.weight) == (
        "team-a/default",
        Priority.SHEDDABLE,
        3,
    )
    assert ci.limits_for("llama") == [
        LimitSet("tenant/team-a/default", tokens_per_minute=6000, concurrent_requests=4),
        LimitSet("key/team-a/default/ci-bot", requests_per_minute=10),
        LimitSet("model/team-a/default/llama", tokens_per_day=100000),
    ]
    # Another model: no model limits; another key: no key limits.
    assert found[digest("k-more-a")].limits_for("mistral") == [
        LimitSet("tenant/team-a/default", tokens_per_minute=6000, concurrent_requests=4)
    ]


def test_missing_secrets_and_data_keys_authenticate_nothing() -> None:
    p = policy(keys=[{"secretRef": {"name": "gone"}}, {"secretRef": {"name": "keys", "key": "x"}}])
    assert policy_keys(p, {"keys": secret_digests({"y": "k"})}) == []


def test_no_key_is_kept_as_text() -> None:
    kept = secret_digests({"a": "sk-secret-value"})
    assert kept == {"a": (digest("sk-secret-value"),)}
    assert b"sk-secret-value" not in repr(kept).encode()


def test_a_key_two_policies_claim_authenticates_neither_and_the_warning_names_no_key() -> None:
    a = policy_keys(policy("team-a"), {"keys": secret_digests({"k": "shared, only-a"})})
    b = policy_keys(policy("team-b"), {"keys": secret_digests({"k": "shared"})})
    found, problems = merge([*a, *b])
    assert digest("shared") not in found
    assert digest("only-a") in found
    assert len(problems) == 1
    assert "ClientPolicy team-a/default" in problems[0]
    assert "ClientPolicy team-b/default" in problems[0]
    assert "shared" not in problems[0]


def test_the_same_key_listed_twice_by_one_identity_is_not_a_conflict() -> None:
    p = policy()
    entries = policy_keys(p, {"keys": secret_digests({"k": "dup\ndup"})})
    found, problems = merge(entries)
    assert list(found) == [digest("dup")] and problems == []


def test_auth_identifies_policy_keys_and_rotation_needs_no_restart() -> None:
    auth = ClientAuth(["admin"], required=True)
    auth.set_policy_keys(policy_keys(policy(), {"keys": secret_digests({"k": "old"})}))
    assert auth.identify("Bearer old").key == "keys.k"
    assert auth.identify("Bearer admin").tenant is None
    assert auth.check("Bearer old") == frozenset({"team-a"})
    auth.set_policy_keys(policy_keys(policy(), {"keys": secret_digests({"k": "new"})}))
    assert auth.identify("Bearer new").tenant is not None
    with pytest.raises(AuthenticationFailed):
        auth.identify("Bearer old")


def test_policies_alone_turn_authentication_on_and_a_conflict_keeps_it_on() -> None:
    auth = ClientAuth(required=True)
    with pytest.raises(AuthenticationFailed):
        auth.identify("Bearer anything")  # no policy yet: closed, not open
    open_gateway = ClientAuth()
    a = policy_keys(policy("team-a"), {"keys": secret_digests({"k": "same"})})
    b = policy_keys(policy("team-b"), {"keys": secret_digests({"k": "same"})})
    open_gateway.set_policy_keys([*a, *b])
    with pytest.raises(AuthenticationFailed):
        open_gateway.identify("Bearer same")


@pytest.mark.parametrize(
    ("endpoint", "payload", "body_bytes", "default", "expected"),
    [
        # prompt estimate (bytes / 4, rounded up) + max_tokens x n
        (Endpoint.CHAT, {"max_tokens": 100}, 400, 512, 100 + 100),
        (Endpoint.CHAT, {"max_completion_tokens": 50, "max_tokens": 80, "n": 2}, 40, 512, 10 + 160),
        (Endpoint.CHAT, {}, 4, 512, 1 + 512),  # no maximum: the policy's default
        (Endpoint.CHAT, {"max_tokens": "lots", "n": True}, 4, 64, 1 + 64),  # invalid: absent
        (Endpoint.COMPLETIONS, {"prompt": ["a", "b", "c"], "max_tokens": 10}, 8, 512, 2 + 30),
        (Endpoint.COMPLETIONS, {"max_tokens": 10, "best_of": 3, "n": 2}, 8, 512, 2 + 30),
        (Endpoint.EMBEDDINGS, {"input": "x"}, 400, 512, 100),  # generates nothing
    ],
)
def test_reserved_tokens(
    endpoint: Endpoint, payload: dict[str, Any], body_bytes: int, default: int, expected: int
) -> None:
    assert reserved_tokens(endpoint, payload, body_bytes, default) == expected
