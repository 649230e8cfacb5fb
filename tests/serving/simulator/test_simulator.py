"""The engine simulator over real sockets: the OpenAI SDK, /metrics, queueing, faults, caching."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hedge_serving.simulator import RunningSimulator, SimulatorConfig, start_simulator

MODEL = "sim-model"
USER = [{"role": "user", "content": "say something nice about hedges"}]


class StartSim(Protocol):
    async def __call__(self, **overrides: Any) -> RunningSimulator: ...


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSim]:
    """Start simulators on 127.0.0.1 with fast defaults; all are stopped after the test."""
    started: list[RunningSimulator] = []

    async def start(**overrides: Any) -> RunningSimulator:
        fields: dict[str, Any] = {
            "served_model_names": [MODEL],
            "ttft_ms": 1.0,
            "itl_ms": 1.0,
            "prefill_ms_per_token": 0.0,
        }
        fields.update(overrides)
        sim = await start_simulator(SimulatorConfig(**fields), fields.get("host", "127.0.0.1"), 0)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        await sim.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def sdk(sim: RunningSimulator) -> openai.AsyncOpenAI:
    # No retries: a fault must surface as the error it is, not be retried away.
    return openai.AsyncOpenAI(base_url=sim.base_url, api_key="unused", max_retries=0)


async def scrape(http: aiohttp.ClientSession, sim: RunningSimulator) -> dict[str, Any]:
    """Parse /metrics into {sample name: [(labels, value)]} with prometheus_client's parser."""
    async with http.get(sim.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    samples: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: dict[str, Any], name: str, **labels: str) -> float:
    matches = [v for lab, v in samples[name] if labels.items() <= lab.items()]
    assert len(matches) == 1, (name, labels, samples.get(name))
    return float(matches[0])


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Poll `check` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


# --- the OpenAI API through the official SDK ---------------------------------------------------


async def test_models_lists_served_names_then_adapters(start_sim: StartSim) -> None:
    sim = await start_sim(
        served_model_names=["llama-3-8b", "llama"],
        model_path="meta-llama/Meta-Llama-3-8B-Instruct",
        lora_modules={"sql-lora": "/adapters/sql"},
        max_model_len=4096,
    )
    async with sdk(sim) as client:
        models = [m async for m in client.models.list()]
    assert [m.id for m in models] == ["llama-3-8b", "llama", "sql-lora"]
    base, _, lora = (m.model_dump() for m in models)
    assert base["owned_by"] == "vllm" and base["root"] == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert base["max_model_len"] == 4096 and base["parent"] is None
    assert lora["root"] == "/adapters/sql" and lora["parent"] == "llama-3-8b"


async def test_chat_completion_is_deterministic_and_sized_by_max_tokens(
    start_sim: StartSim,
) -> None:
    sim = await start_sim(default_max_tokens=7)
    async with sdk(sim) as client:
        first = await client.chat.completions.create(model=MODEL, messages=USER, max_tokens=5)
        again = await client.chat.completions.create(model=MODEL, messages=USER, max_tokens=5)
        newer = await client.chat.completions.create(
            model=MODEL, messages=USER, max_completion_tokens=3
        )
        default = await client.chat.completions.create(model=MODEL, messages=USER)
        other = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "something else"}], max_tokens=5
        )
    choice = first.choices[0]
    assert first.object == "chat.completion" and first.id.startswith("chatcmpl-")
    assert first.model == MODEL
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    assert choice.message.content is not None and len(choice.message.content.split()) == 5
    assert again.choices[0].message.content == choice.message.content
    assert other.choices[0].message.content != choice.message.content
    # role marker + 5 words + assistant marker
    assert first.usage is not None
    assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (7, 5)
    assert first.usage.total_tokens == 12
    assert newer.usage is not None and newer.usage.completion_tokens == 3
    # No limit given: the default length stands for an EOS, so the reason is "stop".
    assert default.usage is not None and default.usage.completion_tokens == 7
    assert default.choices[0].finish_reason == "stop"


