"""Fallback to external providers, each a local stub of its public wire format."""

from __future__ import annotations

import json
import logging

import aiohttp
import openai
import pytest

from hedge_serving.gateway.keys import LocalKeyStore
from hedge_serving.gateway.routing import (
    ProviderSpec,
    ProviderType,
    RouteSpec,
    SecretRef,
    ServingOptions,
)
from tests.serving.gateway_stubs.engines import Engine
from tests.serving.gateway_stubs.harness import Clients, start_test_gateway, wait_for
from tests.serving.gateway_stubs.providers import AnthropicStub, AzureStub, OpenAIStub
from tests.serving.gateway_stubs.replies import reply_text

MODEL = "llama-3-8b"
SECRET = "sk-very-secret-value-123"
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is Hedge?"},
]
PROMPT = "Be brief.\nWhat is Hedge?"


def _spec(ptype: ProviderType, url: str, **kw: object) -> ProviderSpec:
    return ProviderSpec(
        type=ptype,
        model=str(kw.pop("model", "gpt-4o-mini")),
        base_url=url,
        api_key=SecretRef(env="PROVIDER_KEY"),
        **kw,  # type: ignore[arg-type]
    )


KEYS = LocalKeyStore({"PROVIDER_KEY": SECRET})


@pytest.mark.parametrize("stream", [False, True])
async def test_openai_compatible_fallback_when_no_backend(client: Clients, stream: bool) -> None:
    stub = await OpenAIStub(api_key=SECRET).start()
    gw = await start_test_gateway(
        [RouteSpec(MODEL, (), (_spec(ProviderType.OPENAI_COMPATIBLE, stub.url + "/v1"),))],
        keys=KEYS,
    )
    try:
        c = client(gw)
        if stream:
            async with c.chat.completions.with_streaming_response.create(
                model=MODEL, messages=MESSAGES, stream=True
            ) as raw:
                headers = raw.headers
                chunks = [chunk async for chunk in await raw.parse()]
            text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        else:
            resp = await c.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
            headers = resp.headers
            text = resp.parse().choices[0].message.content or ""
        assert text == reply_text(PROMPT)
        assert headers["x-hedge-served-by"] == "openai-compatible"
        assert headers["x-hedge-fallback-reason"] == "Unavailable"
        sent = stub.received[-1]
        assert sent.body["model"] == "gpt-4o-mini"
        assert sent.headers["Authorization"] == f"Bearer {SECRET}"
    finally:
        await gw.stop()
        await stub.stop()


async def test_openai_provider_serves_completions_and_embeddings(client: Clients) -> None:
    stub = await OpenAIStub(api_key=SECRET).start()
    gw = await start_test_gateway(
        [RouteSpec(MODEL, (), (_spec(ProviderType.OPENAI, stub.url + "/v1"),))], keys=KEYS
    )
    try:
        c = client(gw)
        raw = await c.completions.with_raw_response.create(model=MODEL, prompt="abc")
        assert raw.headers["x-hedge-served-by"] == "openai"
        assert raw.parse().choices[0].text == reply_text("abc")
        emb = await c.embeddings.create(model=MODEL, input="x")
        assert emb.data[0].embedding == [1.0, 0.0]
    finally:
        await gw.stop()
        await stub.stop()


@pytest.mark.parametrize("stream", [False, True])
async def test_azure_openai_fallback(client: Clients, stream: bool) -> None:
    stub = await AzureStub(api_key=SECRET).start()
    spec = _spec(
        ProviderType.AZURE_OPENAI, stub.url, deployment="gpt4o-prod", api_version="2024-10-21"
    )
    gw = await start_test_gateway([RouteSpec(MODEL, (), (spec,))], keys=KEYS)
    try:
        c = client(gw)
        if stream:
            s = await c.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
            chunks = [x async for x in s]
            text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            assert chunks[0].model == "gpt-4o-2024-08-06"
        else:
            raw = await c.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
            assert raw.headers["x-hedge-served-by"] == "azure-openai"
            text = raw.parse().choices[0].message.content or ""
        assert text == reply_text(PROMPT)
        sent = stub.received[-1]
        assert sent.path == "/openai/deployments/gpt4o-prod/chat/completions"
        assert sent.query == {"api-version": "2024-10-21"}
        assert sent.headers["api-key"] == SECRET
        assert "Authorization" not in sent.headers
    finally:
        await gw.stop()
        await stub.stop()


