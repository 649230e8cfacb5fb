"""Admission of a tenant's request against its ClientPolicy's limits (docs/tenants.md).

A request whose key belongs to a ClientPolicy with limits reserves, before anything is
sent anywhere, one request and its largest possible token count (`reserved_tokens`: the
prompt estimated from the body, plus `max_tokens` x `n`, or the policy's
`defaultMaxTokens` when it names no maximum) against every limit set it counts against
(the tenant's, its key's, the tenant's for that model), all or nothing, in the quota store
shared by the gateway replicas (`hedge_serving.gateway.quota`). Refused: an OpenAI-shaped
429 (`RateLimited`) with `Retry-After` and `x-ratelimit-*` headers. Admitted: the same
headers go on the answer, and when the request ends its reservation is settled on the
tokens it used (the engine's or provider's reported usage, else an estimate of what was
relayed), off the request path.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hedge_serving.gateway.endpoints import Endpoint
from hedge_serving.gateway.errors import RateLimited
from hedge_serving.gateway.fallback_limits import CHOICE_FIELDS, OUTPUT_FIELDS, prompts
from hedge_serving.gateway.quota.limits import Decision, LimitSet, ratelimit_headers
from hedge_serving.gateway.tenants import Identity, Tenant
from hedge_serving.gateway.usage import estimate_prompt_tokens

if TYPE_CHECKING:
    from hedge_serving.gateway.quota.store import QuotaStore

log = logging.getLogger("hedge.gateway.admission")


def _positive(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    return None


def reserved_tokens(
    endpoint: Endpoint, payload: dict[str, Any], body_bytes: int, default_max_tokens: int
) -> int:
    """The most tokens a request may use: its prompt (estimated from the body) plus its
    output limit (the largest it names, else `default_max_tokens`) for each choice and
    prompt. Invalid values count as absent (the engine refuses them)."""
    output = max(
        (v for key in OUTPUT_FIELDS.get(endpoint, ()) if (v := _positive(payload.get(key)))),
        default=None,
    )
    if output is None:
        output = default_max_tokens if OUTPUT_FIELDS.get(endpoint) else 0
    choices = max(
        (v for key in CHOICE_FIELDS.get(endpoint, ()) if (v := _positive(payload.get(key)))),
        default=1,
    )
    return estimate_prompt_tokens(body_bytes) + output * choices * prompts(endpoint, payload)


def refusal_message(model: str, tenant: str, decision: Decision) -> str:
    what = f"Rate limit reached for {model} under ClientPolicy {tenant} on " + (
        decision.limiting or "its limits"
    )
    if not math.isfinite(decision.retry_after):
        return f"{what}. Lower max_tokens or n: this request can never fit."
    return f"{what}. Please try again in {max(decision.retry_after, 0.001):.3g}s."


@dataclass(slots=True)
class Ticket:
    """An admitted request's reservation, to settle when it ends."""

    id: str
    limits: Sequence[LimitSet]
    tokens: int
    headers: dict[str, str]


class Quotas:
    """Admission and settlement against the quota store (one per gateway)."""

    def __init__(self, store: QuotaStore) -> None:
        self.store = store
        self._settling: set[asyncio.Task[None]] = set()

    async def admit(
        self,
        identity: Identity,
        model: str,
        endpoint: Endpoint,
        payload: dict[str, Any],
        body_bytes: int,
    ) -> Ticket | None:
        """The request's ticket (None: no limit applies), or `RateLimited`."""
        tenant = identity.tenant
        if tenant is None:
            return None
        limits = identity.limits_for(model)
        if not limits:
            return None
        tokens = reserved_tokens(endpoint, payload, body_bytes, tenant.default_max_tokens)
        ticket_id = uuid.uuid4().hex
        decision = await self.store.reserve(ticket_id, limits, tokens, time.time())
        headers = ratelimit_headers(decision)
        if not decision.admitted:
            # No Retry-After for a request bigger than the whole limit: waiting cannot help.
            if not math.isfinite(decision.retry_after):
                headers["x-should-retry"] = "false"  # the openai SDKs' own signal
            elif "retry-after" not in headers:
                headers["retry-after"] = str(max(1, math.ceil(decision.retry_after)))
            raise RateLimited(refusal_message(model, tenant.label, decision), headers=headers)
        return Ticket(ticket_id, limits, tokens, headers)

    async def admit_fallback(self, tenant: Tenant, model: str, tokens: int) -> Ticket:
        """A spill to the paid fallback against the tenant's own fallback ceiling (what
        the request may spend there), or `RateLimited`."""
        assert tenant.fallback is not None
        limits = [tenant.fallback]
        ticket_id = uuid.uuid4().hex
        decision = await self.store.reserve(ticket_id, limits, tokens, time.time())
        if not decision.admitted:
            headers: dict[str, str] = {}
            if math.isfinite(decision.retry_after):
                headers["retry-after"] = str(max(1, math.ceil(decision.retry_after)))
            raise RateLimited(
                refusal_message(model, tenant.label, decision)
                + " (the fallback providers' share of this ClientPolicy)",
                code="fallback_quota_exceeded",
                headers=headers,
            )
        return Ticket(ticket_id, limits, tokens, {})

    def settle(self, ticket: Ticket, used: int | None) -> None:
        """Settle in the background: the client has its answer already. `used` None: not
        known, the reservation stands."""
        actual = ticket.tokens if used is None else max(0, used)
        task = asyncio.get_running_loop().create_task(self._settle(ticket, actual))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, ticket: Ticket, actual: int) -> None:
        try:
            await self.store.settle(ticket.id, ticket.limits, ticket.tokens, actual, time.time())
        except Exception:
            log.exception("could not settle a quota reservation")

    async def close(self) -> None:
        """Let settlements in flight finish (a stopping gateway), then close the store."""
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        close = getattr(self.store, "close", None)
        if close is not None:
            await close()


__all__ = ["Quotas", "Ticket", "refusal_message", "reserved_tokens"]
