"""The engine simulator held to real vLLM: the same requests to both, the same shapes back.

One real `vllm serve` (the cached CPU build of the pinned release, the tiny model, started
with the operator's own arguments for a CPU-only spec) serves the whole module; each test
starts a simulator configured from the same command line (`SimulatorConfig.from_vllm_args`).
Responses are reduced to skeletons (keys, JSON types, and the literal values clients branch
on: `object`, `role`, `finish_reason`, error `type`/`param`/`code`, id prefixes), and any
difference fails. Streams are compared event by event, with runs of identical token chunks
collapsed (the two models say different things, at different lengths). /metrics is compared
on what the gateway and the autoscaler read: names, types, labels and histogram buckets.

What the simulator deliberately does differently (its generated text, token counts, the
wording of error messages, /v1/embeddings for any model) is not compared.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hedge_dev import vllm
from hedge_dev.cluster import free_port
from hedge_operator.provisioning.builders import engine_args
from hedge_serving.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.operator.factories import model, spec_with

# The first test also waits for vLLM (and, on a fresh machine, its install).
pytestmark = pytest.mark.timeout(900)
MODEL = "tiny-llama"
MAX_MODEL_LEN = 256
# What the operator writes for a small CPU-only model (the flags test judges the rest).
SPEC = spec_with(
    model={"source": "pvc://models/tiny-llama", "name": MODEL},
    resources={"gpus": 0, "gpuType": None},
    engine={"maxModelLen": MAX_MODEL_LEN},
)
USER = [{"role": "user", "content": "Write a short poem about the sea."}]
# Greedy, so the real model's answers (and where it stops) are the same on every run.
GREEDY = {"temperature": 0, "seed": 0}


@pytest.fixture(scope="module")
def real_vllm(
    vllm_install: vllm.VllmInstall, tiny_model: Path, module_tmp: Path
) -> Iterator[vllm.VllmServer]:
    args = vllm.local_engine_args(engine_args(model(SPEC)), tiny_model, module_tmp)
    # The operator's --port is the pod's; here both servers take a free loopback port.
    port_at = args.index("--port")
    del args[port_at : port_at + 2]
    server = vllm.VllmServer.start(
        vllm_install,
        tiny_model,
        host="127.0.0.1",
        port=free_port(),
        args=args[1:],
        log_path=module_tmp / "vllm.log",
    )
    try:
        server.wait_healthy(timeout=300)
        yield server
    finally:
        server.stop()


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    config = SimulatorConfig.from_vllm_args(
        ["vllm", "serve", *engine_args(model(SPEC))],
        {"sim.hedge.dev/ttft-ms": "1", "sim.hedge.dev/itl-ms": "1"},
    )
    running = await start_simulator(config, "127.0.0.1", 0)
    yield running
    await running.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        yield session


# ------------------------------------------------------------------------- skeletons

# Values clients and the gateway branch on are compared literally; everything else by type.
LITERAL_KEYS = frozenset({"object", "role", "finish_reason", "type", "param", "code", "owned_by"})


def skeleton(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: skeleton(v, k) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [skeleton(v, key) for v in value]
    if key == "id" and isinstance(value, str):
        return value.split("-", 1)[0] + "-…"  # chatcmpl-, cmpl-, modelperm-
    if key == "param" and isinstance(value, str):
        return re.sub(r"\.\d+$", ".N", value)  # body.<offset of a JSON syntax error>
    if key in LITERAL_KEYS:
        return value
    return "null" if value is None else type(value).__name__


def sse_events(text: str) -> list[Any]:
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def collapse(items: list[Any]) -> list[Any]:
    """Runs of equal items as one (token chunks repeat as often as tokens are generated)."""
    out: list[Any] = []
    for item in items:
        if not out or out[-1] != item:
            out.append(item)
    return out


async def exchange(
    http: aiohttp.ClientSession,
    base: str,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str, Any]:
    """(status, media type, skeleton of the body: JSON, or the collapsed SSE events)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json"} if headers is None else headers
    async with http.request(method, base + path, data=data, headers=sent) as resp:
        media = resp.content_type
        text = await resp.text()
    if media == "text/event-stream":
        return resp.status, media, collapse([skeleton(e) for e in sse_events(text)])
    return resp.status, media, skeleton(json.loads(text)) if text else ""


