"""Hung engines are escaped: a stall is a backend failure, retried elsewhere, then fallback.

The engines are the real simulator (its `hang` fault: admitted requests stop making
progress while `/health` still answers) and, for a stream that stops mid-way, the stub
engine. The limits are scaled down so the tests take seconds; `test_default_limits`
holds the defaults to the promise in docs/gateway.md.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest

from hedge_serving.gateway.app import RunningGateway
from hedge_serving.gateway.keys import LocalKeyStore
from hedge_serving.gateway.proxy import ProxySettings
from hedge_serving.gateway.routing import (
    ProviderSpec,
    ProviderType,
    RouteSpec,
    SecretRef,
    ServingOptions,
)
from hedge_serving.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.serving.gateway_stubs.engines import Engine
from tests.serving.gateway_stubs.harness import Clients, start_test_gateway
from tests.serving.gateway_stubs.providers import OpenAIStub
from tests.serving.gateway_stubs.replies import reply_text

MODEL = "llama-3-8b"
LIMITS = ProxySettings(
    affinity_prefix_chars=0,
    first_token_timeout_s=1.0,
    first_token_timeout_per_1k_tokens_s=1.0,
    first_token_timeout_per_queued_s=0.0,
    idle_timeout_s=1.0,
    response_head_timeout_s=1.0,
)
MESSAGES = [{"role": "user", "content": "hello there"}]


@pytest.fixture
async def sims() -> AsyncIterator[list[RunningSimulator]]:
    cfg = SimulatorConfig(
        served_model_names=[MODEL], ttft_ms=5, itl_ms=2, default_max_tokens=6, max_model_len=200_000
    )
    started = [await start_simulator(cfg, "127.0.0.1", 0) for _ in range(2)]
    yield started
    for s in started:
        s.set_faults(hang=False)  # let parked requests finish so stop() is quick
        await s.stop()


def backend(gw: RunningGateway, url: str) -> object:
    return next(b for b in gw.table.backends() if b.url == url)


def test_default_limits() -> None:
    """With the defaults, a short prompt's stall is escaped within ~15 s, while a long
    prompt's prefill and a busy engine's queue get proportionally longer."""
    s = ProxySettings()
    short = len(json.dumps({"model": MODEL, "messages": MESSAGES}))
    assert s.first_token_limit(short, queued=0) <= 11
    assert s.idle_timeout_s <= 15
    long_prompt = 4 * 100_000  # ~100k tokens of prompt
    assert s.first_token_limit(long_prompt, queued=0) >= 100
    assert s.first_token_limit(short, queued=16) >= 25


@pytest.mark.parametrize("stream", [False, True])
async def test_hung_pod_is_escaped_to_the_other_pod(
    client: Clients, sims: list[RunningSimulator], stream: bool
) -> None:
    gw = await start_test_gateway([RouteSpec(MODEL, tuple(s.url for s in sims))], proxy=LIMITS)
    try:
        sims[0].set_faults(hang=True)
        c = client(gw)
        for i in range(4):  # least-outstanding alternates: the hung pod gets tried
            started = time.monotonic()
            if stream:
                chunks = [
                    x
                    async for x in await c.chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": f"q{i}"}], stream=True
                    )
                ]
                text = "".join(x.choices[0].delta.content or "" for x in chunks if x.choices)
            else:
                done = await c.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"q{i}"}]
                )
                text = done.choices[0].message.content or ""
            assert text
            assert time.monotonic() - started < 5  # one stall (1 s) at most, not the timeout
        hung = backend(gw, sims[0].url)
        assert hung.breaker._failures >= 1  # type: ignore[attr-defined]
    finally:
        await gw.stop()


@pytest.mark.parametrize("stream", [False, True])
async def test_hung_only_pod_falls_back(
    client: Clients, sims: list[RunningSimulator], stream: bool
) -> None:
    provider = await OpenAIStub(api_key="sk-x").start()
    spec = ProviderSpec(
        ProviderType.OPENAI_COMPATIBLE, "gpt-4o-mini", provider.url + "/v1", SecretRef(env="K")
    )
    gw = await start_test_gateway(
        [RouteSpec(MODEL, (sims[0].url,), (spec,))],
        keys=LocalKeyStore({"K": "sk-x"}),
        proxy=LIMITS,
    )
    try:
        sims[0].set_faults(hang=True)
        started = time.monotonic()
        raw = await client(gw).chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, stream=stream
        )
        assert time.monotonic() - started < 5
        assert raw.headers["x-hedge-served-by"] == "openai-compatible"
        assert raw.headers["x-hedge-fallback-reason"] == "Error"
        if stream:
            chunks = [x async for x in raw.parse()]  # type: ignore[union-attr]
            text = "".join(x.choices[0].delta.content or "" for x in chunks if x.choices)
            assert text == reply_text("hello there")
        else:
            assert raw.parse().choices[0].message.content == reply_text("hello there")
    finally:
        await gw.stop()
        await provider.stop()


async def test_stream_that_stalls_mid_way_ends_with_an_error_event(client: Clients) -> None:
    engine = await Engine("e0", MODEL).start()
    engine.faults.stall_after = 3  # three events, then silence with the connection open
    gw = await start_test_gateway([RouteSpec(MODEL, (engine.url,))], proxy=LIMITS)
    try:
        stream = await client(gw).chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True
        )
        got = []
        started = time.monotonic()
        with pytest.raises(openai.APIError) as info:
            async for chunk in stream:
                got.append(chunk)
        assert len(got) == 3
        assert time.monotonic() - started < LIMITS.idle_timeout_s + 2  # not the request timeout
        assert "stopped answering" in info.value.message
        assert backend(gw, engine.url).breaker._failures == 1  # type: ignore[attr-defined]
    finally:
        await gw.stop()
        await engine.stop()


async def test_unstreamed_client_stall_mid_generation_is_retried(client: Clients) -> None:
    """Nothing reached a client that did not stream: a stall mid-way moves to another pod."""
    engines = [await Engine(f"e{i}", MODEL).start() for i in range(2)]
    engines[0].faults.stall_after = 3
    gw = await start_test_gateway([RouteSpec(MODEL, tuple(e.url for e in engines))], proxy=LIMITS)
    try:
        c = client(gw)
        for i in range(3):
            raw = await c.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": f"m{i}"}]
            )
            done = raw.parse()
            assert done.system_fingerprint == "e1"
            assert done.choices[0].message.content == reply_text(f"m{i}")
    finally:
        await gw.stop()
        for e in engines:
            await e.stop()


async def test_long_prefill_and_long_generation_are_not_cut(
    client: Clients, sims: list[RunningSimulator]
) -> None:
    """A prefill longer than the base first-token limit (the limit grows with the prompt)
    and an unstreamed generation longer than every limit (tokens keep flowing) finish."""
    slow = await start_simulator(
        SimulatorConfig(
            served_model_names=[MODEL],
            ttft_ms=5,
            itl_ms=100,
            prefill_ms_per_token=0.15,
            max_model_len=200_000,
        ),
        "127.0.0.1",
        0,
    )
    gw = await start_test_gateway([RouteSpec(MODEL, (slow.url,))], proxy=LIMITS)
    try:
        c = client(gw)
        prompt = " ".join(f"w{i}" for i in range(12_000))  # ~1.8 s of prefill > 1 s base
        started = time.monotonic()
        done = await c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=2
        )
        assert done.choices[0].finish_reason == "length"
        assert time.monotonic() - started > LIMITS.first_token_timeout_s
        started = time.monotonic()
        done = await c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=25)
        assert done.usage is not None and done.usage.completion_tokens == 25
        assert time.monotonic() - started > 2 * LIMITS.idle_timeout_s  # ~2.4 s of decoding
    finally:
        await gw.stop()
        await slow.stop()


async def test_hung_embeddings_pod_is_escaped_by_the_head_limit(
    sims: list[RunningSimulator],
) -> None:
    gw = await start_test_gateway([RouteSpec(MODEL, tuple(s.url for s in sims))], proxy=LIMITS)
    try:
        sims[0].set_faults(hang=True)
        async with aiohttp.ClientSession() as s:
            for i in range(4):
                started = time.monotonic()
                async with s.post(
                    gw.url + "/v1/embeddings", json={"model": MODEL, "input": f"text {i}"}
                ) as r:
                    assert r.status == 200, await r.text()
                    assert (await r.json())["data"][0]["embedding"]
                assert time.monotonic() - started < 5
    finally:
        await gw.stop()


async def test_stall_counts_toward_the_breaker_until_it_opens(
    client: Clients, sims: list[RunningSimulator]
) -> None:
    gw = await start_test_gateway(
        [RouteSpec(MODEL, tuple(s.url for s in sims), options=ServingOptions())],
        proxy=LIMITS,
        breaker_open_s=60,
    )
    try:
        sims[0].set_faults(hang=True)
        c = client(gw)
        await asyncio.gather(
            *(
                c.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"b{i}"}]
                )
                for i in range(6)
            )
        )
        assert backend(gw, sims[0].url).breaker.state.name == "OPEN"  # type: ignore[attr-defined]
    finally:
        await gw.stop()
