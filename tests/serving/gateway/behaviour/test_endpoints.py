"""Every vLLM endpoint that carries a `model` is routed to that model's pods, with the same
balancing, retries and metrics; fallback where a provider has the same endpoint, and an
error naming the endpoint where none does."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from hedge_serving.gateway.app import RunningGateway
from hedge_serving.gateway.endpoints import Endpoint
from hedge_serving.gateway.keys import LocalKeyStore
from hedge_serving.gateway.proxy import ProxySettings
from hedge_serving.gateway.routing import ProviderSpec, ProviderType, RouteSpec, SecretRef
from tests.serving.gateway_stubs.engines import Engine
from tests.serving.gateway_stubs.harness import start_test_gateway
from tests.serving.gateway_stubs.providers import AnthropicStub, OpenAIStub
from tests.serving.gateway_stubs.replies import reply_text

MODEL = "llama-3-8b"
KEYS = LocalKeyStore({"K": "sk-x"})
BODIES: dict[Endpoint, dict[str, Any]] = {
    Endpoint.CHAT: {"messages": [{"role": "user", "content": "hi"}]},
    Endpoint.COMPLETIONS: {"prompt": "hi"},
    Endpoint.RESPONSES: {"input": "hi"},
    Endpoint.MESSAGES: {"max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
    Endpoint.MESSAGES_COUNT_TOKENS: {"messages": [{"role": "user", "content": "hi"}]},
    Endpoint.EMBEDDINGS: {"input": "hi"},
    Endpoint.POOLING: {"input": "hi"},
    Endpoint.CLASSIFY: {"input": "hi"},
    Endpoint.SCORE: {"text_1": "a", "text_2": "b"},
    Endpoint.SCORE_V1: {"text_1": "a", "text_2": "b"},
    Endpoint.RERANK: {"query": "q", "documents": ["a", "b"]},
    Endpoint.RERANK_V1: {"query": "q", "documents": ["a", "b"]},
    Endpoint.RERANK_V2: {"query": "q", "documents": ["a", "b"]},
    Endpoint.TOKENIZE: {"prompt": "hi there"},
    Endpoint.DETOKENIZE: {"tokens": [1, 2]},
    Endpoint.CHAT_RENDER: {"messages": [{"role": "user", "content": "hi"}]},
    Endpoint.COMPLETIONS_RENDER: {"prompt": "hi"},
    Endpoint.MESSAGES_RENDER: {"max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
    Endpoint.RESPONSES_RENDER: {"input": "hi"},
    Endpoint.CHAT_BATCH: {"messages": [[{"role": "user", "content": "hi"}]]},
    Endpoint.GENERATIVE_SCORING: {"query": "q", "items": ["a"], "label_token_ids": [1, 2]},
    Endpoint.COHERE_CHAT: {"messages": [{"role": "user", "content": "hi"}]},
    Endpoint.COHERE_EMBED: {"texts": ["hi"], "input_type": "search_query"},
}


@pytest.fixture
async def engines() -> AsyncIterator[list[Engine]]:
    started = [await Engine(f"e{i}", MODEL).start() for i in range(2)]
    yield started
    for e in started:
        await e.stop()


async def post(
    gw: RunningGateway, path: str, body: dict[str, Any]
) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as s, s.post(gw.url + path, json=body) as r:
        return r.status, dict(r.headers), await r.read()


def test_every_endpoint_has_a_request() -> None:
    assert set(BODIES) == set(Endpoint)


@pytest.mark.parametrize("endpoint", list(Endpoint), ids=lambda e: e.value)
async def test_routed_to_the_models_pods(engines: list[Engine], endpoint: Endpoint) -> None:
    gw = await start_test_gateway([RouteSpec(MODEL, (engines[0].url,))])
    try:
        status, headers, body = await post(gw, endpoint.value, {"model": MODEL, **BODIES[endpoint]})
        assert status == 200, body
        assert headers["x-hedge-served-by"] == "self-hosted"
        received = engines[0].received[-1]
        assert (received.path, received.body["model"]) == (endpoint.value, MODEL)
    finally:
        await gw.stop()


@pytest.mark.parametrize(
    "endpoint", [Endpoint.RERANK_V1, Endpoint.TOKENIZE, Endpoint.RESPONSES], ids=str
)
async def test_retried_on_another_pod_and_counted(
    engines: list[Engine], endpoint: Endpoint
) -> None:
    gw = await start_test_gateway(
        [RouteSpec(MODEL, tuple(e.url for e in engines))],
        proxy=ProxySettings(affinity_prefix_chars=0),
    )
    try:
        engines[0].faults.status = 503
        for _ in range(4):
            status, _, body = await post(gw, endpoint.value, {"model": MODEL, **BODIES[endpoint]})
            assert status == 200
            assert json.loads(body)["engine"] == "e1"
        metrics_url = f"http://127.0.0.1:{gw.admin_port}/metrics"
        async with aiohttp.ClientSession() as s, s.get(metrics_url) as r:
            text = await r.text()
        assert (
            'hedge_gateway_requests_total{model="llama-3-8b",served_by="self-hosted",status="200"}'
            " 4.0" in text
        )
        assert 'hedge_gateway_retries_total{model="llama-3-8b"}' in text
    finally:
        await gw.stop()


@pytest.mark.parametrize(
    "endpoint", [Endpoint.RESPONSES, Endpoint.MESSAGES, Endpoint.COHERE_CHAT], ids=str
)
async def test_streams_end_with_their_own_final_event(
    engines: list[Engine], endpoint: Endpoint
) -> None:
    gw = await start_test_gateway([RouteSpec(MODEL, (engines[0].url,))])
    body = {"model": MODEL, "stream": True, **BODIES[endpoint]}
    try:
        status, _, data = await post(gw, endpoint.value, body)
        assert status == 200
        assert b'"error"' not in data  # complete: no cut-stream error appended
        assert data.count(b"event: delta") == 2
        engines[0].faults.cut_after = 3  # cut before the final event
        status, _, data = await post(gw, endpoint.value, body)
        assert status == 200
        assert data.count(b"event: delta") == 2
        assert data.rstrip().endswith(b"}}")
        last = json.loads(data.rstrip().rsplit(b"data: ", 1)[1])
        assert "upstream stream" in last["error"]["message"]  # an error, not a silent end
    finally:
        await gw.stop()


@pytest.mark.parametrize("stream", [False, True])
async def test_responses_fall_back_to_openai(stream: bool) -> None:
    provider = await OpenAIStub(api_key="sk-x").start()
    spec = ProviderSpec(
        ProviderType.OPENAI, "gpt-4o-mini", provider.url + "/v1", SecretRef(env="K")
    )
    gw = await start_test_gateway([RouteSpec(MODEL, (), (spec,))], keys=KEYS)
    try:
        status, headers, data = await post(
            gw, "/v1/responses", {"model": MODEL, "input": "hello", "stream": stream}
        )
        assert status == 200, data
        assert headers["x-hedge-served-by"] == "openai"
        assert provider.received[-1].path == "/v1/responses"
        assert provider.received[-1].body["model"] == "gpt-4o-mini"
        if stream:
            assert data.rstrip().splitlines()[-2] == b"event: response.completed"
            assert reply_text("hello").split()[-1].encode() in data
        else:
            text = json.loads(data)["output"][0]["content"][0]["text"]
            assert text == reply_text("hello")
    finally:
        await gw.stop()
        await provider.stop()


@pytest.mark.parametrize("stream", [False, True])
async def test_messages_fall_back_to_anthropic_unchanged(stream: bool) -> None:
    provider = await AnthropicStub(api_key="sk-x").start()
    spec = ProviderSpec(ProviderType.ANTHROPIC, "claude-x", provider.url, SecretRef(env="K"))
    gw = await start_test_gateway([RouteSpec(MODEL, (), (spec,))], keys=KEYS)
    try:
        body = {"model": MODEL, "stream": stream, **BODIES[Endpoint.MESSAGES]}
        status, headers, data = await post(gw, "/v1/messages", body)
        assert status == 200, data
        assert headers["x-hedge-served-by"] == "anthropic"
        sent = provider.received[-1]
        assert sent.body == {**body, "model": "claude-x"}  # the client's request, as is
        if stream:
            assert b"event: message_stop" in data
            assert b'"error"' not in data
        else:
            assert json.loads(data)["type"] == "message"
        status, _, data = await post(
            gw,
            "/v1/messages/count_tokens",
            {"model": MODEL, **BODIES[Endpoint.MESSAGES_COUNT_TOKENS]},
        )
        assert (status, json.loads(data)) == (200, {"input_tokens": 1})
    finally:
        await gw.stop()
        await provider.stop()


async def test_no_provider_has_the_endpoint_is_an_error_naming_it() -> None:
    provider = await OpenAIStub(api_key="sk-x").start()
    spec = ProviderSpec(
        ProviderType.OPENAI, "gpt-4o-mini", provider.url + "/v1", SecretRef(env="K")
    )
    gw = await start_test_gateway([RouteSpec(MODEL, (), (spec,))], keys=KEYS)
    try:
        status, headers, data = await post(gw, "/v1/rerank", {"model": MODEL, "query": "q"})
        assert status == 503
        assert "retry-after" in {k.lower() for k in headers}
        error = json.loads(data)["error"]
        assert "no fallback provider serves /v1/rerank" in error["message"]
        assert "openai has no /v1/rerank endpoint" in error["message"]
        assert provider.received == []
    finally:
        await gw.stop()
        await provider.stop()


async def test_unrouted_paths_and_methods(engines: list[Engine]) -> None:
    gw = await start_test_gateway([RouteSpec(MODEL, (engines[0].url,))])
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(gw.url + "/v1/audio/transcriptions", data=b"x") as r:
                assert r.status == 404
            async with s.get(gw.url + "/v1/responses") as r:
                assert r.status == 405
                assert "Use POST for /v1/responses" in (await r.json())["error"]["message"]
    finally:
        await gw.stop()
