"""One bad-spec case per rule of the ClientPolicy CRD (CEL and schema alike): the table the
parser's unit tests (tests/core/test_clientpolicy.py) and the real API server
(tests/e2e/test_clientpolicy.py) both read. Each case changes the valid `BASE_SPEC` so that
it breaks one rule; `message` is what the parser says (the CEL rule's own message for CEL
rules), `path` the field the parser names."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hedge_core.api import API_VERSION, CLIENT_POLICY_KIND

BASE_NAME = "team-a"
BASE_SPEC: dict[str, Any] = {"keys": [{"secretRef": {"name": "team-a-keys"}}]}


def manifest(spec: Mapping[str, Any], name: str = BASE_NAME) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": CLIENT_POLICY_KIND,
        "metadata": {"name": name},
        "spec": copy.deepcopy(dict(spec)),
    }


def _keys(*entries: dict[str, Any]) -> list[dict[str, Any]]:
    return list(entries)


def _ref(secret: str, key: str | None = None, **more: Any) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret}
    if key is not None:
        ref["key"] = key
    return {"secretRef": ref, **more}


@dataclass(frozen=True)
class BadSpec:
    spec: dict[str, Any]  # the whole spec (not merged: lists replace)
    path: str  # the field path the parser names
    message: str  # what it says there
    cel: bool = False  # a CEL rule (the API server says the same message)

    @property
    def id(self) -> str:
        return f"{self.path}: {self.message}"


_BIG = {"tokensPerMinute": 6000, "requestsPerMinute": 600, "tokensPerDay": 10**6}

CASES: list[BadSpec] = [
    BadSpec({}, "spec.keys", "is required"),
    BadSpec({"keys": []}, "spec.keys", "must have at least 1 item(s)"),
    BadSpec(
        {"keys": [{"secretRef": {"name": f"s{i}"}} for i in range(65)]},
        "spec.keys",
        "must have at most 64 items",
    ),
    BadSpec({"keys": [{}]}, "spec.keys[0].secretRef", "is required"),
    BadSpec({"keys": [_ref("Team_A")]}, "spec.keys[0].secretRef.name", "does not match"),
    BadSpec({"keys": [_ref("s", "a/b")]}, "spec.keys[0].secretRef.key", "does not match"),
    BadSpec({"keys": [_ref("s", name="CI.Bot")]}, "spec.keys[0].name", "does not match"),
    BadSpec(
        {"keys": [_ref("s", name="x" * 64)]}, "spec.keys[0].name", "must be at most 63 characters"
    ),
    BadSpec(
        {"keys": [_ref("s", limits={"tokensPerMinute": 0})]},
        "spec.keys[0].limits.tokensPerMinute",
        "must be at least 1",
    ),
    BadSpec(
        {**BASE_SPEC, "limits": {"requestsPerMinute": "600"}},
        "spec.limits.requestsPerMinute",
        "must be an integer",
    ),
    BadSpec(
        {**BASE_SPEC, "priority": "gold"},
        "spec.priority",
        "'gold' is not one of critical, standard, sheddable",
    ),
    BadSpec({**BASE_SPEC, "weight": 0}, "spec.weight", "must be at least 1"),
    BadSpec({**BASE_SPEC, "weight": 1001}, "spec.weight", "must be at most 1000"),
    BadSpec(
        {**BASE_SPEC, "defaultMaxTokens": 1_000_001},
        "spec.defaultMaxTokens",
        "must be at most 1000000",
    ),
    BadSpec({**BASE_SPEC, "models": [{"model": "m"}]}, "spec.models[0].limits", "is required"),
    # CEL rules, one case each.
    BadSpec(
        {"keys": _keys(_ref("a", name="ci"), _ref("b", name="ci"))},
        "spec",
        "keys[].name must be unique",
        cel=True,
    ),
    BadSpec(
        {"keys": _keys(_ref("a", "k"), _ref("a", "k"))},
        "spec",
        "keys[].secretRef: each Secret data key is bound once (a secretRef without key "
        "binds every data key of its Secret)",
        cel=True,
    ),
    BadSpec(
        {**BASE_SPEC, "models": [{"model": "m", "limits": {}}, {"model": "m", "limits": {}}]},
        "spec",
        "models[].model must be unique",
        cel=True,
    ),
    BadSpec(
        {**BASE_SPEC, "fallback": {"allowed": False, "tokensPerDay": 5}},
        "spec.fallback",
        "fallback.tokensPerMinute and fallback.tokensPerDay apply only when "
        "fallback.allowed is true",
        cel=True,
    ),
]
for _json, _value in (
    ("requestsPerMinute", 601),
    ("tokensPerMinute", 6001),
    ("tokensPerDay", 10**6 + 1),
    ("concurrentRequests", 9),
):
    _limits = {**_BIG, "concurrentRequests": 8}
    CASES.append(
        BadSpec(
            {"keys": [_ref("s", limits={_json: _value})], "limits": _limits},
            "spec",
            f"keys[].limits.{_json} must not exceed limits.{_json}",
            cel=True,
        )
    )
    CASES.append(
        BadSpec(
            {**BASE_SPEC, "limits": _limits, "models": [{"model": "m", "limits": {_json: _value}}]},
            "spec",
            f"models[].limits.{_json} must not exceed limits.{_json}",
            cel=True,
        )
    )

#: A spec using every field, and what it parses to (see the unit test).
FULL_SPEC: dict[str, Any] = {
    "keys": [
        {
            "secretRef": {"name": "team-a-keys", "key": "primary"},
            "name": "ci-bot",
            "limits": {"requestsPerMinute": 60},
        },
        {"secretRef": {"name": "team-a-keys", "key": "secondary"}},
        {"secretRef": {"name": "team-a-more-keys"}},
    ],
    "limits": {
        "requestsPerMinute": 600,
        "tokensPerMinute": 6000,
        "tokensPerDay": 1_000_000,
        "concurrentRequests": 8,
    },
    "models": [{"model": "llama-3-8b", "limits": {"tokensPerMinute": 3000}}],
    "priority": "critical",
    "weight": 3,
    "defaultMaxTokens": 256,
    "fallback": {"allowed": True, "tokensPerMinute": 1000, "tokensPerDay": 50_000},
}
