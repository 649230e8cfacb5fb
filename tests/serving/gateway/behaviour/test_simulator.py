"""The gateway in front of the real engine simulator: faults, queue depth and prefix cache."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hedge_serving.gateway.app import RunningGateway
from hedge_serving.gateway.keys import LocalKeyStore
from hedge_serving.gateway.routing import (
    ProviderSpec,
    ProviderType,
    RouteSpec,
    SecretRef,
    ServingOptions,
)
from hedge_serving.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.serving.gateway_stubs.harness import Clients, start_test_gateway, wait_for
from tests.serving.gateway_stubs.providers import OpenAIStub

MODEL = "llama-3-8b"


@pytest.fixture
async def sims() -> AsyncIterator[list[RunningSimulator]]:
    cfg = SimulatorConfig(
        served_model_names=[MODEL],
        ttft_ms=5,
        itl_ms=1,
        prefill_ms_per_token=0.2,
        default_max_tokens=4,
        max_concurrency=4,
    )
    started = [await start_simulator(cfg, "127.0.0.1", 0) for _ in range(2)]
    yield started
    for s in started:
        await s.stop()


@pytest.fixture
async def gw(sims: list[RunningSimulator]) -> AsyncIterator[RunningGateway]:
    running = await start_test_gateway([RouteSpec(MODEL, tuple(s.url for s in sims))])
    yield running
    await running.stop()


async def counter(sim: RunningSimulator, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(sim.url + "/metrics") as r:
        text = await r.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == name
        for sample in family.samples
        if sample.name == name + "_total"
    )


async def test_chat_stream_and_injected_errors(
    client: Clients, sims: list[RunningSimulator], gw: RunningGateway
) -> None:
    c = client(gw)
    done = await c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}]
    )
    assert done.choices[0].message.content
    stream = await c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert [x async for x in stream]
    # one simulator answers every request with 503: all traffic goes to the other, unseen
    sims[0].set_faults(error_rate=1.0, error_status=503)
    for i in range(30):  # prompts hash over both backends; sims[0] gets its 3 failures
        raw = await c.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": f"r{i}"}]
        )
        assert raw.headers["x-hedge-served-by"] == "self-hosted"
    backend = next(b for b in gw.table.backends() if b.url == sims[0].url)
    assert backend.breaker.state.name == "OPEN"


async def test_stream_dropped_by_the_engine_ends_with_an_error_event(
    client: Clients, sims: list[RunningSimulator]
) -> None:
    sims[0].set_faults(drop_after_chunks=2)
    gw = await start_test_gateway([RouteSpec(MODEL, (sims[0].url,))])
    try:
        stream = await client(gw).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True, max_tokens=10
        )
        got = []
        with pytest.raises(openai.APIError):
            async for chunk in stream:
                got.append(chunk)
        assert len(got) == 2
    finally:
        await gw.stop()


async def test_full_queues_fall_back_as_overloaded(
    client: Clients, sims: list[RunningSimulator]
) -> None:
    provider = await OpenAIStub(api_key="sk-x").start()
    spec = ProviderSpec(
        ProviderType.OPENAI_COMPATIBLE, "gpt-4o-mini", provider.url + "/v1", SecretRef(env="K")
    )
    gw = await start_test_gateway(
        [RouteSpec(MODEL, (sims[0].url,), (spec,), ServingOptions(max_queue_depth=1))],
        keys=LocalKeyStore({"K": "sk-x"}),
        engine_metrics_interval_s=0.05,
    )
    try:
        sims[0].set_faults(hang=True)  # admitted requests hold their slots
        c = client(gw)
        hung = [
            asyncio.create_task(
                c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "h"}])
            )
            for _ in range(7)  # 4 run, 3 wait on the engine
        ]
        backend = gw.table.backends()[0]
        await wait_for(lambda: backend.queue_estimate() > 1, what="vllm:num_requests_waiting > 1")
        raw = await c.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "q"}]
        )
        assert raw.headers["x-hedge-served-by"] == "openai-compatible"
        assert raw.headers["x-hedge-fallback-reason"] == "Overloaded"
        for t in hung:
            t.cancel()
        await asyncio.gather(*hung, return_exceptions=True)
    finally:
        await gw.stop()
        await provider.stop()


async def test_prefix_affinity_reuses_the_engine_prefix_cache(
    client: Clients, sims: list[RunningSimulator], gw: RunningGateway
) -> None:
    c = client(gw)
    system = " ".join(f"rule{i}" for i in range(300))
    for i in range(8):
        await c.chat.completions.create(
            model=MODEL,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": f"q{i}"}],
        )
    hits = [await counter(s, "vllm:prefix_cache_hits") for s in sims]
    queries = [await counter(s, "vllm:prefix_cache_queries") for s in sims]
    # every request after the first found the 300-token system prompt cached
    assert sum(hits) >= 7 * 288
    assert sorted(q > 0 for q in queries) == [False, True]  # one engine got them all
