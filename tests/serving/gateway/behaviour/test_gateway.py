"""The gateway over self-hosted backends, driven with the official openai SDK."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest

from hedge_serving.gateway.app import RunningGateway
from hedge_serving.gateway.proxy import ProxySettings
from hedge_serving.gateway.routing import RouteSpec, ServingOptions
from tests.serving.gateway_stubs.engines import Engine
from tests.serving.gateway_stubs.harness import Clients, start_test_gateway, wait_for
from tests.serving.gateway_stubs.replies import reply_text

MODEL = "llama-3-8b"


@pytest.fixture
async def engines() -> AsyncIterator[list[Engine]]:
    started = [await Engine(f"e{i}", MODEL).start() for i in range(2)]
    yield started  # type: ignore[misc]
    for e in started:
        await e.stop()


@pytest.fixture
async def gw(engines: list[Engine]) -> AsyncIterator[RunningGateway]:
    running = await start_test_gateway([RouteSpec(MODEL, tuple(e.url for e in engines))])
    yield running
    await running.stop()


async def test_chat_completion_non_streaming(client: Clients, gw: RunningGateway) -> None:
    raw = await client(gw).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == reply_text("hello")
    assert raw.headers["x-hedge-served-by"] == "self-hosted"
    assert "x-hedge-fallback-reason" not in raw.headers


async def test_chat_completion_streams_every_chunk(client: Clients, gw: RunningGateway) -> None:
    stream = await client(gw).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply_text("hi")
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len(chunks) == len(reply_text("hi").split()) + 1  # role chunk + one per token


async def test_stream_is_not_buffered(
    client: Clients, engines: list[Engine], gw: RunningGateway
) -> None:
    """The first chunk reaches the client while the engine is still generating."""
    for e in engines:
        e.faults.chunk_delay_s = 0.2
    stream = await client(gw).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "slow"}], stream=True
    )
    loop = asyncio.get_running_loop()
    start = loop.time()
    first = await stream.__anext__()
    assert first.choices[0].delta.role == "assistant"
    assert loop.time() - start < 0.15
    assert sum(e.in_flight for e in engines) == 1  # still generating
    await stream.close()


async def test_completions_and_embeddings(client: Clients, gw: RunningGateway) -> None:
    c = client(gw)
    completion = await c.completions.create(model=MODEL, prompt="abc", max_tokens=3)
    assert (
        completion.choices[0].text
        == "".join(reply_text("abc").split(" ")[:3]).replace("w", " w").lstrip()
    )
    assert completion.choices[0].finish_reason == "length"
    emb = await c.embeddings.create(model=MODEL, input=["a", "bbb"])
    assert [d.embedding[2] for d in emb.data] == [1.0, 3.0]


async def test_models_lists_and_retrieves(client: Clients) -> None:
    gw = await start_test_gateway(
        [RouteSpec("b-model", ("http://127.0.0.1:9",)), RouteSpec("a-model", (), owner="team-a")]
    )
    try:
        c = client(gw)
        models = await c.models.list()
        assert [m.id for m in models.data] == ["a-model", "b-model"]
        assert models.data[0].owned_by == "team-a"
        assert (await c.models.retrieve("b-model")).id == "b-model"
        with pytest.raises(openai.NotFoundError):
            await c.models.retrieve("nope")
    finally:
        await gw.stop()


async def test_unknown_model_is_404_with_openai_error(client: Clients, gw: RunningGateway) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await client(gw).chat.completions.create(
            model="gpt-5", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.code == "model_not_found"
    assert "gpt-5" in info.value.message


async def _post_raw(gw: RunningGateway, path: str, data: bytes, **kw: object) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.post(gw.url + path, data=data, **kw) as r:  # type: ignore[arg-type]
        return r.status, json.loads(await r.read())


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "could not parse the JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"messages": []}', 400, "model parameter"),
        (b'{"model": 7}', 400, "`model` must be a string"),
        (b'{"model": "llama-3-8b", "stream": "yes"}', 400, "`stream`"),
        (b"[" * 100_000, 400, "could not parse the JSON"),
    ],
)
async def test_bad_requests_get_precise_4xx(
    client: Clients, gw: RunningGateway, body: bytes, status: int, needle: str
) -> None:
    got, doc = await _post_raw(gw, "/v1/chat/completions", body)
    assert got == status
    assert set(doc["error"]) == {"message", "type", "param", "code"}
    assert needle in doc["error"]["message"]


async def test_non_openai_paths_are_404_in_openai_shape(
    client: Clients, gw: RunningGateway
) -> None:
    async with aiohttp.ClientSession() as s:
        for method, path in [("GET", "/"), ("POST", "/v2/chat"), ("GET", "/metrics")]:
            async with s.request(method, gw.url + path) as r:
                assert r.status == 404
                assert (await r.json())["error"]["type"] == "invalid_request_error"
        async with s.get(gw.url + "/v1/chat/completions") as r:
            assert r.status == 405


async def test_body_limit(client: Clients, engines: list[Engine]) -> None:
    gw = await start_test_gateway([RouteSpec(MODEL, (engines[0].url,))], max_body_bytes=1000)
    try:
        big = json.dumps({"model": MODEL, "prompt": "x" * 2000}).encode()
        status, doc = await _post_raw(gw, "/v1/completions", big)
        assert status == 413
        assert "limit is 1000 bytes" in doc["error"]["message"]

        # chunked upload without Content-Length is limited too
        async def gen() -> AsyncIterator[bytes]:
            yield big

        status, doc = await _post_raw(gw, "/v1/completions", gen())  # type: ignore[arg-type]
        assert status == 413
    finally:
        await gw.stop()


async def test_client_api_keys(client: Clients, engines: list[Engine]) -> None:
    gw = await start_test_gateway([RouteSpec(MODEL, (engines[0].url,))], api_keys=("k1", "k2"))
    try:
        messages = [{"role": "user", "content": "x"}]
        status, doc = await _post_raw(gw, "/v1/chat/completions", b"{}")
        assert status == 401
        assert "didn't provide an API key" in doc["error"]["message"]
        for bad in ("wrong", "k1x", "k1 k2"):
            with pytest.raises(openai.AuthenticationError) as info:
                await client(gw, api_key=bad).chat.completions.create(
                    model=MODEL, messages=messages
                )  # type: ignore[arg-type]
            assert info.value.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            await client(gw, api_key="nope").models.list()
        ok = await client(gw, api_key="k2").chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
        assert ok.choices[0].message.content
        # the gateway's key is not forwarded to the backend
        assert all("Authorization" not in r.headers for r in engines[0].received)
    finally:
        await gw.stop()


async def test_least_outstanding_spreads_concurrent_requests(
    client: Clients, engines: list[Engine]
) -> None:
    gw = await start_test_gateway(
        [RouteSpec(MODEL, tuple(e.url for e in engines))],
        proxy=ProxySettings(affinity_prefix_chars=0),
    )
    try:
        for e in engines:
            e.faults.delay_s = 0.1
        c = client(gw)
        await asyncio.gather(
            *(
                c.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"u{i}"}]
                )
                for i in range(8)
            )
        )
        assert [len(e.received) for e in engines] == [4, 4]
    finally:
        await gw.stop()


async def test_prefix_affinity_keeps_shared_prefix_on_one_backend(
    client: Clients, engines: list[Engine], gw: RunningGateway
) -> None:
    c = client(gw)
    system = "You are a support bot for ACME. " * 20
    for i in range(6):
        await c.chat.completions.create(
            model=MODEL,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": f"q{i}"}],
        )
    assert sorted(len(e.received) for e in engines) == [0, 6]


async def test_retries_on_503_to_another_backend(
    client: Clients, engines: list[Engine], gw: RunningGateway
) -> None:
    engines[0].faults.status = 503
    c = client(gw)
    for i in range(30):  # prompts hash over both backends; e0 gets its 3 failures
        raw = await c.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": f"r{i}"}]
        )
        assert raw.parse().system_fingerprint == "e1"
    # after 3 consecutive failures e0's circuit is open: it stops receiving traffic
    assert len(engines[0].received) == 3


async def test_connection_refused_is_retried_and_breaker_opens(
    client: Clients, engines: list[Engine]
) -> None:
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    gw = await start_test_gateway(
        [RouteSpec(MODEL, (dead, engines[0].url))],
        proxy=ProxySettings(affinity_prefix_chars=0),  # ties alternate: the dead one is tried
    )
    try:
        c = client(gw)
        for i in range(10):
            r = await c.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"c{i}"}], stream=i % 2 == 0
            )
            if i % 2 == 0:
                assert [x async for x in r]  # type: ignore[union-attr]
        assert len(engines[0].received) == 10
        dead_backend = next(b for b in gw.table.backends() if b.url == dead)
        assert dead_backend.breaker.state.name == "OPEN"
    finally:
        await gw.stop()


async def test_half_open_probe_brings_backend_back(client: Clients, engines: list[Engine]) -> None:
    gw = await start_test_gateway(
        [RouteSpec(MODEL, tuple(e.url for e in engines))],
        breaker_open_s=0.2,
        proxy=ProxySettings(affinity_prefix_chars=0),  # plain least-outstanding: alternates
    )
    try:
        c = client(gw)
        engines[0].faults.status = 503
        for i in range(6):
            await c.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"{i}"}]
            )
        backend = next(b for b in gw.table.backends() if b.url == engines[0].url)
        assert backend.breaker.state.name == "OPEN"
        before = len(engines[0].received)
        engines[0].faults.status = None
        await wait_for(backend.breaker.available, 2.0, "half-open window")
        for i in range(6):
            await c.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"b{i}"}]
            )
        assert len(engines[0].received) > before
        assert backend.breaker.state.name == "CLOSED"
    finally:
        await gw.stop()


async def test_stream_cut_mid_way_ends_with_error_event(
    client: Clients, engines: list[Engine]
) -> None:
    engines[0].faults.cut_after = 3
    gw = await start_test_gateway([RouteSpec(MODEL, (engines[0].url,))])
    try:
        stream = await client(gw).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
        )
        got = []
        with pytest.raises(openai.APIError) as info:
            async for chunk in stream:
                got.append(chunk)
        assert len(got) == 3
        assert "upstream" in info.value.message
    finally:
        await gw.stop()


async def test_error_before_first_event_is_retried(
    client: Clients, engines: list[Engine], gw: RunningGateway
) -> None:
    engines[0].faults.error_event_first = True
    engines[1].faults.cut_after = 0
    # both fail before the first event -> nothing can serve -> 503 with Retry-After
    with pytest.raises(openai.APIStatusError) as info:
        await client(gw).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
        )
    assert info.value.status_code == 503
    assert info.value.response.headers["retry-after"]
    engines[1].faults.cut_after = None
    stream = await client(gw).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "y"}], stream=True
    )
    assert "".join([c.choices[0].delta.content or "" async for c in stream]) == reply_text("y")


async def test_no_backend_and_no_fallback_is_503_with_retry_after(client: Clients) -> None:
    gw = await start_test_gateway([RouteSpec(MODEL, ())])
    try:
        with pytest.raises(openai.APIStatusError) as info:
            await client(gw).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}]
            )
        assert info.value.status_code == 503
        assert int(info.value.response.headers["retry-after"]) > 0
        assert "no ready self-hosted backend" in info.value.message
    finally:
        await gw.stop()


async def test_request_timeout(client: Clients, engines: list[Engine]) -> None:
    engines[0].faults.chunk_delay_s = 0.3
    gw = await start_test_gateway(
        [RouteSpec(MODEL, (engines[0].url,), options=ServingOptions(request_timeout_s=0.5))]
    )
    try:
        stream = await client(gw).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
        )
        with pytest.raises(openai.APIError) as info:
            async for _ in stream:
                pass
        assert "longer than 0.5s" in info.value.message
        engines[0].faults.chunk_delay_s = 0
        engines[0].faults.delay_s = 1.0
        with pytest.raises(openai.APIStatusError) as info2:
            await client(gw).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}]
            )
        assert info2.value.status_code == 504
    finally:
        await gw.stop()


async def test_graceful_shutdown_drains_streams(client: Clients, engines: list[Engine]) -> None:
    engines[0].faults.chunk_delay_s = 0.05
    gw = await start_test_gateway([RouteSpec(MODEL, (engines[0].url,))], drain_timeout_s=10)
    stream = await client(gw).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "drain"}], stream=True
    )
    first = await stream.__anext__()
    stopping = asyncio.create_task(gw.stop())
    await wait_for(lambda: gw.gateway.draining, what="draining")
    rest = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in [first, *rest]) == reply_text("drain")
    await stopping
    with pytest.raises(openai.APIConnectionError):
        await client(gw).models.list()


async def test_metrics(client: Clients, engines: list[Engine], gw: RunningGateway) -> None:
    c = client(gw)
    await c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "m"}])
    s = await c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "m"}], stream=True
    )
    _ = [x async for x in s]
    with pytest.raises(openai.NotFoundError):
        await c.chat.completions.create(model="zzz", messages=[{"role": "user", "content": "m"}])
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as r:
            text = await r.text()
        async with session.get(f"http://127.0.0.1:{gw.admin_port}/readyz") as r:
            assert r.status == 200
    assert (
        'hedge_gateway_requests_total{model="llama-3-8b",served_by="self-hosted",status="200"} 2.0'
        in text
    )
    assert 'hedge_gateway_requests_total{model="_unknown",served_by="gateway",status="404"}' in text
    assert 'hedge_gateway_time_to_first_token_seconds_count{model="llama-3-8b"' in text
    assert (
        f'hedge_gateway_backend_in_flight{{backend="{engines[0].url}",model="llama-3-8b"}} 0.0'
        in text
    )
    assert f'hedge_gateway_circuit_state{{backend="{engines[0].url}"}} 0.0' in text
    assert "zzz" not in text  # client input never becomes a label value


async def test_stop_turns_unready_first_and_serves_through_the_drain_delay(
    client: Clients, engines: list[Engine]
) -> None:
    gw = await start_test_gateway([RouteSpec(MODEL, (engines[0].url,))], drain_delay_s=0.5)
    ready_url = f"http://127.0.0.1:{gw.admin_port}/readyz"
    async with aiohttp.ClientSession() as s:
        async with s.get(ready_url) as r:
            assert r.status == 200
        stopping = asyncio.create_task(gw.stop())
        await wait_for(lambda: gw.gateway.draining, what="draining")
        async with s.get(ready_url) as r:
            assert r.status == 503  # endpoints drop the pod ...
        done = await client(gw).chat.completions.create(  # ... while it still serves
            model=MODEL, messages=[{"role": "user", "content": "late"}]
        )
        assert done.choices[0].message.content == reply_text("late")
        assert not stopping.done()
        await stopping
    with pytest.raises(openai.APIConnectionError):
        await client(gw).models.list()