async def test_chat_stream_matches_the_unstreamed_answer(start_sim: StartSim) -> None:
    sim = await start_sim()
    async with sdk(sim) as client:
        whole = await client.chat.completions.create(model=MODEL, messages=USER, max_tokens=6)
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=USER,
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        plain = await client.chat.completions.create(
            model=MODEL, messages=USER, max_tokens=2, stream=True
        )
        plain_chunks = [chunk async for chunk in plain]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] == "length" and set(finals[:-1]) == {None}
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == 6
    assert usage_chunk.usage.prompt_tokens == whole.usage.prompt_tokens  # type: ignore[union-attr]
    assert all(c.usage is None for c in plain_chunks)
    assert len(plain_chunks) == 3  # role chunk + 2 tokens


async def test_stream_wire_format_is_sse_ending_with_done(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim()
    body = {"model": MODEL, "prompt": "once upon a time", "max_tokens": 3, "stream": True}
    async with http.post(sim.base_url + "/completions", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        raw = (await resp.read()).decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: {") for e in events[:-2])
    assert [p["choices"][0]["finish_reason"] for p in payloads] == [None, None, "length"]
    assert all(p["object"] == "text_completion" for p in payloads)


async def test_completions_batch_n_and_stop_strings(start_sim: StartSim) -> None:
    sim = await start_sim()
    async with sdk(sim) as client:
        batch = await client.completions.create(
            model=MODEL, prompt=["first prompt", "second prompt here"], n=2, max_tokens=4
        )
        free = await client.completions.create(model=MODEL, prompt="tell me", max_tokens=10)
        words = free.choices[0].text.split()
        stopped = await client.completions.create(
            model=MODEL, prompt="tell me", max_tokens=10, stop=[words[5]]
        )
        tokens = await client.completions.create(model=MODEL, prompt=[1, 2, 3], max_tokens=1)
        streamed = await client.completions.create(
            model=MODEL, prompt="tell me", max_tokens=10, stream=True, stop=words[5]
        )
        streamed_text = "".join([c.choices[0].text async for c in streamed])
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert batch.choices[0].text != batch.choices[1].text  # n samples differ
    assert batch.usage is not None
    assert (batch.usage.prompt_tokens, batch.usage.completion_tokens) == (3 + 4, 16)
    cut = free.choices[0].text.index(words[5])
    assert stopped.choices[0].text == free.choices[0].text[:cut]
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.model_dump()["choices"][0]["stop_reason"] == words[5]
    assert streamed_text == stopped.choices[0].text
    assert tokens.usage is not None and tokens.usage.prompt_tokens == 3


async def test_embeddings_are_deterministic_unit_vectors(start_sim: StartSim) -> None:
    sim = await start_sim(embedding_dim=64)
    async with sdk(sim) as client:
        # The SDK asks for base64 unless told otherwise, and decodes it.
        b64 = await client.embeddings.create(model=MODEL, input=["hedge row", "garden wall"])
        floats = await client.embeddings.create(
            model=MODEL, input=["hedge row", "garden wall"], encoding_format="float"
        )
        short = await client.embeddings.create(
            model=MODEL, input="hedge row", dimensions=8, encoding_format="float"
        )
    assert [d.index for d in b64.data] == [0, 1]
    first, second = (d.embedding for d in floats.data)
    assert len(first) == 64 and math.isclose(math.fsum(v * v for v in first), 1.0)
    assert first != second
    assert b64.data[0].embedding == pytest.approx(first, abs=1e-6)
    assert len(short.data[0].embedding) == 8
    assert math.isclose(math.fsum(v * v for v in short.data[0].embedding), 1.0)
    assert floats.usage.prompt_tokens == 4 and floats.model == MODEL


# --- errors -------------------------------------------------------------------------------------


# vLLM 0.32's two kinds of 400: "Bad Request" (the body does not fit the request schema; param
# names the body field) and BadRequestError (a well-formed request it cannot serve). The
# conformance test in tests/engine holds these to real vLLM.
@pytest.mark.parametrize(
    ("path", "body", "status", "err_type", "param", "message"),
    [
        ("/chat/completions", b"{not json", 400, "Bad Request", "body.1", "JSON decode error"),
        ("/chat/completions", b"[1, 2]", 400, "Bad Request", "body", "valid dictionary"),
        ("/chat/completions", {"model": MODEL}, 400, "Bad Request", "body.messages",
         "Field required"),
        ("/chat/completions", {"model": MODEL, "messages": "hi"}, 400, "Bad Request",
         "body.messages", "valid list"),
        ("/chat/completions", {"model": MODEL, "messages": []}, 400, "BadRequestError", None,
         "empty conversation"),
        ("/chat/completions", {"model": MODEL, "messages": [{"content": "x"}]}, 400,
         "Bad Request", "body.messages.0.role", "role"),
        ("/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": 5}]},
         400, "Bad Request", "body.messages.0.content", "content"),
        ("/chat/completions", {"messages": USER, "max_tokens": "ten"}, 400, "Bad Request",
         "body.max_tokens", "valid integer"),
        ("/chat/completions", {"messages": USER, "max_tokens": 0}, 400, "BadRequestError",
         "max_tokens", "max_tokens must be at least 1, got 0."),
        ("/chat/completions", {"messages": USER, "max_tokens": 65}, 400, "BadRequestError",
         "max_tokens", "max_tokens=65 cannot be greater than max_model_len=64"),
        ("/chat/completions", {"messages": USER, "n": 0}, 400, "BadRequestError", None,
         "n must be at least 1, got 0."),
        ("/chat/completions", {"messages": USER, "stream": "maybe"}, 400, "Bad Request",
         "body.stream", "valid boolean"),
        ("/chat/completions", {"messages": USER, "stream_options": {"include_usage": True}},
         400, "BadRequestError", "stream_options", "stream=True"),
        ("/chat/completions", {"messages": USER, "temperature": "hot"}, 400, "Bad Request",
         "body.temperature", "valid number"),
        ("/chat/completions", {"model": "gpt-4", "messages": USER}, 404, "NotFoundError",
         "model", "The model `gpt-4` does not exist. Valid aliases: sim-model."),
        ("/completions", {"model": MODEL}, 400, "BadRequestError", "prompt",
         "Either prompt or prompt_embeds must be provided"),
        ("/completions", {"prompt": [1, "a"]}, 400, "Bad Request", "body.prompt", "token ids"),
        ("/completions", {"prompt": "x " * 70, "max_tokens": 10}, 400, "BadRequestError",
         "input_tokens", "maximum context length is 64 tokens. However, your prompt contains"),
        ("/completions", {"prompt": "x " * 60, "max_tokens": 10}, 400, "BadRequestError",
         "max_tokens", "maximum context length is 64 tokens. However, you requested 71 tokens"),
        ("/embeddings", {"input": "x", "encoding_format": "hex"}, 400, "Bad Request",
         "body.encoding_format", "'float' or 'base64'"),
        ("/embeddings", {"model": "other", "input": "x"}, 404, "NotFoundError", "model",
         "`other`"),
    ],
)  # fmt: skip
async def test_bad_requests_get_vllm_error_shape(
    start_sim: StartSim,
    http: aiohttp.ClientSession,
    path: str,
    body: Any,
    status: int,
    err_type: str,
    param: str | None,
    message: str,
) -> None:
    sim = await start_sim(max_model_len=64)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    async with http.post(sim.base_url + path, data=data, headers=headers) as resp:
        assert resp.status == status
        error = await resp.json()
    assert error == {
        "error": {
            "message": error["error"]["message"],
            "type": err_type,
            "param": param,
            "code": status,
        }
    }
    assert message in error["error"]["message"]


