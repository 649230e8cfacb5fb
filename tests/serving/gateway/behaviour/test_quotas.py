"""A ClientPolicy's limits at the gateway, through real sockets and the openai SDK: the
429s and their headers, settlement on the usage the engine reports, concurrency slots,
a tenant that may not spill, and the per-tenant usage series (docs/tenants.md)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from hedge_core.api import ClientPolicy
from hedge_serving.gateway.admission import Quotas
from hedge_serving.gateway.app import RunningGateway
from hedge_serving.gateway.auth import ClientAuth
from hedge_serving.gateway.quota.store import LocalStore
from hedge_serving.gateway.routing import ProviderSpec, ProviderType, RouteSpec, ServingOptions
from hedge_serving.gateway.tenants import policy_keys, secret_digests
from tests.serving.gateway_stubs.engines import Engine
from tests.serving.gateway_stubs.harness import Clients, start_test_gateway

MODEL = "llama"
MESSAGES: Any = [{"role": "user", "content": "hello there"}]
KEY = "sk-team-a-ci"


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    made = Clients()
    yield made
    await made.close()


def auth_for(**spec: Any) -> ClientAuth:
    body = {
        "metadata": {"name": "default", "namespace": "team-a", "generation": 1},
        "spec": {"keys": [{"secretRef": {"name": "keys", "key": "ci"}, "name": "ci"}], **spec},
    }
    auth = ClientAuth(["admin-key"], required=True)
    policy = ClientPolicy.from_body(body)
    auth.set_policy_keys(policy_keys(policy, {"keys": secret_digests({"ci": KEY})}))
    return auth


async def gateway(
    engine_url: str | None,
    auth: ClientAuth,
    fallback: tuple[ProviderSpec, ...] = (),
    hold_s: float = 0.0,
) -> RunningGateway:
    spec = RouteSpec(
        MODEL,
        (engine_url,) if engine_url else (),
        fallback,
        ServingOptions(request_timeout_s=30, hold_s=hold_s),
        owner="team-a",
        deployment=("team-a", "llama"),
    )
    gw = await start_test_gateway([spec], auth=auth)
    gw.gateway.proxy.quotas = Quotas(LocalStore())
    return gw


async def metrics(gw: RunningGateway) -> str:
    url = f"http://127.0.0.1:{gw.admin_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        return await r.text()


async def test_over_requests_per_minute_a_429_with_openai_headers(clients: Clients) -> None:
    engine = await Engine("engine", MODEL).start()
    gw = await gateway(engine.url, auth_for(limits={"requestsPerMinute": 3}))
    client = clients(gw, KEY)
    try:
        if time.time() % 60 > 55:  # keep the three requests in one minute window
            await asyncio.sleep(60 - time.time() % 60 + 0.1)
        remaining = []
        for _ in range(3):
            raw = await client.chat.completions.with_raw_response.create(
                model=MODEL, messages=MESSAGES, max_tokens=4
            )
            assert raw.headers["x-ratelimit-limit-requests"] == "3"
            remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
            assert raw.headers["x-ratelimit-reset-requests"]
        assert remaining == [2, 1, 0]
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
        response = info.value.response
        assert 1 <= int(response.headers["retry-after"]) <= 60
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
        error = response.json()["error"]
        assert error["type"] == "rate_limit_error"
        assert error["code"] == "rate_limit_exceeded"
        assert "team-a/default" in error["message"] and "requestsPerMinute" in error["message"]
        # Other keys are not counted against team-a's policy.
        admin = clients(gw, "admin-key")
        await admin.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
        text = await metrics(gw)
        labels = 'key="ci",model="llama"'  # the exposition sorts labels by name
        tenant = 'tenant="team-a/default"'
        assert f"hedge_gateway_tenant_rate_limited_total{{{labels},{tenant}}} 1.0" in text
        requests = "hedge_gateway_tenant_requests_total"
        assert f'{requests}{{{labels},served_by="self-hosted",{tenant}}} 3.0' in text
        assert f'{requests}{{{labels},served_by="gateway",{tenant}}} 1.0' in text
        assert KEY not in text
    finally:
        await gw.stop()
        await engine.stop()


async def test_tokens_are_reserved_at_admission_and_settled_on_reported_usage(
    clients: Clients,
) -> None:
    engine = await Engine("engine", MODEL).start()
    gw = await gateway(engine.url, auth_for(limits={"tokensPerMinute": 10_000}))
    client = clients(gw, KEY)
    try:
        if time.time() % 60 > 50:
            await asyncio.sleep(60 - time.time() % 60 + 0.1)
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, max_tokens=2000
        )
        reply = raw.parse()
        assert reply.usage is not None
        # At admission the whole reservation (prompt estimate + 2000) was taken.
        assert int(raw.headers["x-ratelimit-remaining-tokens"]) <= 10_000 - 2000
        used = reply.usage.total_tokens

        async def remaining() -> int:
            probe = await client.chat.completions.with_raw_response.create(
                model=MODEL, messages=MESSAGES, max_tokens=1
            )
            return int(probe.headers["x-ratelimit-remaining-tokens"])

        # Settled off the request path: the next admission sees what was used, not reserved.
        deadline = time.monotonic() + 5
        left = await remaining()
        while left < 10_000 - used - 2000 and time.monotonic() < deadline:
            left = await remaining()
        assert left > 10_000 - 2000, "the first request's unused reservation came back"
        # Streams are counted too (the gateway asks the engine for the usage chunk and
        # takes it out again: the client asked for none).
        stream = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=8, stream=True
        )
        chunks = [c async for c in stream]
        assert chunks and all(c.usage is None for c in chunks)
        assert engine.received[-1].body["stream_options"] == {"include_usage": True}
        text = await metrics(gw)
        assert (
            'hedge_gateway_tenant_tokens_total{key="ci",model="llama",served_by="self-hosted",tenant="team-a/default"}'
            in text
        )
    finally:
        await gw.stop()
        await engine.stop()


async def test_a_concurrency_slot_frees_when_a_request_ends_and_the_sdk_retries(
    clients: Clients,
) -> None:
    engine = await Engine("engine", MODEL).start()
    engine.faults.chunk_delay_s = 0.2
    gw = await gateway(engine.url, auth_for(limits={"concurrentRequests": 1}))
    try:
        slow = asyncio.create_task(
            clients(gw, KEY).chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=6, stream=True
            )
        )
        deadline = time.monotonic() + 5
        while engine.in_flight == 0:
            assert time.monotonic() < deadline, "the first request never reached the engine"
            await asyncio.sleep(0.01)
        with pytest.raises(openai.RateLimitError) as info:
            await clients(gw, KEY).chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=4
            )
        assert "concurrentRequests" in info.value.response.json()["error"]["message"]
        # The SDK's own retries (Retry-After) get through once the slot is free.
        retrying = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=4)
        try:
            second = asyncio.create_task(
                retrying.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
            )
            stream = await slow
            _ = [c async for c in stream]
            reply = await asyncio.wait_for(second, 30)
            assert reply.choices[0].message.content
        finally:
            await retrying.close()
    finally:
        await gw.stop()
        await engine.stop()


async def test_a_tenant_not_allowed_to_spill_gets_a_429_never_the_provider(
    clients: Clients,
) -> None:
    provider = await Engine("provider", MODEL).start()  # an OpenAI-compatible endpoint
    fallback = (
        ProviderSpec(
            type=ProviderType.OPENAI_COMPATIBLE, model=MODEL, base_url=provider.url + "/v1"
        ),
    )
    # Scaled to zero with a hold time: the tenant's request waits for a pod like any other,
    # then gets a 429 (its SDK backs off), never the provider the model falls back to.
    gw = await gateway(None, auth_for(fallback={"allowed": False}), fallback, hold_s=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(openai.RateLimitError) as info:
            await clients(gw, KEY).chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=4
            )
        assert time.monotonic() - started >= 0.5  # held first
        error = info.value.response.json()["error"]
        assert error["code"] == "fallback_not_allowed"
        assert "does not allow the fallback" in error["message"]
        assert "became ready within 0.5s" in error["message"]
        assert int(info.value.response.headers["retry-after"]) >= 1
        assert provider.received == []
        # The admin key (no policy) still spills.
        reply = await clients(gw, "admin-key").chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=4
        )
        assert reply.system_fingerprint == "provider"
    finally:
        await gw.stop()
        await provider.stop()


async def test_a_request_bigger_than_the_whole_limit_is_told_waiting_cannot_help(
    clients: Clients,
) -> None:
    engine = await Engine("engine", MODEL).start()
    gw = await gateway(engine.url, auth_for(limits={"tokensPerMinute": 1000}))
    try:
        with pytest.raises(openai.RateLimitError) as info:
            await clients(gw, KEY).chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=5000
            )
        response = info.value.response
        assert "retry-after" not in response.headers  # the SDK must not wait and retry
        assert response.headers["x-should-retry"] == "false"
        assert "can never fit" in response.json()["error"]["message"]
        assert engine.received == []
        # A request that fits still passes.
        await clients(gw, KEY).chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=100
        )
    finally:
        await gw.stop()
        await engine.stop()