# --------------------------------------------------------------------------- the API

LONG_PROMPT = "The quick brown fox jumps over the lazy dog. " * 60
CASES: dict[str, tuple[str, str, Any]] = {
    "health": ("GET", "/health", None),
    "version": ("GET", "/version", None),
    "models": ("GET", "/v1/models", None),
    "chat": ("POST", "/v1/chat/completions",
             {"model": MODEL, "messages": USER, "max_tokens": 4, **GREEDY}),
    "chat-stream": ("POST", "/v1/chat/completions",
                    {"model": MODEL, "messages": USER, "max_tokens": 4, "stream": True, **GREEDY}),
    "chat-stream-usage": ("POST", "/v1/chat/completions",
                          {"model": MODEL, "messages": USER, "max_tokens": 4, "stream": True,
                           "stream_options": {"include_usage": True}, **GREEDY}),
    "completion": ("POST", "/v1/completions",
                   {"model": MODEL, "prompt": "Hello, how are", "max_tokens": 4, **GREEDY}),
    "completion-stream": ("POST", "/v1/completions",
                          {"model": MODEL, "prompt": "Hello, how are", "max_tokens": 4,
                           "stream": True, **GREEDY}),
    "completion-stream-usage": ("POST", "/v1/completions",
                                {"model": MODEL, "prompt": "Hello, how are", "max_tokens": 4,
                                 "stream": True, "stream_options": {"include_usage": True},
                                 **GREEDY}),
    "completion-without-model": ("POST", "/v1/completions",
                                 {"prompt": "Hello", "max_tokens": 2, **GREEDY}),
    # Errors.
    "unknown-model": ("POST", "/v1/chat/completions", {"model": "gpt-4o", "messages": USER}),
    "too-many-tokens": ("POST", "/v1/chat/completions",
                        {"model": MODEL, "messages": USER, "max_tokens": 100_000}),
    "too-many-tokens-stream": ("POST", "/v1/chat/completions",
                               {"model": MODEL, "messages": USER, "max_tokens": 100_000,
                                "stream": True}),
    "prompt-too-long": ("POST", "/v1/completions",
                        {"model": MODEL, "prompt": LONG_PROMPT, "max_tokens": 4}),
    "bad-json": ("POST", "/v1/chat/completions", b'{"model": "tiny-llama", "messages": ['),
    "not-an-object": ("POST", "/v1/chat/completions", b"[1, 2]"),
    "bad-parameter-type": ("POST", "/v1/chat/completions",
                           {"model": MODEL, "messages": USER, "temperature": "hot"}),
    "bad-parameter-value": ("POST", "/v1/chat/completions",
                            {"model": MODEL, "messages": USER, "max_tokens": 0}),
    "missing-messages": ("POST", "/v1/chat/completions", {"model": MODEL}),
    "messages-not-a-list": ("POST", "/v1/chat/completions", {"model": MODEL, "messages": "hi"}),
    "missing-prompt": ("POST", "/v1/completions", {"model": MODEL}),
    "stream-options-without-stream": ("POST", "/v1/chat/completions",
                                      {"model": MODEL, "messages": USER, "max_tokens": 2,
                                       "stream_options": {"include_usage": True}}),
    "unknown-route": ("POST", "/v1/nothing-here", {}),
    "wrong-method": ("DELETE", "/v1/models", None),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
async def test_simulator_answers_like_vllm(
    real_vllm: vllm.VllmServer, sim: RunningSimulator, http: aiohttp.ClientSession, case: str
) -> None:
    method, path, body = CASES[case]
    want = await exchange(http, real_vllm.url, method, path, body)
    got = await exchange(http, sim.url, method, path, body)
    assert got == want, f"{case}: simulator differs from vLLM\n  vLLM: {want}\n  sim:  {got}"


async def test_sdk_sees_the_same_results_and_errors(
    real_vllm: vllm.VllmServer, sim: RunningSimulator
) -> None:
    """Through the official openai SDK: the same finish reasons, usage and exception fields."""

    async def observe(base_url: str) -> list[Any]:
        seen: list[Any] = []
        async with openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0) as client:
            chat = await client.chat.completions.create(
                model=MODEL, messages=USER, max_tokens=4, temperature=0, seed=0
            )
            assert chat.usage is not None
            seen.append((chat.choices[0].finish_reason, chat.usage.completion_tokens))
            stream = await client.chat.completions.create(
                model=MODEL, messages=USER, max_tokens=4, temperature=0, seed=0, stream=True,
                stream_options={"include_usage": True},
            )  # fmt: skip
            chunks = [c async for c in stream]
            usage = chunks[-1].usage
            assert usage is not None
            seen.append((chunks[0].choices[0].delta.role, usage.completion_tokens))
            for kwargs in ({"model": "nope"}, {"model": MODEL, "max_tokens": 100_000}):
                try:
                    await client.chat.completions.create(messages=USER, **kwargs)  # type: ignore[call-overload]
                except openai.APIStatusError as exc:
                    seen.append(
                        (type(exc).__name__, exc.status_code, exc.code, exc.type, exc.param)
                    )
        return seen

    want = await observe(real_vllm.base_url)
    assert want[0] == ("length", 4)
    assert await observe(sim.base_url) == want