async def test_anthropic_fallback_non_streaming(client: Clients) -> None:
    stub = await AnthropicStub(api_key=SECRET).start()
    spec = _spec(ProviderType.ANTHROPIC, stub.url, model="claude-3-5-haiku-20241022")
    gw = await start_test_gateway([RouteSpec(MODEL, (), (spec,))], keys=KEYS)
    try:
        c = client(gw)
        raw = await c.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, max_tokens=5, stop=["never"], temperature=1.7
        )
        assert raw.headers["x-hedge-served-by"] == "anthropic"
        done = raw.parse()
        assert (
            done.choices[0].message.content
            == "".join(reply_text(PROMPT).split(" ")[:5]).replace("w", " w").lstrip()
        )
        assert done.choices[0].finish_reason == "length"
        assert done.usage is not None and done.usage.completion_tokens == 5
        assert done.usage.total_tokens == done.usage.prompt_tokens + 5
        sent = stub.received[-1]
        assert sent.body["system"] == "Be brief."
        assert sent.body["messages"] == [{"role": "user", "content": "What is Hedge?"}]
        assert sent.body["max_tokens"] == 5
        assert sent.body["stop_sequences"] == ["never"]
        assert sent.body["temperature"] == 1.0
        assert sent.headers["x-api-key"] == SECRET
        assert sent.headers["anthropic-version"] == "2023-06-01"
        # a stop sequence ends the answer with finish_reason "stop"
        words = reply_text(PROMPT).split(" ")
        done = await c.chat.completions.create(model=MODEL, messages=MESSAGES, stop=words[3])
        assert done.choices[0].finish_reason == "stop"
        assert done.choices[0].message.content == " ".join(words[:3]) + " "
    finally:
        await gw.stop()
        await stub.stop()


async def test_anthropic_fallback_streaming(client: Clients) -> None:
    stub = await AnthropicStub(api_key=SECRET).start()
    spec = _spec(ProviderType.ANTHROPIC, stub.url, model="claude-3-5-haiku-20241022")
    gw = await start_test_gateway([RouteSpec(MODEL, (), (spec,))], keys=KEYS)
    try:
        c = client(gw)
        s = await c.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = [x async for x in s]
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text == reply_text(PROMPT)
        finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
        assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == len(reply_text(PROMPT).split())
        assert all(ch.model == "claude-3-5-haiku-20241022" for ch in chunks)
        assert stub.received[-1].body["stream"] is True
    finally:
        await gw.stop()
        await stub.stop()


async def test_providers_tried_in_order_and_secrets_never_leak(
    client: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    broken = await OpenAIStub(api_key="other-key").start()  # rejects our key: 401
    overloaded = await AnthropicStub(api_key=SECRET).start()
    overloaded.faults.error_event_first = True  # 200, then an error event before any text
    good = await AzureStub(api_key=SECRET).start()
    specs = (
        _spec(ProviderType.OPENAI, broken.url + "/v1"),
        _spec(ProviderType.ANTHROPIC, overloaded.url, model="claude"),
        _spec(ProviderType.AZURE_OPENAI, good.url, deployment="gpt4o-prod"),
    )
    gw = await start_test_gateway([RouteSpec(MODEL, (), specs)], keys=KEYS)
    try:
        c = client(gw)
        s = await c.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        assert "".join([x.choices[0].delta.content or "" async for x in s if x.choices])
        assert "fallback openai answered HTTP 401" in caplog.text
        assert "fallback anthropic failed: stream began with an error event" in caplog.text
        assert len(good.received) == 1
        # every provider fails: a 503 whose message names no secret
        good.faults.status = 500
        overloaded.faults.error_event_first = False
        overloaded.faults.status = 529
        with pytest.raises(openai.APIStatusError) as info:
            await c.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert info.value.status_code == 503
        assert SECRET not in json.dumps(info.value.body)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as r,
        ):
            metrics = await r.text()
        assert (
            "hedge_gateway_fallbacks_total{"
            'model="llama-3-8b",provider="azure-openai",reason="Unavailable"} 2.0' in metrics
        )
        assert SECRET not in metrics
        assert SECRET not in caplog.text
        assert "sk-***" not in caplog.text  # provider error bodies are not logged either
    finally:
        await gw.stop()
        for s_ in (broken, overloaded, good):
            await s_.stop()


