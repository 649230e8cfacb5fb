"""The ClientPolicy check over an in-memory API (the driver's `TenantAPI` seam): what it
reads, the Events it posts, and that no key value can reach its status or Events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import pytest

from hedge_core.kube import Forbidden, ServerError
from hedge_operator.dataplane.signals import Counters, TenantTotals, tenant_totals
from hedge_operator.errors import RetryableError
from hedge_operator.tenants import driver
from hedge_operator.tenants.status import SecretFacts
from hedge_operator.tenants.usage import UsageWindows

SECRET_VALUE = "sk-tenant-a-0123456789"


class MemoryAPI:
    """Secrets as the API server returns them, reduced the way kube.Kube reduces them."""

    def __init__(self, secrets: dict[str, dict[str, Any] | Exception]) -> None:
        self.secrets = secrets
        self.events: list[dict[str, Any]] = []
        self.reads: list[tuple[str, str]] = []

    async def client_key_secret(self, namespace: str, name: str) -> SecretFacts | None:
        self.reads.append((namespace, name))
        found = self.secrets.get(name)
        if isinstance(found, Exception):
            raise found
        if found is None:
            return None
        labels = found.get("metadata", {}).get("labels", {})
        return SecretFacts(
            labelled=labels.get("hedge.dev/client-key") == "true",
            data_keys=frozenset(found.get("data", {})),
        )

    async def post_event(
        self, involved: Mapping[str, Any], type_: str, reason: str, message: str, *, kind: str
    ) -> None:
        self.events.append(
            {
                "name": involved["name"],
                "type": type_,
                "reason": reason,
                "message": message,
                "kind": kind,
            }
        )


def body(spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "metadata": {"name": "team-a", "namespace": "team-a", "generation": 2},
        "spec": spec,
    }
    if status is not None:
        out["status"] = status
    return out


def secret(*, labelled: bool = True, **data: str) -> dict[str, Any]:
    labels = {"hedge.dev/client-key": "true"} if labelled else {}
    return {"metadata": {"labels": labels}, "data": data}


def run(api: MemoryAPI, obj: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(driver.check(api, obj, now="2026-12-02T15:00:00Z"))


SPEC = {"keys": [{"secretRef": {"name": "keys"}}, {"secretRef": {"name": "more", "key": "ci"}}]}


def test_ready_with_keys_found_and_one_event() -> None:
    api = MemoryAPI({"keys": secret(a=SECRET_VALUE, b=SECRET_VALUE), "more": secret(ci="x")})
    patch = run(api, body(SPEC))
    assert patch["keys"] == 3
    (ready,) = patch["conditions"]
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "True",
        "KeysFound",
        "3 keys in 2 Secrets",
    )
    assert sorted(api.reads) == [("team-a", "keys"), ("team-a", "more")]
    assert [(e["kind"], e["type"], e["reason"]) for e in api.events] == [
        ("ClientPolicy", "Normal", "KeysFound")
    ]
    # Checked again with that status in place: nothing to write, no second Event.
    assert run(api, body(SPEC, patch)) == {}
    assert len(api.events) == 1
    assert SECRET_VALUE not in json.dumps([patch, api.events])


def test_unlabelled_and_forbidden_secrets() -> None:
    api = MemoryAPI({"keys": secret(labelled=False, a=SECRET_VALUE), "more": secret(ci="x")})
    patch = run(api, body(SPEC))
    assert patch["conditions"][0]["reason"] == "SecretNotLabelled"
    assert "label it hedge.dev/client-key=true" in patch["conditions"][0]["message"]
    assert api.events[-1]["type"] == "Warning"
    api = MemoryAPI({"keys": Forbidden(403, "Forbidden", "no"), "more": secret(ci="x")})
    assert run(api, body(SPEC))["conditions"][0]["reason"] == "SecretNotReadable"


def test_an_invalid_spec_reads_no_secret() -> None:
    api = MemoryAPI({})
    patch = run(api, body({"keys": [{"secretRef": {"name": "Bad_Name"}}]}))
    assert patch["conditions"][0]["reason"] == "InvalidSpec"
    assert "spec.keys[0].secretRef.name" in patch["conditions"][0]["message"]
    assert api.reads == []


def test_api_trouble_is_retryable_and_writes_nothing() -> None:
    api = MemoryAPI({"keys": ServerError(503, "ServiceUnavailable", "busy"), "more": secret()})
    with pytest.raises(RetryableError):
        run(api, body(SPEC))
    assert api.events == []


# ------------------------------------------------------------------------------ usage

MINUTE0 = 1_780_000_020.0  # 2026-05-28T20:27:00Z


class Gateways:
    """The `UsageSource` seam: the tenants' counters as the shared scrape sums them."""

    def __init__(self) -> None:
        self.counters: Counters | None = Counters()
        self.reads = 0

    def serve(self, gateway: str, **tokens: int) -> None:
        """What one gateway's page says now, per tenant `<ns>_<policy>` (cumulative)."""
        assert self.counters is not None
        self.counters.update(
            gateway,
            {
                key: value
                for tenant, n in tokens.items()
                for key, value in (
                    (("tenant_tokens", tenant.replace("_", "/"), "ci", "m", "self-hosted"), n),
                    (("tenant_requests", tenant.replace("_", "/"), "ci", "m", "self-hosted"), 1),
                )
            },
        )

    async def tenant_totals(self) -> Mapping[str, TenantTotals] | None:
        self.reads += 1
        return None if self.counters is None else tenant_totals(self.counters)