async def test_lax_values_are_coerced_as_vllm_does(start_sim: StartSim) -> None:
    """vLLM's request models are pydantic in lax mode: "4" is 4, "yes" is true."""
    sim = await start_sim()
    async with sdk(sim) as client:
        resp = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=USER, extra_body={"max_tokens": "4", "stream": "no", "n": 1.0}
        )
    parsed = resp.parse()
    assert parsed.usage is not None and parsed.usage.completion_tokens == 4


async def test_unknown_routes_answer_like_fastapi(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim()
    async with http.post(sim.base_url + "/nope", json={}) as resp:
        assert (resp.status, await resp.json()) == (404, {"detail": "Not Found"})
    async with http.delete(sim.base_url + "/models") as resp:
        assert (resp.status, await resp.json()) == (405, {"detail": "Method Not Allowed"})


async def test_sdk_surfaces_client_errors(start_sim: StartSim) -> None:
    sim = await start_sim()
    async with sdk(sim) as client:
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            await client.chat.completions.create(model="gpt-4o", messages=USER)
        with pytest.raises(openai.BadRequestError, match="empty conversation") as raised:
            await client.chat.completions.create(model=MODEL, messages=[])
        assert raised.value.type == "BadRequestError"


# --- metrics ------------------------------------------------------------------------------------

EXPECTED_METRICS = [
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:inter_token_latency_seconds_bucket",
    "vllm:request_time_per_output_token_seconds_bucket",
    "vllm:e2e_request_latency_seconds_count",
    "vllm:request_success_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
]


async def test_metrics_count_traffic_under_vllm_names(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(served_model_names=["m-primary", "m-alias"])
    before = await scrape(http, sim)
    for name in EXPECTED_METRICS:
        assert all(labels["model_name"] == "m-primary" for labels, _ in before[name]), name
    assert value(before, "vllm:request_success_total", finished_reason="length") == 0
    async with sdk(sim) as client:
        await client.completions.create(model="m-alias", prompt="a b c", max_tokens=4)
        stream = await client.chat.completions.create(
            model="m-primary", messages=USER, max_tokens=3, stream=True
        )
        async for _ in stream:
            pass
        await client.chat.completions.create(model="m-primary", messages=USER)
    after = await scrape(http, sim)
    assert value(after, "vllm:request_success_total", finished_reason="length") == 2
    assert value(after, "vllm:request_success_total", finished_reason="stop") == 1
    assert value(after, "vllm:prompt_tokens_total") == 4 + 7 + 7
    assert value(after, "vllm:generation_tokens_total") == 4 + 3 + 16
    assert value(after, "vllm:time_to_first_token_seconds_count") == 3
    assert value(after, "vllm:e2e_request_latency_seconds_count") == 3
    assert value(after, "vllm:inter_token_latency_seconds_count") == 3 + 2 + 15
    assert value(after, "vllm:request_time_per_output_token_seconds_count") == 3
    assert value(after, "vllm:prefix_cache_queries_total") == 18
    assert value(after, "vllm:num_requests_running") == 0
    assert value(after, "vllm:num_requests_waiting") == 0
    assert value(after, "vllm:time_to_first_token_seconds_sum") > 0.003  # 3 x ttft_ms=1


# --- capacity -----------------------------------------------------------------------------------


async def test_requests_beyond_max_concurrency_wait_in_fifo_order(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(max_concurrency=1)
    sim.set_faults(hang=True)  # the first request holds the only slot until released
    finished: list[int] = []

    async def ask(i: int) -> None:
        await client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2)
        finished.append(i)

    async def gauges(running: int, waiting: int) -> bool:
        samples = await scrape(http, sim)
        return (value(samples, "vllm:num_requests_running"),
                value(samples, "vllm:num_requests_waiting")) == (running, waiting)  # fmt: skip

    async with sdk(sim) as client:
        tasks = []
        for i in range(3):
            tasks.append(asyncio.create_task(ask(i)))
            await eventually(lambda i=i: gauges(1, i))
        sim.set_faults(hang=False)
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert finished == [0, 1, 2]
    samples = await scrape(http, sim)
    assert value(samples, "vllm:request_queue_time_seconds_count") == 3
    assert await gauges(0, 0)


async def test_running_count_never_exceeds_capacity(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(max_concurrency=2, itl_ms=2.0)
    seen: set[tuple[float, float]] = set()
    async with sdk(sim) as client:
        calls = [
            client.chat.completions.create(model=MODEL, messages=USER, max_tokens=15)
            for _ in range(6)
        ]
        work = asyncio.ensure_future(asyncio.gather(*calls))
        while not work.done():
            samples = await scrape(http, sim)
            seen.add((value(samples, "vllm:num_requests_running"),
                      value(samples, "vllm:num_requests_waiting")))  # fmt: skip
        results = await work
    assert len(results) == 6
    assert max(running for running, _ in seen) == 2
    assert max(waiting for _, waiting in seen) > 0


async def test_client_disconnect_frees_the_slot(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(max_concurrency=1, itl_ms=5.0)
    body = {"model": MODEL, "messages": USER, "max_tokens": 2000, "stream": True}
    async with http.post(sim.base_url + "/chat/completions", json=body) as resp:
        await resp.content.readline()  # the first event arrived: the request is running
        assert value(await scrape(http, sim), "vllm:num_requests_running") == 1
        resp.close()  # hang up mid-stream, as a gateway does on timeout

    async def freed() -> bool:
        samples = await scrape(http, sim)
        aborted = value(samples, "vllm:request_success_total", finished_reason="abort")
        return value(samples, "vllm:num_requests_running") == 0 and aborted == 1

    await eventually(freed)


# --- faults -------------------------------------------------------------------------------------


async def test_health_and_the_fault_admin_endpoint(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim()
    faults_url = sim.url + "/_hedge/sim/faults"
    async with http.get(sim.url + "/health") as resp:
        assert resp.status == 200 and await resp.read() == b""
    async with http.post(faults_url, json={"fail_health": True}) as resp:
        assert resp.status == 200 and (await resp.json())["fail_health"] is True
    async with http.get(sim.url + "/health") as resp:
        assert resp.status == 503
    async with http.get(faults_url) as resp:
        assert await resp.json() == {
            "fail_health": True,
            "error_rate": 0.0,
            "error_status": 500,
            "drop_after_chunks": None,
            "hang": False,
            "slowdown": 1.0,
        }
    for bad in ({"fail_health": "yes"}, {"error_rate": 3}, {"explode": True}):
        async with http.post(faults_url, json=bad) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["type"] == "BadRequestError"
    async with http.get(faults_url) as resp:
        assert (await resp.json())["error_rate"] == 0.0  # rejected updates change nothing
    async with http.delete(faults_url) as resp:
        assert (await resp.json())["fail_health"] is False
    async with http.get(sim.url + "/health") as resp:
        assert resp.status == 200


async def test_injected_errors_reach_the_sdk_as_server_errors(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(seed=3)
    async with sdk(sim) as client:
        sim.set_faults(error_rate=1.0)
        with pytest.raises(openai.InternalServerError) as raised:
            await client.chat.completions.create(model=MODEL, messages=USER)
        assert raised.value.status_code == 500
        with pytest.raises(openai.InternalServerError):
            await client.embeddings.create(model=MODEL, input="x")
        sim.set_faults(error_status=503)
        with pytest.raises(openai.InternalServerError) as raised:
            await client.completions.create(model=MODEL, prompt="x")
        assert raised.value.status_code == 503
        sim.set_faults(error_rate=0.5, error_status=500)
        outcomes = []
        for _ in range(40):
            try:
                await client.completions.create(model=MODEL, prompt="x", max_tokens=1)
                outcomes.append(True)
            except openai.InternalServerError:
                outcomes.append(False)
    assert 5 < outcomes.count(False) < 35
    samples = await scrape(http, sim)
    assert value(samples, "vllm:request_success_total", finished_reason="length") == outcomes.count(
        True
    )


async def test_dropped_connection_mid_stream_raises_in_the_sdk(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim()
    sim.set_faults(drop_after_chunks=3)
    received = []
    async with sdk(sim) as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=USER, max_tokens=20, stream=True
        )
        with pytest.raises(openai.APIConnectionError):
            async for chunk in stream:
                received.append(chunk)
        assert len(received) == 3  # role chunk + 2 tokens, then the connection is gone
        sim.set_faults(drop_after_chunks=0)
        with pytest.raises(openai.APIConnectionError):
            await client.chat.completions.create(model=MODEL, messages=USER)
    assert (
        value(await scrape(http, sim), "vllm:request_success_total", finished_reason="abort") == 1
    )


async def test_hang_holds_requests_until_cleared(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim()
    async with http.post(sim.url + "/_hedge/sim/faults", json={"hang": True}) as resp:
        assert resp.status == 200
    async with sdk(sim) as client:
        task = asyncio.create_task(
            client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2)
        )

        async def running() -> bool:
            return value(await scrape(http, sim), "vllm:num_requests_running") == 1

        await eventually(running)
        assert not task.done()
        async with http.post(sim.url + "/_hedge/sim/faults", json={"hang": False}) as resp:
            assert resp.status == 200
        result = await asyncio.wait_for(task, 5)
    assert result.choices[0].finish_reason == "length"


async def test_slowdown_stretches_time_to_first_token(start_sim: StartSim) -> None:
    sim = await start_sim(ttft_ms=20.0)
    sim.set_faults(slowdown=4.0)
    async with sdk(sim) as client:
        started = time.perf_counter()
        await client.completions.create(model=MODEL, prompt="x", max_tokens=1)
    assert time.perf_counter() - started >= 0.080


async def test_startup_delay_reports_loading_then_healthy(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(startup_delay_ms=150.0)
    async with http.get(sim.url + "/health") as resp:
        assert resp.status == 503
    body = {"model": MODEL, "prompt": "x"}
    async with http.post(sim.base_url + "/completions", json=body) as resp:
        assert resp.status == 503

    async def healthy() -> bool:
        async with http.get(sim.url + "/health") as resp:
            return resp.status == 200

    await eventually(healthy)


# --- prefix cache -------------------------------------------------------------------------------


async def _stream_ttft(client: openai.AsyncOpenAI, prompt: str) -> float:
    started = time.perf_counter()
    stream = await client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, stream=True)
    ttft = 0.0
    async for _ in stream:
        ttft = ttft or time.perf_counter() - started
    return ttft


async def test_repeated_prefix_is_cached_and_answers_sooner(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(prefill_ms_per_token=0.5, prefix_cache_blocks=100)
    shared = " ".join(f"doc{i}" for i in range(300))  # + BOS = 301 tokens = 18 full blocks
    async with sdk(sim) as client:
        cold = await _stream_ttft(client, shared)
        after_cold = await scrape(http, sim)
        warm = await _stream_ttft(client, shared)
        other = await _stream_ttft(client, "different " + shared)
    samples = await scrape(http, sim)
    assert cold >= 0.150  # 301 uncached tokens x 0.5 ms
    assert warm < cold / 2
    assert other >= 0.150  # a different first block: nothing after it can hit
    assert value(after_cold, "vllm:prefix_cache_hits_total") == 0
    assert value(samples, "vllm:prefix_cache_hits_total") == 18 * 16
    assert value(samples, "vllm:prefix_cache_queries_total") == 301 + 301 + 302
    assert value(samples, "vllm:kv_cache_usage_perc") == pytest.approx(36 / 100)


# --- many in one loop; stop; CLI ----------------------------------------------------------------


async def test_many_simulators_share_one_loop_with_separate_state(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    # Pod IPs are loopback addresses sharing the engine port, as in the local cluster.
    first = await start_sim(host="127.0.0.2")
    started = time.perf_counter()
    others = [
        await start_simulator(
            SimulatorConfig(served_model_names=[f"model-{i}"], ttft_ms=1, itl_ms=1),
            f"127.0.0.{i}",
            first.port,
        )
        for i in range(3, 43)
    ]
    try:
        busy, idle = others[0], others[1]
        assert (busy.url, idle.url) == (
            f"http://127.0.0.3:{first.port}",
            f"http://127.0.0.4:{first.port}",
        )
        async with sdk(busy) as client:
            await client.completions.create(model="model-3", prompt="x", max_tokens=1)
        for sim in others:
            async with http.get(sim.url + "/health") as resp:
                assert resp.status == 200
        busy_samples, idle_samples = await scrape(http, busy), await scrape(http, idle)
        assert value(busy_samples, "vllm:request_success_total", finished_reason="length") == 1
        assert value(idle_samples, "vllm:request_success_total", finished_reason="length") == 0
        assert value(idle_samples, "vllm:num_requests_running", model_name="model-4") == 0
    finally:
        await asyncio.gather(*(sim.stop() for sim in others))
    assert time.perf_counter() - started < 5.0  # cheap to start and stop


async def test_stop_releases_the_port_and_ends_inflight_requests(start_sim: StartSim) -> None:
    sim = await start_sim()
    sim.set_faults(hang=True)
    async with sdk(sim) as client:
        pending = asyncio.create_task(client.chat.completions.create(model=MODEL, messages=USER))

        async def admitted() -> bool:
            return sim.engine.slots.running == 1

        await eventually(admitted)
        await asyncio.wait_for(sim.stop(), 2)
        with pytest.raises(openai.APIConnectionError):
            await asyncio.wait_for(pending, 5)
    again = await start_simulator(SimulatorConfig(), "127.0.0.1", sim.port)
    await again.stop()


async def test_cli_serves_until_sigterm(http: aiohttp.ClientSession) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hedge_serving.simulator", "--port", "0", "--model", "cli-model",
        "--ttft-ms", "1", "--itl-ms", "1", "--max-concurrency", "4",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        url = line.rsplit(" ", 1)[-1].strip()
        assert url.startswith("http://127.0.0.1:"), line
        async with http.get(url + "/v1/models") as resp:
            assert [m["id"] for m in (await resp.json())["data"]] == ["cli-model"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
