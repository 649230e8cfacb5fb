"""The ClientPolicy check over an in-memory API (the driver's `TenantAPI` seam): what it
reads, the Events it posts, and that no key value can reach its status or Events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import pytest

from hedge_core.kube import Forbidden, ServerError
from hedge_operator.errors import RetryableError
from hedge_operator.tenants import driver
from hedge_operator.tenants.status import SecretFacts

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