async def test_client_errors_from_provider_are_returned(client: Clients) -> None:
    stub = await AnthropicStub(api_key=SECRET).start()
    spec = _spec(ProviderType.ANTHROPIC, stub.url, model="claude")
    gw = await start_test_gateway([RouteSpec(MODEL, (), (spec,))], keys=KEYS)
    try:
        with pytest.raises(openai.BadRequestError) as info:  # Anthropic needs a message
            await client(gw).chat.completions.create(
                model=MODEL, messages=[{"role": "system", "content": "only a system prompt"}]
            )
        assert "at least one message" in info.value.message
        assert info.value.response.headers["x-hedge-served-by"] == "anthropic"
    finally:
        await gw.stop()
        await stub.stop()


async def test_unsupported_requests_skip_the_anthropic_provider(client: Clients) -> None:
    anthropic = await AnthropicStub(api_key=SECRET).start()
    openai_stub = await OpenAIStub(api_key=SECRET).start()
    specs = (
        _spec(ProviderType.ANTHROPIC, anthropic.url, model="claude"),
        _spec(ProviderType.OPENAI, openai_stub.url + "/v1"),
    )
    gw = await start_test_gateway([RouteSpec(MODEL, (), specs)], keys=KEYS)
    try:
        c = client(gw)
        tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
        raw = await c.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=MESSAGES,
            tools=tools,  # type: ignore[arg-type]
        )
        assert raw.headers["x-hedge-served-by"] == "openai"
        raw2 = await c.completions.with_raw_response.create(model=MODEL, prompt="x")
        assert raw2.headers["x-hedge-served-by"] == "openai"
        assert anthropic.received == []
    finally:
        await gw.stop()
        await anthropic.stop()
        await openai_stub.stop()


async def test_error_and_overload_reasons(client: Clients) -> None:
    engine = await Engine("e0", MODEL).start()
    stub = await OpenAIStub(api_key=SECRET).start()
    fallback = (_spec(ProviderType.OPENAI, stub.url + "/v1"),)
    gw = await start_test_gateway(
        [RouteSpec(MODEL, (engine.url,), fallback, ServingOptions(max_queue_depth=2))],
        keys=KEYS,
        engine_metrics_interval_s=0.05,
    )
    try:
        c = client(gw)
        raw = await c.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
        assert raw.headers["x-hedge-served-by"] == "self-hosted"
        engine.faults.status = 502
        raw = await c.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
        assert raw.headers["x-hedge-fallback-reason"] == "Error"
        engine.faults.status = None
        engine.waiting = 5
        backend = gw.table.backends()[0]
        await wait_for(lambda: backend.queue_estimate() > 2, what="scraped queue depth")
        raw = await c.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
        assert raw.headers["x-hedge-fallback-reason"] == "Overloaded"
    finally:
        await gw.stop()
        await engine.stop()
        await stub.stop()


async def test_fallback_flags_and_missing_key(client: Clients) -> None:
    stub = await OpenAIStub(api_key=SECRET).start()
    no_unavailable = ServingOptions(fallback_on_unavailable=False)
    gw = await start_test_gateway(
        [
            RouteSpec("a", (), (_spec(ProviderType.OPENAI, stub.url + "/v1"),), no_unavailable),
            RouteSpec(
                "b",
                (),
                (
                    ProviderSpec(
                        ProviderType.OPENAI, "m", stub.url + "/v1", SecretRef(env="UNSET_VAR")
                    ),
                ),
            ),
        ],
        keys=LocalKeyStore({}),
    )
    try:
        c = client(gw)
        for model in ("a", "b"):
            with pytest.raises(openai.APIStatusError) as info:
                await c.chat.completions.create(model=model, messages=MESSAGES)
            assert info.value.status_code == 503
            assert info.value.response.headers["retry-after"]
        assert stub.received == []
    finally:
        await gw.stop()
        await stub.stop()