# ------------------------------------------------------------------------------ metrics

# What the gateway (queue depth), the autoscaler and the rollout analysis read, and what the
# dashboards chart: names, types, label names and buckets must match vLLM exactly.
WATCHED = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:request_time_per_output_token_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:request_queue_time_seconds": "histogram",
    "vllm:request_success": "counter",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:prefix_cache_queries": "counter",
    "vllm:prefix_cache_hits": "counter",
}


async def metric_families(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return {f.name: f for f in text_string_to_metric_families(text) if f.name.startswith("vllm:")}


def shape(family: Any) -> dict[str, Any]:
    labels = {name for s in family.samples for name in s.labels if name != "le"}
    out: dict[str, Any] = {"type": family.type, "labels": sorted(labels)}
    if family.type == "histogram":
        out["buckets"] = sorted(
            {float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket")}
        )
    if "finished_reason" in labels:
        out["finished_reason"] = sorted({s.labels["finished_reason"] for s in family.samples})
    return out


def total(family: Any, **labels: str) -> float:
    return sum(
        s.value
        for s in family.samples
        if s.name.endswith("_total") and labels.items() <= s.labels.items()
    )


async def test_metrics_the_gateway_and_autoscaler_read_match_vllm(
    real_vllm: vllm.VllmServer, sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    for url in (real_vllm.url, sim.url):
        async with http.post(url + "/v1/completions", json={
            "model": MODEL, "prompt": "Hello", "max_tokens": 3, **GREEDY
        }) as resp:  # fmt: skip
            assert resp.status == 200
    want = await metric_families(http, real_vllm.url)
    got = await metric_families(http, sim.url)
    for name, kind in WATCHED.items():
        assert name in want and want[name].type == kind, f"vLLM itself no longer exports {name}"
        assert name in got, f"the simulator does not export {name}"
        assert shape(got[name]) == shape(want[name]), name
    # Nothing under vLLM's prefix that vLLM does not export (e.g. a renamed metric's old name).
    assert set(got) <= set(want), sorted(set(got) - set(want))


async def test_prefix_cache_counters_hit_on_a_repeated_prompt_in_both(
    real_vllm: vllm.VllmServer, sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    prompt = "Platform teams run models in production and watch their latency. " * 12
    for url in (real_vllm.url, sim.url):
        before = await metric_families(http, url)
        for _ in range(2):
            async with http.post(url + "/v1/completions", json={
                "model": MODEL, "prompt": prompt, "max_tokens": 2, **GREEDY
            }) as resp:  # fmt: skip
                assert resp.status == 200, await resp.text()
        after = await metric_families(http, url)
        hits = total(after["vllm:prefix_cache_hits"]) - total(before["vllm:prefix_cache_hits"])
        queries = total(after["vllm:prefix_cache_queries"]) - total(
            before["vllm:prefix_cache_queries"]
        )
        assert queries > 0 and 0 < hits < queries, (url, hits, queries)
        length = total(after["vllm:request_success"], finished_reason="length") - total(
            before["vllm:request_success"], finished_reason="length"
        )
        assert length == 2, url
