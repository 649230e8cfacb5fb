"""Does I/O: checks one ClientPolicy — reads the Secrets it names (labels and data key
names: kube.py drops the values before they leave it), computes the status (status.py), and
posts an Event when Ready's reason changes — and reads its usage from the gateways' scrape
into status.usage (usage.py). The caller writes the returned status patch (the kopf
handlers, through kopf's `patch.status`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from hedge_core.api import CLIENT_POLICY_KIND, ClientPolicy, SpecError
from hedge_core.clock import utc_now
from hedge_core.kube import TRANSIENT, Forbidden
from hedge_operator.dataplane.signals import TenantTotals
from hedge_operator.errors import RetryableError
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
from hedge_operator.tenants.usage import UsageWindows, tenant_label

log = logging.getLogger(__name__)


class TenantAPI(Protocol):
    async def client_key_secret(self, namespace: str, name: str) -> SecretFacts | None: ...

    async def post_event(
        self, involved: Mapping[str, Any], type_: str, reason: str, message: str, *, kind: str
    ) -> None: ...


class UsageSource(Protocol):
    async def tenant_totals(self) -> Mapping[str, TenantTotals] | None:
        """Every tenant's counters summed over the gateways (None: none could be read)."""
        ...


async def read_secrets(kube: TenantAPI, policy: ClientPolicy) -> dict[str, Seen]:
    """Each Secret the policy names, read at once; RetryableError when the API server had
    trouble (the next check tries again)."""
    names = policy.secret_names
    results = await asyncio.gather(
        *(kube.client_key_secret(policy.namespace, n) for n in names), return_exceptions=True
    )
    out: dict[str, Seen] = {}
    for name, result in zip(names, results, strict=True):
        if isinstance(result, Forbidden):
            out[name] = NOT_READABLE
        elif isinstance(result, TRANSIENT):
            raise RetryableError(f"reading Secret {name}: {type(result).__name__}") from result
        elif isinstance(result, BaseException):
            raise result
        else:
            out[name] = result
    return out


async def judge(kube: TenantAPI, body: Mapping[str, Any]) -> Verdict:
    try:
        policy = ClientPolicy.from_body(body)
    except SpecError as e:
        return invalid(e)
    return verdict(policy, await read_secrets(kube, policy))


async def check(kube: TenantAPI, body: Mapping[str, Any], now: str | None = None) -> dict[str, Any]:
    """The status patch for `body` ({} when its status is current); posts the Event of a
    change of reason first."""
    meta = body.get("metadata") or {}
    old = body.get("status")
    found = await judge(kube, body)
    generation = int(meta.get("generation") or 0)
    new = compute_status(old, generation, found, now or utc_now())
    event = transition_event(old, found)
    if event is not None:
        try:
            await kube.post_event(
                meta, event.type, event.reason, event.message, kind=CLIENT_POLICY_KIND
            )
        except TRANSIENT as e:
            log.warning("Event %s for %s/%s: %s", event.reason, meta.get("namespace"),
                        meta.get("name"), e)  # fmt: skip
    return status_patch(old, new)


async def usage(
    source: UsageSource, windows: UsageWindows, body: Mapping[str, Any], now: float
) -> dict[str, Any]:
    """The status patch of status.usage ({} when it need not be written)."""
    meta = body.get("metadata") or {}
    totals = await source.tenant_totals()
    if totals is None:
        return {}
    label = tenant_label(str(meta.get("namespace", "")), str(meta.get("name", "")))
    reported = (body.get("status") or {}).get("usage")
    new = windows.step(totals.get(label, TenantTotals()), reported, now)
    return {} if new is None else {"usage": new}
