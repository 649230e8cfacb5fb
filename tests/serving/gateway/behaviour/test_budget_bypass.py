"""The fallback budget cannot be bypassed (issue 16, Medium-10): a client that leaves a stream
early and a provider that reports no usage are still charged, requests in flight hold a
reservation, `n`/`max_tokens` are capped, background Responses are refused and nothing is
stored, a non-object `stream_options` is a 400, and with the operator down each gateway
spends only its share."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from aiohttp import web

from hedge_serving.gateway.app import RunningGateway
from hedge_serving.gateway.budget import BudgetMeter, BudgetSpec
from hedge_serving.gateway.keys import LocalKeyStore
from hedge_serving.gateway.providers.base import PassthroughRelay
from hedge_serving.gateway.routing import ProviderSpec, ProviderType, RouteSpec, SecretRef
from hedge_serving.gateway.usage import MeteredRelay
from tests.serving.gateway.behaviour.test_egress import Listener
from tests.serving.gateway_stubs.engines import Engine
from tests.serving.gateway_stubs.harness import Clients, start_test_gateway, wait_for
from tests.serving.gateway_stubs.providers import OpenAIStub
from tests.serving.gateway_stubs.servers import sse

KEY = ("team-a", "llama")
MODEL = "llama-3-8b"
T = 1_780_000_040.0  # 20 s into a UTC minute
MESSAGES: Any = [{"role": "user", "content": "one two three"}]


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    made = Clients()
    yield made
    await made.close()


def openai_compatible(url: str) -> tuple[ProviderSpec, ...]:
    return (ProviderSpec(type=ProviderType.OPENAI_COMPATIBLE, model="gpt-4o-mini", base_url=url),)


def charged(gw: RunningGateway) -> int:
    route = gw.table.resolve(MODEL)
    assert route is not None
    return sum(route.demand.fallback_tokens.values())


def reserved(gw: RunningGateway) -> int:
    route = gw.table.resolve(MODEL)
    assert route is not None
    return route.demand.budget.reserved


async def test_a_client_that_leaves_a_stream_early_is_charged_what_was_relayed(
    clients: Clients,
) -> None:
    provider = await Engine(model="gpt-4o-mini").start()
    provider.faults.chunk_delay_s = 0.05  # the usage chunk would come ~2 s later
    gw = await start_test_gateway(
        [RouteSpec(MODEL, (), openai_compatible(provider.url + "/v1"), deployment=KEY,
                   budget=BudgetSpec(tokens_per_minute=100_000))]
    )  # fmt: skip
    try:
        stream = await clients(gw).chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=40, stream=True
        )
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 4:
                break
        await stream.close()  # the client leaves before the usage chunk
        await wait_for(lambda: charged(gw) > 0, 5.0, "the early leaver to be charged")
        # the prompt (request bytes / 4) plus at least one token per relayed chunk
        assert charged(gw) >= 4
        await wait_for(lambda: reserved(gw) == 0, 5.0, "the reservation to be settled")
    finally:
        await gw.stop()
        await provider.stop()


async def no_usage_provider() -> Listener:
    """An OpenAI-compatible provider that never reports usage, streamed or not."""

    async def answer(request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        text = "forty characters of a generated answer.."
        if not body.get("stream"):
            return web.json_response(
                {"id": "x", "object": "chat.completion", "created": 1, "model": "m",
                 "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                              "message": {"role": "assistant", "content": text}}]}
            )  # fmt: skip
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for piece in (text[:20], text[20:]):
            await resp.write(
                sse({"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
                     "choices": [{"index": 0, "delta": {"content": piece},
                                  "finish_reason": None, "logprobs": None}]})
            )  # fmt: skip
        await resp.write(b"data: [DONE]\n\n")
        return resp

    return await Listener().start(answer)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_provider_that_reports_no_usage_is_charged_an_estimate(
    clients: Clients, stream: bool
) -> None:
    provider = await no_usage_provider()
    gw = await start_test_gateway(
        [RouteSpec(MODEL, (), openai_compatible(provider.url + "/v1"), deployment=KEY,
                   budget=BudgetSpec(tokens_per_minute=100_000))]
    )  # fmt: skip
    try:
        c = clients(gw)
        if stream:
            chunks = await c.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=16, stream=True
            )
            text = "".join([ch.choices[0].delta.content or "" async for ch in chunks])
        else:
            done = await c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)
            text = done.choices[0].message.content or ""
        assert len(text) == 40
        await wait_for(lambda: charged(gw) > 0, 5.0, "the estimate to be charged")
        # 40 characters of answer at 4 a token, plus the prompt at 4 request bytes a token
        assert 10 + 5 <= charged(gw) <= 10 + 60, charged(gw)
    finally:
        await gw.stop()
        await provider.stop()


async def test_requests_in_flight_hold_a_reservation(clients: Clients) -> None:
    provider = await Engine(model="gpt-4o-mini").start()
    provider.faults.stall_after = 2  # the first stream stays in flight
    gw = await start_test_gateway(
        [RouteSpec(MODEL, (), openai_compatible(provider.url + "/v1"), deployment=KEY,
                   budget=BudgetSpec(tokens_per_minute=3000))]
    )  # fmt: skip
    try:
        c = clients(gw)
        # No max_tokens: it reserves the cap (4096) and is sent with it.
        stream = await c.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        await stream.__anext__()
        assert reserved(gw) > 3000
        assert provider.received[0].body["max_completion_tokens"] == 4096
        with pytest.raises(openai.RateLimitError) as info:
            await c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
        error = info.value.body
        assert isinstance(error, dict)
        assert error["code"] == "fallback_budget_exhausted"
        assert "reserved by requests in flight" in error["message"]
        assert len(provider.received) == 1  # the refused one never reached the provider
        await stream.close()
    finally:
        await gw.stop()
        await provider.stop()


async def test_a_request_kept_out_only_by_reservations_waits_for_them_and_is_served(
    clients: Clients,
) -> None:
    """Reservations that settle below what they reserved must not turn into a 429 that
    answers after it then contradict (a spill after a refusal in the same window)."""
    provider = await Engine(model="gpt-4o-mini").start()
    provider.faults.delay_s = 0.3  # the first request is in flight when the second comes
    gw = await start_test_gateway(
        [RouteSpec(MODEL, (), openai_compatible(provider.url + "/v1"), deployment=KEY,
                   budget=BudgetSpec(tokens_per_minute=30))]
    )  # fmt: skip
    try:
        c = clients(gw)

        async def ask() -> Any:
            return await c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)

        first = asyncio.create_task(ask())
        await wait_for(lambda: reserved(gw) > 0, 5, "the first request's reservation")
        assert reserved(gw) >= 30  # on its own it would keep the second out
        second = await ask()  # waits for the first to settle, then fits
        await first
        assert second.choices[0].message.content is not None
        assert 0 < charged(gw) < 30
        assert reserved(gw) == 0
    finally:
        await gw.stop()
        await provider.stop()


@pytest.mark.parametrize(
    ("extra", "param", "flag"),
    [
        ({"n": 5}, "n", "--fallback-max-n"),
        ({"max_tokens": 5000}, "max_tokens", "--fallback-max-tokens"),
        ({"max_completion_tokens": 100_000}, "max_completion_tokens", "--fallback-max-tokens"),
    ],
)
async def test_fallback_requests_over_the_caps_are_a_400_naming_the_cap(
    clients: Clients, extra: dict[str, Any], param: str, flag: str
) -> None:
    provider = await Engine(model="gpt-4o-mini").start()
    gw = await start_test_gateway([RouteSpec(MODEL, (), openai_compatible(provider.url + "/v1"))])
    try:
        with pytest.raises(openai.BadRequestError) as info:
            await clients(gw).chat.completions.create(
                model=MODEL, messages=MESSAGES, extra_body=extra
            )
        error = info.value.body
        assert isinstance(error, dict)
        assert error["param"] == param and error["code"] == "fallback_limit_exceeded"
        assert flag in error["message"]
        assert provider.received == []
    finally:
        await gw.stop()
        await provider.stop()


async def test_background_responses_are_refused_and_nothing_is_stored(clients: Clients) -> None:
    stub = await OpenAIStub(api_key="sk-r").start()
    spec = ProviderSpec(
        type=ProviderType.OPENAI_COMPATIBLE, model="gpt-4o-mini", base_url=stub.url + "/v1",
        api_key=SecretRef(env="K"),
    )  # fmt: skip
    gw = await start_test_gateway(
        [RouteSpec(MODEL, (), (spec,), deployment=KEY, budget=BudgetSpec(tokens_per_day=10**6))],
        keys=LocalKeyStore({"K": "sk-r"}),
    )
    try:
        c = clients(gw)
        with pytest.raises(openai.BadRequestError) as info:
            await c.responses.create(model=MODEL, input="hi", background=True)
        error = info.value.body
        assert isinstance(error, dict) and error["param"] == "background"
        assert stub.received == []
        done = await c.responses.create(model=MODEL, input="hi", store=True)
        assert done.output_text
        assert stub.received[0].body["store"] is False
    finally:
        await gw.stop()
        await stub.stop()


async def test_a_non_object_stream_options_is_a_400(clients: Clients) -> None:
    provider = await Engine(model="gpt-4o-mini").start()
    gw = await start_test_gateway(
        [RouteSpec(MODEL, (), openai_compatible(provider.url + "/v1"), deployment=KEY,
                   budget=BudgetSpec(tokens_per_minute=100_000))]
    )  # fmt: skip
    try:
        with pytest.raises(openai.BadRequestError) as info:
            await clients(gw).chat.completions.create(
                model=MODEL, messages=MESSAGES, stream=True, extra_body={"stream_options": "yes"}
            )
        error = info.value.body
        assert isinstance(error, dict) and error["param"] == "stream_options"
    finally:
        await gw.stop()
        await provider.stop()


# --------------------------------------------------------------------- the meter, pure


def test_with_the_operator_down_each_gateway_spends_only_its_share() -> None:
    gateways = [BudgetMeter(), BudgetMeter()]
    for meter in gateways:
        meter.update(BudgetSpec(tokens_per_minute=100))  # no status: the operator is down
    spent = 0
    for meter in gateways:
        while meter.blocked(T, share=0.5) is None:
            meter.record(10, T)
            spent += 10
    assert spent == 100  # not 200
    blocked = gateways[0].blocked(T, share=0.5)
    assert blocked is not None and "share 50 of tokensPerMinute 100" in blocked[1]


def test_between_status_updates_each_gateway_spends_its_share_of_what_remains() -> None:
    minute = T - 20
    meter = BudgetMeter()
    meter.update(BudgetSpec(tokens_per_minute=100, minute_start=minute, minute_tokens=60))
    meter.record(19, T)
    assert meter.blocked(T, share=0.5) is None
    meter.record(1, T)
    assert meter.blocked(T, share=0.5) is not None  # 20 = half of the 40 left
    assert meter.blocked(T, share=1.0) is None  # a lone gateway may take all 40


def test_a_reservation_counts_until_it_settles() -> None:
    meter = BudgetMeter()
    meter.update(BudgetSpec(tokens_per_minute=100))
    held = meter.reserve(100)
    assert meter.blocked(T) is not None
    meter.settle(held, 7, T)
    assert meter.reserved == 0 and meter.blocked(T) is None
    meter.record(93, T)
    assert meter.blocked(T) is not None


def test_a_cut_stream_is_charged_from_the_text_relayed() -> None:
    meter = MeteredRelay(PassthroughRelay(), strip_usage_chunk=True)
    chunk = {"choices": [{"index": 0, "delta": {"content": "x" * 40}}]}
    meter.feed(sse(chunk) + sse(chunk))
    assert meter.tokens is None
    assert meter.charge(prompt_tokens=5) == 5 + 20  # 80 characters at 4 a token
    # Anthropic's running counts of a stream cut short are not the last word either.
    cut = MeteredRelay(PassthroughRelay(), strip_usage_chunk=False)
    cut.feed(sse({"type": "message_start", "message": {"usage": {"input_tokens": 3}}}))
    cut.feed(sse({"type": "content_block_delta", "delta": {"text": "y" * 400}}))
    assert cut.charge(prompt_tokens=3) >= 100


def test_an_answer_that_reports_usage_is_charged_as_reported() -> None:
    meter = MeteredRelay(PassthroughRelay(), strip_usage_chunk=True)
    meter.feed(sse({"choices": [{"index": 0, "delta": {"content": "x" * 400}}]}))
    meter.feed(sse({"choices": [], "usage": {"total_tokens": 12}}) + b"data: [DONE]\n\n")
    assert meter.finish() == b""
    assert meter.charge(prompt_tokens=50) == 12