def usage(gateways: Gateways, windows: UsageWindows, obj: dict[str, Any], now: float) -> Any:
    return asyncio.run(driver.usage(gateways, windows, obj, now))


def test_usage_patch_per_policy_only_when_changed() -> None:
    gateways, windows = Gateways(), UsageWindows.new()
    obj = body(SPEC)
    first = usage(gateways, windows, obj, MINUTE0 + 1)
    assert first == {
        "usage": {
            "time": "2026-05-28T20:27:01Z",
            "minuteStart": "2026-05-28T20:27:00Z",
            "minuteRequests": 0,
            "minuteTokens": 0,
            "dayStart": "2026-05-28T00:00:00Z",
            "dayTokens": 0,
        }
    }
    obj["status"] = first
    # Another tenant's traffic is not this one's.
    gateways.serve("gw-1", team_b=500)
    assert usage(gateways, windows, obj, MINUTE0 + 11) == {}
    gateways.serve("gw-1", team_b=500, **{"team-a_team-a": 40})
    gateways.serve("gw-2", **{"team-a_team-a": 2})
    patch = usage(gateways, windows, obj, MINUTE0 + 21)
    assert (patch["usage"]["minuteRequests"], patch["usage"]["minuteTokens"]) == (2, 42)
    assert patch["usage"]["time"] == "2026-05-28T20:27:21Z"
    obj["status"] = patch
    # No gateway could be read: status stays as it is.
    gateways.counters = None
    assert usage(gateways, windows, obj, MINUTE0 + 31) == {}
    assert gateways.reads == 4


def test_usage_of_a_restarted_operator_continues_from_status() -> None:
    gateways = Gateways()
    gateways.serve("gw-1", **{"team-a_team-a": 1000})  # everything since the gateway began
    status = {
        "usage": {
            "minuteStart": "2026-05-28T20:27:00Z",
            "minuteRequests": 1,
            "minuteTokens": 100,
            "dayStart": "2026-05-28T00:00:00Z",
            "dayTokens": 700,
        }
    }
    windows = UsageWindows.new()
    assert usage(gateways, windows, body(SPEC, status), MINUTE0 + 30) == {}
    gateways.serve("gw-1", **{"team-a_team-a": 1010})
    patch = usage(gateways, windows, body(SPEC, status), MINUTE0 + 40)
    assert (patch["usage"]["minuteTokens"], patch["usage"]["dayTokens"]) == (110, 710)
