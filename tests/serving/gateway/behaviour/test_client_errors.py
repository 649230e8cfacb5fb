"""Client errors go back to the client: no retry, no breaker count, no paid fallback.

Engines report errors as an HTTP status or as the first event of a stream, in vLLM's
current shape (`{"error": {...}}`) or its older flat one (`{"object": "error", ...}`).
Only engine faults (5xx, or an error event naming one) are retried and counted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from hedge_serving.gateway.app import RunningGateway
from hedge_serving.gateway.keys import LocalKeyStore
from hedge_serving.gateway.proxy import ProxySettings
from hedge_serving.gateway.routing import ProviderSpec, ProviderType, RouteSpec, SecretRef
from hedge_serving.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.serving.gateway_stubs.engines import Engine
from tests.serving.gateway_stubs.harness import Clients, start_test_gateway
from tests.serving.gateway_stubs.providers import OpenAIStub

MODEL = "llama-3-8b"
TOO_LONG = "This model's maximum context length is 8 tokens. However, you requested 99 tokens."
NEW_SHAPE = {"error": {"message": TOO_LONG, "type": "BadRequestError", "param": None, "code": 400}}
OLD_SHAPE = {"object": "error", "message": TOO_LONG, "type": "BadRequestError", "param": None,
             "code": 400}  # fmt: skip
ENGINE_FAULT = {"error": {"message": "EngineCore died", "type": "InternalServerError",
                          "param": None, "code": 500}}  # fmt: skip


@pytest.fixture
async def setup() -> AsyncIterator[tuple[list[Engine], OpenAIStub, RunningGateway]]:
    engines = [await Engine(f"e{i}", MODEL).start() for i in range(2)]
    provider = await OpenAIStub(api_key="sk-x").start()
    spec = ProviderSpec(
        ProviderType.OPENAI_COMPATIBLE, "gpt-4o-mini", provider.url + "/v1", SecretRef(env="K")
    )
    gw = await start_test_gateway(
        [RouteSpec(MODEL, tuple(e.url for e in engines), (spec,))],
        keys=LocalKeyStore({"K": "sk-x"}),
        proxy=ProxySettings(affinity_prefix_chars=0),
    )
    yield engines, provider, gw
    await gw.stop()
    await provider.stop()
    for e in engines:
        await e.stop()


def failures(gw: RunningGateway) -> list[int]:
    return [b.breaker._failures for b in gw.table.backends()]


@pytest.mark.parametrize("shape", [NEW_SHAPE, OLD_SHAPE], ids=["error-object", "flat-object"])
@pytest.mark.parametrize("stream", [True, False])
async def test_client_error_in_the_first_event_goes_straight_back(
    client: Clients,
    setup: tuple[list[Engine], OpenAIStub, RunningGateway],
    shape: dict[str, Any],
    stream: bool,
) -> None:
    engines, provider, gw = setup
    for e in engines:
        e.faults.error_event_first = True
        e.faults.error_event = shape
    with pytest.raises(openai.BadRequestError) as info:
        await client(gw).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "long"}], stream=stream
        )
    assert info.value.status_code == 400
    assert info.value.body == {  # the engine's own words, in the OpenAI shape
        "message": TOO_LONG,
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
    assert info.value.response.headers["x-hedge-served-by"] == "self-hosted"
    assert sum(len(e.received) for e in engines) == 1  # not retried on the other pod
    assert failures(gw) == [0, 0]  # breakers untouched
    assert provider.received == []  # nothing spent on the fallback


@pytest.mark.parametrize("shape", [NEW_SHAPE, OLD_SHAPE], ids=["error-object", "flat-object"])
async def test_client_error_status_keeps_the_engine_message(
    client: Clients, setup: tuple[list[Engine], OpenAIStub, RunningGateway], shape: dict[str, Any]
) -> None:
    engines, provider, gw = setup
    for e in engines:
        e.faults.status = 400
        e.faults.error_body = shape
    with pytest.raises(openai.BadRequestError) as info:
        await client(gw).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
        )
    assert info.value.body["message"] == TOO_LONG  # type: ignore[index]
    assert sum(len(e.received) for e in engines) == 1
    assert failures(gw) == [0, 0]
    assert provider.received == []


async def test_engine_fault_in_the_first_event_is_retried_then_falls_back(
    client: Clients, setup: tuple[list[Engine], OpenAIStub, RunningGateway]
) -> None:
    engines, provider, gw = setup
    for e in engines:
        e.faults.error_event_first = True
        e.faults.error_event = ENGINE_FAULT
    raw = await client(gw).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}]
    )
    assert raw.headers["x-hedge-fallback-reason"] == "Error"
    assert sum(len(e.received) for e in engines) == 2  # each pod tried once
    assert failures(gw) == [1, 1]
    assert len(provider.received) == 1


async def test_too_long_prompt_on_the_real_simulator_is_a_400_without_fallback(
    client: Clients,
) -> None:
    sim: RunningSimulator = await start_simulator(
        SimulatorConfig(served_model_names=[MODEL], max_model_len=16), "127.0.0.1", 0
    )
    provider = await OpenAIStub(api_key="sk-x").start()
    spec = ProviderSpec(
        ProviderType.OPENAI_COMPATIBLE, "gpt-4o-mini", provider.url + "/v1", SecretRef(env="K")
    )
    gw = await start_test_gateway(
        [RouteSpec(MODEL, (sim.url,), (spec,))], keys=LocalKeyStore({"K": "sk-x"})
    )
    try:
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as info:
                await client(gw).chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": " ".join(["word"] * 50)}],
                    stream=stream,
                )
            assert "maximum context length" in info.value.message
        assert provider.received == []
        assert failures(gw) == [0]
    finally:
        await gw.stop()
        await provider.stop()
        await sim.stop()
