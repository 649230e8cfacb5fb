"""The ClientPolicy API: the parser over a table of good and bad specs, and the CRD
generated from the same dataclasses (drift-tested against crds/)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hedge_core.api import (
    CRD_FILES,
    ClientKeyRef,
    ClientPolicy,
    FallbackAllowance,
    Limits,
    ModelLimits,
    Priority,
    SpecError,
    client_policy_crd,
    key_name,
)
from hedge_core.contracts import CLIENT_KEY_LABEL, CLIENT_KEY_SELECTOR, PROVIDER_KEY_LABEL
from tests.core.clientpolicy_cases import BASE_SPEC, CASES, FULL_SPEC, BadSpec, manifest

ROOT = Path(__file__).resolve().parents[2]


def policy(spec: dict[str, Any], **meta: Any) -> ClientPolicy:
    body = manifest(spec)
    body["metadata"].update({"namespace": "team-a", "generation": 4, **meta})
    return ClientPolicy.from_body(body)


def test_a_full_spec_parses_to_the_reader_dataclasses() -> None:
    assert policy(FULL_SPEC) == ClientPolicy(
        namespace="team-a",
        name="team-a",
        generation=4,
        keys=(
            ClientKeyRef("team-a-keys", "primary", "ci-bot", Limits(requests_per_minute=60)),
            ClientKeyRef("team-a-keys", "secondary"),
            ClientKeyRef("team-a-more-keys"),
        ),
        limits=Limits(
            requests_per_minute=600,
            tokens_per_minute=6000,
            tokens_per_day=1_000_000,
            concurrent_requests=8,
        ),
        models=(ModelLimits("llama-3-8b", Limits(tokens_per_minute=3000)),),
        priority=Priority.CRITICAL,
        weight=3,
        default_max_tokens=256,
        fallback=FallbackAllowance(True, 1000, 50_000),
    )


def test_the_smallest_spec_gets_the_defaults() -> None:
    p = policy(BASE_SPEC)
    assert p.keys == (ClientKeyRef("team-a-keys"),)
    assert p.limits == Limits() and p.models == ()
    assert p.priority is Priority.STANDARD and p.priority == "standard"
    assert (p.weight, p.default_max_tokens) == (1, 512)
    assert p.fallback == FallbackAllowance(allowed=True)
    assert p.secret_names == ("team-a-keys",)


def test_the_reader_dataclasses_are_frozen_and_slotted() -> None:
    p = policy(FULL_SPEC)
    for obj in (p, p.keys[0], p.limits, p.models[0], p.fallback):
        assert not hasattr(obj, "__dict__"), type(obj)
        field = dataclasses.fields(obj)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, field, None)


def test_secret_names_are_each_secret_once_in_spec_order() -> None:
    assert policy(FULL_SPEC).secret_names == ("team-a-keys", "team-a-more-keys")


def test_key_names() -> None:
    assert key_name(ClientKeyRef("team-a-keys", "primary", "ci-bot"), "primary") == "ci-bot"
    assert key_name(ClientKeyRef("team-a-keys"), "primary") == "team-a-keys.primary"


def test_a_secret_bound_whole_and_by_key_is_refused() -> None:
    spec = {"keys": [{"secretRef": {"name": "s"}}, {"secretRef": {"name": "s", "key": "k"}}]}
    with pytest.raises(SpecError, match="each Secret data key is bound once"):
        policy(spec)
    # different keys of one Secret are fine
    policy(
        {
            "keys": [
                {"secretRef": {"name": "s", "key": "a"}},
                {"secretRef": {"name": "s", "key": "b"}},
            ]
        }
    )


def test_limits_equal_to_the_tenant_wide_ones_are_fine() -> None:
    limits = {"tokensPerMinute": 100}
    policy({"keys": [{"secretRef": {"name": "s"}, "limits": limits}], "limits": limits})
    # without a tenant-wide ceiling, a per-key one is unbounded above
    policy({"keys": [{"secretRef": {"name": "s"}, "limits": {"tokensPerMinute": 10**9}}]})


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_each_bad_spec_is_refused_naming_its_field(case: BadSpec) -> None:
    with pytest.raises(SpecError) as info:
        policy(case.spec)
    assert any(path == case.path and case.message in m for path, m in info.value.problems), (
        info.value.problems
    )
    assert f"{case.path}: " in str(info.value)


def test_a_non_integer_generation_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match=r"metadata\.generation"):
        policy(BASE_SPEC, generation="two")


# ---------------------------------------------------------------------------- the CRD


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{name}")
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")


def root_schema() -> dict[str, Any]:
    schema: dict[str, Any] = client_policy_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize("filename", sorted(CRD_FILES))
def test_committed_crds_match_the_api(filename: str) -> None:
    assert (ROOT / "crds" / filename).read_text() == CRD_FILES[filename](), (
        "crds/ drifted from hedge_core.api: run scripts/generate-crds"
    )


def test_every_cel_rule_has_a_case() -> None:
    rules = {
        rule["message"]
        for _, schema in walk(root_schema())
        for rule in schema.get("x-kubernetes-validations", ())
    }
    cases = {c.message for c in CASES if c.cel}
    assert rules == cases


def test_schema_is_structural_and_described() -> None:
    for path, schema in walk(root_schema()):
        assert "x-kubernetes-preserve-unknown-fields" not in schema, path
        assert schema.get("type") in {"object", "array", "string", "integer", "boolean"}, path
        if schema.get("type") == "array":
            assert "maxItems" in schema, f"{path}: CEL cost estimation needs maxItems"
        for name, sub in (schema.get("properties") or {}).items():
            if path or name != "metadata":
                assert str(sub.get("description", "")).strip(), f"{path}.{name}"


def test_names_subresources_and_printer_columns() -> None:
    spec = client_policy_crd()["spec"]
    assert client_policy_crd()["metadata"]["name"] == "clientpolicies.hedge.dev"
    assert (spec["group"], spec["scope"]) == ("hedge.dev", "Namespaced")
    names = spec["names"]
    assert (names["kind"], names["plural"], names["singular"]) == (
        "ClientPolicy",
        "clientpolicies",
        "clientpolicy",
    )
    assert names["shortNames"] == ["cpol"] and names["categories"] == ["hedge"]
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Priority", "Weight", "Keys", "Ready", "Age"]
    keys = next(c for c in version["additionalPrinterColumns"] if c["name"] == "Keys")
    assert keys["jsonPath"] == ".status.keys"


def test_status_has_conditions_keys_and_usage() -> None:
    status = root_schema()["properties"]["status"]["properties"]
    assert set(status) == {"observedGeneration", "conditions", "keys", "usage"}
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    assert set(status["usage"]["properties"]) >= {"minuteRequests", "minuteTokens", "dayTokens"}


def test_crd_defaults_are_what_the_parser_fills_in() -> None:
    spec = root_schema()["properties"]["spec"]["properties"]
    p = policy(BASE_SPEC)
    assert spec["priority"]["default"] == p.priority.value
    assert spec["weight"]["default"] == p.weight
    assert spec["defaultMaxTokens"]["default"] == p.default_max_tokens
    assert spec["fallback"]["default"] == {"allowed": p.fallback.allowed}
    assert spec["priority"]["enum"] == [p.value for p in Priority]


def test_the_client_key_label_is_its_own() -> None:
    assert CLIENT_KEY_LABEL == "hedge.dev/client-key" != PROVIDER_KEY_LABEL
    assert CLIENT_KEY_SELECTOR == "hedge.dev/client-key=true"


def test_the_example_parses() -> None:
    import yaml

    secret, body = yaml.safe_load_all(
        (ROOT / "examples" / "tenants" / "clientpolicy.yaml").read_text()
    )
    assert secret["metadata"]["labels"] == {CLIENT_KEY_LABEL: "true"}
    p = ClientPolicy.from_body(body)
    assert [key_name(k, k.key or "") for k in p.keys] == ["team-a-keys.primary", "ci-bot"]
    assert {k.key for k in p.keys} == set(secret["stringData"])
