"""Every buffer has a bound or is pruned: answers held in memory, unfinished stream events,
state kept per model, provider or backend (bench/gateway_memory.py shows the whole)."""

from __future__ import annotations

import json

import aiohttp
import pytest

from hedge_serving.gateway.keys import LocalKeyStore
from hedge_serving.gateway.providers.anthropic import AnthropicStreamRelay
from hedge_serving.gateway.providers.base import PassthroughRelay
from hedge_serving.gateway.proxy import ProxySettings
from hedge_serving.gateway.routing import ProviderSpec, ProviderType, RouteSpec, SecretRef
from tests.serving.gateway_stubs.engines import Engine
from tests.serving.gateway_stubs.harness import start_test_gateway, wait_for
from tests.serving.gateway_stubs.providers import OpenAIStub

MODEL = "llama-3-8b"


def test_an_unfinished_event_is_held_only_up_to_its_bound() -> None:
    relay = PassthroughRelay(max_event_bytes=1000)
    assert relay.feed(b"data: {}\n\n") == b"data: {}\n\n"
    relay.feed(b"data: " + b"x" * 900)
    with pytest.raises(ValueError, match="larger than 1000 bytes"):
        relay.feed(b"x" * 200)


def test_the_anthropic_stream_buffer_is_bounded() -> None:
    relay = AnthropicStreamRelay(max_event_bytes=1000)
    out = relay.feed(b"event: content_block_delta\ndata: " + b"x" * 2000)
    assert b'"code": "bad_stream"' in out
    assert relay.feed(b"more\n\n") == b""  # the stream is over, nothing more is held


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/chat/completions"])
async def test_an_answer_over_the_limit_is_a_clear_502(path: str) -> None:
    engine = await Engine("e0", MODEL).start()
    gw = await start_test_gateway(
        [RouteSpec(MODEL, (engine.url,))], proxy=ProxySettings(max_response_bytes=600)
    )
    try:
        body = (
            {"model": MODEL, "input": ["a"] * 40}
            if path == "/v1/embeddings"
            else {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 1}
        )
        if path == "/v1/chat/completions":
            engine.faults.chunk_delay_s = 0  # twelve events of ~200 bytes: over 600
        async with aiohttp.ClientSession() as s, s.post(gw.url + path, json=body) as r:
            assert r.status == 502
            error = (await r.json())["error"]
        assert "too large" in error["message"] and "600 bytes" in error["message"]
        assert gw.table.backends()[0].breaker._failures == 0  # the pod is fine
    finally:
        await gw.stop()
        await engine.stop()


async def test_state_of_models_that_left_the_table_is_dropped() -> None:
    engine = await Engine("e0", MODEL).start()
    provider = await OpenAIStub(api_key="sk-x").start()
    fallback = ProviderSpec(
        ProviderType.OPENAI_COMPATIBLE, "gpt-4o-mini", provider.url + "/v1", SecretRef(env="K")
    )
    gw = await start_test_gateway(
        [RouteSpec(MODEL, (engine.url,)), RouteSpec("cloud", (), (fallback,))],
        keys=LocalKeyStore({"K": "sk-x"}),
        upstream_keepalive_s=0.2,
    )
    metrics_url = f"http://127.0.0.1:{gw.admin_port}/metrics"
    try:
        async with aiohttp.ClientSession() as s:
            for model in (MODEL, "cloud"):
                body = {"model": model, "messages": [{"role": "user", "content": "x"}]}
                async with s.post(gw.url + "/v1/chat/completions", json=body) as r:
                    assert r.status == 200
            async with s.get(metrics_url) as r:
                before = await r.text()
            assert f'model="{MODEL}"' in before and 'model="cloud"' in before
            assert len(gw.gateway.proxy._providers) == 1

            gw.table.replace([RouteSpec("other", ())])  # both models go away

            async with s.get(metrics_url) as r:
                after = await r.text()
        samples = [line for line in after.splitlines() if not line.startswith("#")]
        assert not [
            line for line in samples if f'model="{MODEL}"' in line or 'model="cloud"' in line
        ]
        assert gw.gateway.proxy._providers == {}
        pool = gw.upstream
        await wait_for(lambda: pool.hosts() == 0, 3.0, "the gone backend's connections")  # type: ignore[union-attr]
    finally:
        await gw.stop()
        await provider.stop()
        await engine.stop()


def test_engine_errors_are_read_in_both_shapes() -> None:
    from hedge_serving.gateway.streams import parse_error

    new = parse_error(json.dumps({"error": {"message": "m", "type": "BadRequestError",
                                            "param": "p", "code": 400}}).encode())  # fmt: skip
    old = parse_error(json.dumps({"object": "error", "message": "m", "type": "BadRequestError",
                                  "param": "p", "code": 400}).encode())  # fmt: skip
    assert new.status == old.status == 400 and new.is_client_error
    assert json.loads(new.body) == json.loads(old.body)
    assert parse_error(b'{"error": {"message": "x", "type": "InternalServerError"}}').status == 500
    assert parse_error(b"not json", 503).status == 503
    assert not parse_error(b"{}", 429).is_client_error  # busy, not the client's fault
