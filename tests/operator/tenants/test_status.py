"""A ClientPolicy's status from its spec and its Secrets' labels and data key names."""

from __future__ import annotations

from typing import Any

import pytest

from hedge_core.api import ClientPolicy, SpecError
from hedge_operator.events import NORMAL, WARNING
from hedge_operator.tenants.status import (
    NOT_READABLE,
    SecretFacts,
    Seen,
    Verdict,
    compute_status,
    invalid,
    status_patch,
    transition_event,
    verdict,
)

NOW = "2026-12-02T15:00:00Z"
LATER = "2026-12-02T15:05:00Z"


def policy(*keys: dict[str, Any]) -> ClientPolicy:
    return ClientPolicy.from_body(
        {
            "metadata": {"name": "team-a", "namespace": "team-a", "generation": 3},
            "spec": {"keys": list(keys)},
        }
    )


def ref(secret: str, key: str | None = None) -> dict[str, Any]:
    return {"secretRef": {"name": secret, **({"key": key} if key else {})}}


def labelled(*keys: str) -> SecretFacts:
    return SecretFacts(labelled=True, data_keys=frozenset(keys))


CASES: list[tuple[str, list[dict[str, Any]], dict[str, Seen], Verdict]] = [
    (
        "every data key of two Secrets",
        [ref("a"), ref("b", "primary")],
        {"a": labelled("x", "y"), "b": labelled("primary", "other")},
        Verdict(True, "KeysFound", "3 keys in 2 Secrets", 3),
    ),
    (
        "one key",
        [ref("a", "x")],
        {"a": labelled("x", "y")},
        Verdict(True, "KeysFound", "1 key in 1 Secret", 1),
    ),
    (
        "a missing Secret",
        [ref("a"), ref("gone")],
        {"a": labelled("x"), "gone": None},
        Verdict(False, "SecretNotFound", "Secret 'gone' not found in namespace team-a"),
    ),
    (
        "a Secret the operator may not read",
        [ref("a")],
        {"a": NOT_READABLE},
        Verdict(
            False,
            "SecretNotReadable",
            "the operator may not read Secret 'a' in namespace team-a (list the namespace in "
            "the chart's rbac.secretNamespaces)",
        ),
    ),
    (
        "an unlabelled Secret",
        [ref("a")],
        {"a": SecretFacts(labelled=False, data_keys=frozenset({"x"}))},
        Verdict(
            False,
            "SecretNotLabelled",
            "Secret 'a' is not a client-key Secret: label it hedge.dev/client-key=true",
        ),
    ),
    (
        "a data key the Secret lacks",
        [ref("a", "x"), ref("a", "nope")],
        {"a": labelled("x")},
        Verdict(
            False,
            "KeyNotFound",
            "Secret 'a' has no data key 'nope' (spec.keys[1].secretRef.key)",
        ),
    ),
    (
        "an empty Secret",
        [ref("a")],
        {"a": labelled()},
        Verdict(False, "NoKeys", "the 1 Secret(s) named hold no data key", 0),
    ),
]


@pytest.mark.parametrize(
    ("keys", "secrets", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_verdict(keys: list[dict[str, Any]], secrets: dict[str, Seen], want: Verdict) -> None:
    assert verdict(policy(*keys), secrets) == want


def test_a_missing_secret_is_reported_before_an_unlabelled_one() -> None:
    found = verdict(
        policy(ref("a"), ref("b")), {"a": SecretFacts(False, frozenset({"x"})), "b": None}
    )
    assert found.reason == "SecretNotFound"


def test_status_of_a_first_check() -> None:
    found = verdict(policy(ref("a")), {"a": labelled("x", "y")})
    assert compute_status(None, 3, found, NOW) == {
        "observedGeneration": 3,
        "keys": 2,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "KeysFound",
                "message": "2 keys in 1 Secret",
                "lastTransitionTime": NOW,
                "observedGeneration": 3,
            }
        ],
    }


def test_transition_time_moves_only_when_ready_changes_and_usage_is_kept() -> None:
    ok = Verdict(True, "KeysFound", "1 key in 1 Secret", 1)
    usage = {"minuteTokens": 40, "dayTokens": 900}
    first = {**compute_status(None, 3, ok, NOW), "usage": usage}
    again = compute_status(first, 4, Verdict(True, "KeysFound", "2 keys in 1 Secret", 2), LATER)
    assert again["conditions"][0]["lastTransitionTime"] == NOW
    assert again["conditions"][0]["observedGeneration"] == 4
    assert again["usage"] == usage
    broken = compute_status(again, 4, Verdict(False, "SecretNotFound", "gone"), LATER)
    assert broken["conditions"][0]["lastTransitionTime"] == LATER
    assert "keys" not in broken
    assert status_patch(again, broken) == {"conditions": broken["conditions"], "keys": None}
    assert status_patch(broken, broken) == {}


def test_invalid_spec_says_the_spec_error() -> None:
    with pytest.raises(SpecError) as info:
        ClientPolicy.from_body({"metadata": {}, "spec": {"keys": []}})
    found = invalid(info.value)
    assert (found.ready, found.reason) == (False, "InvalidSpec")
    assert found.message == "spec.keys: must have at least 1 item(s)"


def test_an_event_on_each_change_of_reason_only() -> None:
    ok = Verdict(True, "KeysFound", "1 key in 1 Secret", 1)
    first = transition_event(None, ok)
    assert first is not None and (first.type, first.reason) == (NORMAL, "KeysFound")
    status = compute_status(None, 1, ok, NOW)
    assert transition_event(status, Verdict(True, "KeysFound", "2 keys in 1 Secret", 2)) is None
    lost = transition_event(status, Verdict(False, "SecretNotLabelled", "label it"))
    assert lost is not None and (lost.type, lost.reason) == (WARNING, "SecretNotLabelled")
