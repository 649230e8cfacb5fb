"""Scale from zero without a fallback: the gateway holds the request until the routing table
shows a ready backend (woken by the update, no polling), up to the route's hold time, then
answers an OpenAI-shaped 503 with Retry-After."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest

from hedge_operator.dataplane.signals import parse_gateway
from hedge_serving.gateway.app import RunningGateway
from hedge_serving.gateway.config import RoutesFileError, parse_routes
from hedge_serving.gateway.routing import (
    ProviderSpec,
    ProviderType,
    RouteSpec,
    ServingOptions,
)
from tests.serving.gateway_stubs.engines import Engine
from tests.serving.gateway_stubs.harness import Clients, start_test_gateway, wait_for

MODEL = "llama-3-8b"
KEY = ("team-a", "llama")
MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    made = Clients()
    yield made
    await made.close()


def cold(hold_s: float, **kw: object) -> RouteSpec:
    return RouteSpec(
        MODEL,
        (),
        options=ServingOptions(hold_s=hold_s, request_timeout_s=30),
        deployment=KEY,
        **kw,  # type: ignore[arg-type]
    )


async def held(gw: RunningGateway) -> float:
    url = f"http://127.0.0.1:{gw.admin_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        return parse_gateway(await r.text()).in_flight.get(KEY, {}).get("held", 0.0)


async def test_a_held_request_is_served_as_soon_as_a_backend_is_ready(clients: Clients) -> None:
    engine = await Engine(model=MODEL).start()
    gw = await start_test_gateway([cold(hold_s=10)])
    try:
        call = asyncio.create_task(
            clients(gw).chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
        )
        deadline = time.monotonic() + 5
        while await held(gw) != 1:
            assert time.monotonic() < deadline, "the request was never held"
            await asyncio.sleep(0.05)
        assert not call.done()
        # The pod turns ready: the routing table gets its endpoint.
        gw.table.replace([RouteSpec(MODEL, (engine.url,), deployment=KEY)])
        ready_at = time.monotonic()
        raw = await call
        waited = time.monotonic() - ready_at
        assert raw.headers["x-hedge-served-by"] == "self-hosted"
        assert raw.parse().choices[0].message.content
        assert waited < 0.5, waited  # woken by the update, not by a polling interval
        assert await held(gw) == 0
    finally:
        await gw.stop()
        await engine.stop()


async def test_no_backend_within_the_hold_time_is_a_503_with_retry_after(
    clients: Clients,
) -> None:
    gw = await start_test_gateway([cold(hold_s=0.5)])
    try:
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as info:
            await clients(gw).chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
        waited = time.monotonic() - started
        assert 0.5 <= waited < 2.0, waited
        assert info.value.status_code == 503
        assert info.value.response.headers["Retry-After"] == "2"
        error = info.value.body
        assert isinstance(error, dict)
        assert "no engine pod became ready within 0.5s" in error["message"]
        assert await held(gw) == 0
    finally:
        await gw.stop()


async def test_hold_zero_answers_at_once_and_a_fallback_is_never_held(clients: Clients) -> None:
    provider = await Engine(model="gpt-4o-mini").start()
    fallback = (
        ProviderSpec(
            type=ProviderType.OPENAI_COMPATIBLE, model="gpt-4o-mini", base_url=provider.url + "/v1"
        ),
    )
    gw = await start_test_gateway(
        [
            RouteSpec("no-hold", (), options=ServingOptions(hold_s=0)),
            RouteSpec("spills", (), fallback, options=ServingOptions(hold_s=30)),
        ]
    )
    try:
        client = clients(gw)
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="no-hold", messages=MESSAGES)  # type: ignore[arg-type]
        assert info.value.status_code == 503
        raw = await client.chat.completions.with_raw_response.create(
            model="spills",
            messages=MESSAGES,  # type: ignore[arg-type]
        )
        assert raw.headers["x-hedge-fallback-reason"] == "Unavailable"
        assert time.monotonic() - started < 2
    finally:
        await gw.stop()
        await provider.stop()


async def test_a_timed_out_hold_does_not_cancel_the_others(clients: Clients) -> None:
    """Held requests share one wake-up; one giving up must not wake or cancel the rest."""
    engine = await Engine(model="b").start()
    gw = await start_test_gateway(
        [
            RouteSpec("a", (), options=ServingOptions(hold_s=0.3)),
            RouteSpec("b", (), options=ServingOptions(hold_s=10)),
        ]
    )
    try:
        client = clients(gw)
        long = asyncio.create_task(client.chat.completions.create(model="b", messages=MESSAGES))  # type: ignore[arg-type]
        with pytest.raises(openai.APIStatusError):
            await client.chat.completions.create(model="a", messages=MESSAGES)  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert not long.done()
        gw.table.replace(
            [
                RouteSpec("a", (), options=ServingOptions(hold_s=0.3)),
                RouteSpec("b", (engine.url,), options=ServingOptions(hold_s=10)),
            ]
        )
        reply = await asyncio.wait_for(long, 5)
        assert reply.choices[0].message.content
        await wait_for(lambda: engine.in_flight == 0, what="the engine to finish")
    finally:
        await gw.stop()
        await engine.stop()


def test_routes_file_hold() -> None:
    (spec,) = parse_routes({"models": [{"name": "m", "coldStartHoldSeconds": 20}]})
    assert spec.options.hold_s == 20
    (spec,) = parse_routes({"models": [{"name": "m"}]})
    assert spec.options.hold_s == 0  # a static table never changes by itself: no wait
    with pytest.raises(RoutesFileError, match="must not exceed requestTimeoutSeconds"):
        parse_routes(
            {"models": [{"name": "m", "coldStartHoldSeconds": 20, "requestTimeoutSeconds": 10}]}
        )
    with pytest.raises(RoutesFileError, match="coldStartHoldSeconds: expected a number"):
        parse_routes({"models": [{"name": "m", "coldStartHoldSeconds": -1}]})
