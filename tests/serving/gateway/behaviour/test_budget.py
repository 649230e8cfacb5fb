"""The fallback budget at one gateway: tokens counted from the providers' usage, the spend
the operator reports plus this gateway's own since then, 429 with Retry-After once spent,
spilling again when the window turns."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest

from hedge_operator.dataplane.signals import parse_gateway
from hedge_serving.gateway.app import RunningGateway
from hedge_serving.gateway.budget import BudgetMeter, BudgetSpec
from hedge_serving.gateway.providers.base import PassthroughRelay
from hedge_serving.gateway.routing import (
    ProviderSpec,
    ProviderType,
    RouteSpec,
    ServingOptions,
)
from hedge_serving.gateway.usage import MeteredRelay, answer_tokens
from tests.serving.gateway_stubs.engines import Engine
from tests.serving.gateway_stubs.harness import Clients, start_test_gateway, wait_for

KEY = ("team-a", "llama")
MODEL = "llama-3-8b"
T = 1_780_000_040.0  # 20 s into a UTC minute


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    made = Clients()
    yield made
    await made.close()


# ------------------------------------------------------------------------- the meter


def test_one_gateway_stops_at_the_ceiling_on_its_own_count() -> None:
    meter = BudgetMeter()
    meter.update(BudgetSpec(tokens_per_minute=100))
    meter.record(60, T)
    assert meter.blocked(T) is None
    meter.record(40, T + 1)
    wait, why = meter.blocked(T + 2) or (0, "")
    assert wait == pytest.approx(38) and why == "100 of tokensPerMinute 100 spent"
    assert meter.blocked(T + 40) is None  # the next minute


def test_the_operator_sum_plus_own_spend_since() -> None:
    meter = BudgetMeter()
    minute = T - 20
    meter.update(BudgetSpec(tokens_per_minute=100))
    meter.record(10, T)
    # The operator summed every gateway: 70 so far this minute (our 10 among them).
    meter.update(BudgetSpec(tokens_per_minute=100, minute_start=minute, minute_tokens=70))
    assert meter.blocked(T) is None
    meter.record(25, T + 1)
    assert meter.blocked(T + 1) is None  # 95
    meter.record(5, T + 2)
    assert meter.blocked(T + 2) is not None  # 100
    # A status from the previous minute says nothing about this one.
    meter.update(BudgetSpec(tokens_per_minute=100, minute_start=minute - 60, minute_tokens=500))
    assert meter.blocked(T + 3) is None  # only our own 40 in this minute


def test_exhausted_until_and_the_day_window() -> None:
    meter = BudgetMeter()
    meter.update(BudgetSpec(tokens_per_minute=1000, exhausted_until=T + 5))
    assert meter.blocked(T) == (5, "spent (status.fallbackBudget.exhaustedUntil)")
    assert meter.blocked(T + 6) is None
    meter.update(BudgetSpec(tokens_per_day=50))
    meter.record(50, T)
    wait, why = meter.blocked(T) or (0, "")
    assert why == "50 of tokensPerDay 50 spent" and 0 < wait <= 86400


def test_usage_is_read_from_every_shape() -> None:
    assert answer_tokens(b'{"usage": {"prompt_tokens": 3, "completion_tokens": 4}}') == 7
    assert answer_tokens(b'{"usage": {"total_tokens": 9, "prompt_tokens": 3}}') == 9
    assert answer_tokens(b'{"usage": {"input_tokens": 2, "output_tokens": 5}}') == 7
    assert answer_tokens(b'{"object": "x"}') is None

    def sse(doc: object) -> bytes:
        return b"data: " + json.dumps(doc).encode() + b"\n\n"

    chunk = sse({"choices": [{"index": 0, "delta": {"content": "hi"}}]})
    usage = sse({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
    kept = MeteredRelay(PassthroughRelay(), strip_usage_chunk=False)
    assert kept.feed(chunk + usage + b"data: [DONE]\n\n") == chunk + usage + b"data: [DONE]\n\n"
    assert kept.tokens == 5
    stripped = MeteredRelay(PassthroughRelay(), strip_usage_chunk=True)
    assert stripped.feed(chunk + usage) + stripped.feed(b"data: [DONE]\n\n") == (
        chunk + b"data: [DONE]\n\n"
    )
    assert stripped.tokens == 5
    anthropic = MeteredRelay(PassthroughRelay(), strip_usage_chunk=True)
    anthropic.feed(
        b"event: message_start\n"
        + sse({"type": "message_start", "message": {"usage": {"input_tokens": 8}}})
        + b"event: message_delta\n"
        + sse({"type": "message_delta", "usage": {"output_tokens": 3}})
        + b"event: message_delta\n"
        + sse({"type": "message_delta", "usage": {"output_tokens": 6}})
    )
    assert anthropic.tokens == 14


# ----------------------------------------------------------------------- the gateway


async def fallback_tokens(gw: RunningGateway) -> float:
    url = f"http://127.0.0.1:{gw.admin_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        text = await r.text()
    return parse_gateway(text).counters.get(("fallback_tokens", *KEY), 0.0)


def provider_for(engine: Engine) -> tuple[ProviderSpec, ...]:
    return (
        ProviderSpec(
            type=ProviderType.OPENAI_COMPATIBLE, model=engine.model, base_url=engine.url + "/v1"
        ),
    )


async def test_spill_stops_at_the_ceiling_with_a_429_and_retry_after(clients: Clients) -> None:
    provider = await Engine(model="gpt-4o-mini").start()
    budget = BudgetSpec(tokens_per_minute=200)
    gw = await start_test_gateway(
        [RouteSpec(MODEL, (), provider_for(provider), deployment=KEY, budget=budget)]
    )
    try:
        client = clients(gw)
        messages = [{"role": "user", "content": "one two three"}]
        served = 0
        with pytest.raises(openai.RateLimitError) as info:
            for _ in range(100):
                await client.chat.completions.create(
                    model=MODEL,
                    messages=messages,  # type: ignore[arg-type]
                    max_tokens=8,
                    stream=served % 2 == 1,  # streams count too
                )
                served += 1
        spent = await fallback_tokens(gw)
        assert 200 <= spent < 200 + 20, spent  # stops within one request of the ceiling
        retry_after = int(info.value.response.headers["Retry-After"])
        assert 1 <= retry_after <= 60
        error = info.value.body
        assert isinstance(error, dict)
        assert error["code"] == "fallback_budget_exhausted"
        assert "tokensPerMinute 200 spent" in error["message"]
        assert len(provider.received) == served  # the refused request never reached it
    finally:
        await gw.stop()
        await provider.stop()


async def test_a_streaming_client_sees_no_usage_chunk_it_did_not_ask_for(
    clients: Clients,
) -> None:
    provider = await Engine(model="gpt-4o-mini").start()
    budget = BudgetSpec(tokens_per_minute=10_000)
    gw = await start_test_gateway(
        [RouteSpec(MODEL, (), provider_for(provider), deployment=KEY, budget=budget)]
    )
    try:
        client = clients(gw)
        messages = [{"role": "user", "content": "one two three"}]
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=4,
            stream=True,  # type: ignore[arg-type]
        )
        chunks = [c async for c in stream]
        assert all(c.choices for c in chunks)  # `chunk.choices[0]` never fails
        assert provider.received[-1].body["stream_options"] == {"include_usage": True}
        spent = await fallback_tokens(gw)
        assert spent > 4
        stream = await client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=4, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = [c async for c in stream]
        assert chunks[-1].usage is not None and not chunks[-1].choices
        assert await fallback_tokens(gw) == 2 * spent
    finally:
        await gw.stop()
        await provider.stop()


async def test_a_spent_budget_queues_at_the_pods_and_holds_a_cold_model(
    clients: Clients,
) -> None:
    """Spent: overload waits in the engines' queues instead of spilling; a model at zero
    holds the request for a pod instead of refusing it at once."""
    engine = await Engine(model=MODEL).start()
    provider = await Engine(model="gpt-4o-mini").start()
    spent = BudgetSpec(tokens_per_minute=10, exhausted_until=T + 10**9)
    options = ServingOptions(max_queue_depth=0, hold_s=10)
    route = RouteSpec(MODEL, (engine.url,), provider_for(provider), options, deployment=KEY,
                      budget=spent)  # fmt: skip
    gw = await start_test_gateway([route])
    try:
        client = clients(gw)
        messages = [{"role": "user", "content": "hi"}]
        gw.table.backends()[0].scraped_at = 0.0  # a deep queue, as scraped
        gw.table.backends()[0].waiting = 5
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=messages,  # type: ignore[arg-type]
        )
        assert raw.headers["x-hedge-served-by"] == "self-hosted"

        cold = RouteSpec(MODEL, (), provider_for(provider), options, deployment=KEY,
                         budget=spent)  # fmt: skip
        gw.table.replace([cold])
        call = asyncio.create_task(client.chat.completions.create(model=MODEL, messages=messages))  # type: ignore[arg-type]
        await asyncio.sleep(0.2)
        assert not call.done()  # held, not refused
        gw.table.replace([route])
        reply = await asyncio.wait_for(call, 5)
        assert reply.choices[0].message.content
        assert provider.received == []
        await wait_for(lambda: engine.in_flight == 0, what="the engine to finish")
    finally:
        await gw.stop()
        await engine.stop()
        await provider.stop()


async def test_a_held_request_spills_if_the_window_turned_meanwhile(clients: Clients) -> None:
    provider = await Engine(model="gpt-4o-mini").start()
    turns = BudgetSpec(tokens_per_minute=10, exhausted_until=time.time() + 0.2)
    route = RouteSpec(MODEL, (), provider_for(provider), ServingOptions(hold_s=0.5),
                      deployment=KEY, budget=turns)  # fmt: skip
    gw = await start_test_gateway([route])
    try:
        raw = await clients(gw).chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],  # type: ignore[arg-type]
        )
        assert raw.headers["x-hedge-fallback-reason"] == "Unavailable"
    finally:
        await gw.stop()
        await provider.stop()
