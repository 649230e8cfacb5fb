"""Clients that do not stream get the engine's stream re-assembled into the answer the
engine gives unstreamed.

The strongest checks compare with an engine's own unstreamed answer: vLLM 0.32 itself
(answers recorded both ways from `vllm serve` on this machine, in data/, compared key by key
and in key order), and the engine simulator live (the same request both ways). The unit
tests feed vLLM-shaped chunks: tool calls, logprobs, `n` > 1, reasoning.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hedge_serving.gateway.app import RunningGateway
from hedge_serving.gateway.routing import RouteSpec
from hedge_serving.gateway.streams import Reassembler, can_reassemble, streamed_body
from hedge_serving.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.serving.gateway_stubs.engines import Engine
from tests.serving.gateway_stubs.harness import start_test_gateway

MODEL = "llama-3-8b"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "tell me a story"}]}
COMPLETION = {"model": MODEL, "prompt": "Once upon a time"}


@pytest.fixture
async def sim_and_gateway() -> AsyncIterator[tuple[RunningSimulator, RunningGateway]]:
    sim = await start_simulator(
        SimulatorConfig(served_model_names=[MODEL], ttft_ms=1, itl_ms=1, default_max_tokens=12),
        "127.0.0.1",
        0,
    )
    gw = await start_test_gateway([RouteSpec(MODEL, (sim.url,))])
    yield sim, gw
    await gw.stop()
    await sim.stop()


async def post_json(url: str, body: dict[str, Any]) -> Any:
    async with aiohttp.ClientSession() as s, s.post(url, json=body) as r:
        assert r.status == 200, await r.text()
        return await r.json()


def assert_same_answer(engine: Any, gateway: Any, path: str = "") -> None:
    """Equal, but for ids and times; keys only one side has must be null or empty (a stream
    cannot tell an absent field from a null one; see the tables in streams.py)."""
    if isinstance(engine, dict):
        assert isinstance(gateway, dict), path
        for key, value in engine.items():
            if key in ("id", "created"):
                continue
            if key not in gateway:
                assert value in (None, []), f"{path}.{key} missing"
                continue
            assert_same_answer(value, gateway[key], f"{path}.{key}")
        for key in gateway.keys() - engine.keys():
            assert gateway[key] in (None, []), f"{path}.{key} = {gateway[key]!r}"
    elif isinstance(engine, list):
        assert isinstance(gateway, list) and len(engine) == len(gateway), path
        for i, (a, b) in enumerate(zip(engine, gateway, strict=True)):
            assert_same_answer(a, b, f"{path}[{i}]")
    else:
        assert engine == gateway, path


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", CHAT),
        ("/v1/chat/completions", {**CHAT, "n": 3}),
        ("/v1/chat/completions", {**CHAT, "max_tokens": 4}),
        ("/v1/chat/completions", {**CHAT, "seed": 7, "stop": ["the"]}),
        ("/v1/completions", COMPLETION),
        ("/v1/completions", {**COMPLETION, "n": 2, "max_tokens": 3}),
        ("/v1/completions", {**COMPLETION, "prompt": ["one two", "three four five"]}),
    ],
)
async def test_same_answer_as_the_engine_unstreamed(
    sim_and_gateway: tuple[RunningSimulator, RunningGateway], path: str, body: dict[str, Any]
) -> None:
    sim, gw = sim_and_gateway
    direct = await post_json(sim.url + path, body)
    through = await post_json(gw.url + path, body)
    assert_same_answer(direct, through)
    assert through["object"] == direct["object"]


async def test_the_engine_is_asked_to_stream() -> None:
    engine = await Engine("e0", MODEL).start()
    gw = await start_test_gateway([RouteSpec(MODEL, (engine.url,))])
    try:
        done = await post_json(gw.url + "/v1/chat/completions", CHAT)
        sent = engine.received[-1].body
        assert sent["stream"] is True
        assert sent["stream_options"] == {"include_usage": True}
        assert done["usage"]["completion_tokens"] == 12
        # Requests vLLM cannot stream the same way keep the plain path.
        await post_json(gw.url + "/v1/chat/completions", {**CHAT, "prompt_logprobs": 1})
        assert "stream" not in engine.received[-1].body
    finally:
        await gw.stop()
        await engine.stop()


DATA = Path(__file__).parents[2] / "data"  # tests/serving/data
RECORDED = json.loads((DATA / "vllm-0.32.0-answers.json").read_text())


STREAMABLE = sorted(c for c in RECORDED if can_reassemble(RECORDED[c]["request"]))


def test_requests_whose_stream_differs_keep_the_plain_path() -> None:
    """vLLM 0.32 streams an echoed prompt without its prompt logprobs: not re-assembled."""
    assert set(RECORDED) - set(STREAMABLE) == {"completion-echo-logprobs"}
    echo = RECORDED["completion-echo-logprobs"]
    assert echo["unstreamed"]["choices"][0]["prompt_logprobs"] is not None
    assert '"prompt_logprobs"' not in echo["stream"]


@pytest.mark.parametrize("case", STREAMABLE)
@pytest.mark.parametrize("read", [1, 7, 100_000], ids=lambda n: f"reads-of-{n}")
def test_same_answer_as_vllm_unstreamed(case: str, read: int) -> None:
    """vLLM 0.32's stream, re-assembled, is its unstreamed answer to the same request: the
    same keys in the same order with the same values, but for `id` and `created`."""
    recorded = copy.deepcopy(RECORDED[case])
    stream = recorded["stream"].encode()
    r = Reassembler(chat=recorded["path"] == "/v1/chat/completions", max_bytes=1 << 20)
    for i in range(0, len(stream), read):
        r.feed(stream[i : i + read])
    ours = json.loads(r.result())
    theirs = recorded["unstreamed"]
    for doc in (ours, theirs):
        doc.pop("id")
        doc.pop("created")
    assert json.dumps(ours) == json.dumps(theirs)


def test_streamed_body_keeps_the_clients_bytes() -> None:
    body = b'{"model": "m", "messages": []}  \n'
    out = streamed_body(body, json.loads(body))
    assert (
        out
        == b'{"model": "m", "messages": [],"stream":true,"stream_options":{"include_usage":true}}'
    )
    explicit = b'{"model": "m", "stream": false}'
    assert json.loads(streamed_body(explicit, json.loads(explicit))) == {
        "model": "m",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def _events(*chunks: dict[str, Any]) -> bytes:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 5, "model": "m"}
    out = b"".join(
        b"data: " + json.dumps({**base, **c}, separators=(",", ":")).encode() + b"\n\n"
        for c in chunks
    )
    return out + b"data: [DONE]\n\n"


def _choice(index: int, delta: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"choices": [{"index": index, "delta": delta, "logprobs": None,
                         "finish_reason": None, **extra}]}  # fmt: skip


def test_tool_calls_reasoning_logprobs_and_two_choices() -> None:
    lp = {"content": [{"token": "a", "logprob": -0.1, "bytes": [97], "top_logprobs": []}]}
    data = _events(
        _choice(0, {"role": "assistant", "content": ""}),
        _choice(1, {"role": "assistant", "content": ""}),
        _choice(0, {"reasoning_content": "think"}),
        _choice(0, {"reasoning_content": "ing"}),
        _choice(0, {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                    "function": {"name": "get_weather", "arguments": ""}}]}),
        _choice(0, {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        _choice(0, {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        _choice(1, {"content": "a"}, logprobs=lp),
        _choice(1, {"content": "b"}, logprobs=lp),
        _choice(0, {}, finish_reason="tool_calls", stop_reason=None),
        _choice(1, {}, finish_reason="stop", stop_reason="\n"),
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}},
    )  # fmt: skip
    r = Reassembler(chat=True, max_bytes=1 << 20)
    for i in range(0, len(data), 7):  # any split of the bytes
        r.feed(data[i : i + 7])
    out = json.loads(r.result())
    assert out["object"] == "chat.completion"
    assert (out["id"], out["created"], out["model"]) == ("chatcmpl-1", 5, "m")
    first, second = out["choices"]
    assert first["message"]["content"] == ""
    assert first["message"]["reasoning_content"] == "thinking"
    assert first["message"]["tool_calls"] == [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    ]  # fmt: skip
    assert first["finish_reason"] == "tool_calls"
    assert second["message"] == {  # vLLM 0.32's fields; tool_calls only when there are some
        "role": "assistant", "content": "ab", "refusal": None, "annotations": None,
        "audio": None, "function_call": None, "reasoning": None,
    }  # fmt: skip
    assert list(first["message"]) == [
        "role", "content", "refusal", "annotations", "audio", "function_call", "tool_calls",
        "reasoning", "reasoning_content",
    ]  # fmt: skip
    assert second["logprobs"]["content"] == lp["content"] * 2
    assert (second["finish_reason"], second["stop_reason"]) == ("stop", "\n")
    assert out["usage"]["total_tokens"] == 8


def test_completion_logprobs_are_concatenated() -> None:
    def chunk(text: str, offset: int) -> dict[str, Any]:
        return {"object": "text_completion", "choices": [{"index": 0, "text": text,
                "logprobs": {"text_offset": [offset], "token_logprobs": [-0.5],
                             "tokens": [text], "top_logprobs": [{text: -0.5}]},
                "finish_reason": None}]}  # fmt: skip

    r = Reassembler(chat=False, max_bytes=1 << 20)
    r.feed(_events(chunk("Hel", 0), chunk("lo", 3)))
    choice = json.loads(r.result())["choices"][0]
    assert choice["text"] == "Hello"
    assert choice["logprobs"] == {
        "text_offset": [0, 3], "token_logprobs": [-0.5, -0.5], "tokens": ["Hel", "lo"],
        "top_logprobs": [{"Hel": -0.5}, {"lo": -0.5}],
    }  # fmt: skip


def test_a_stream_without_its_end_is_incomplete() -> None:
    r = Reassembler(chat=True, max_bytes=1 << 20)
    r.feed(_events(_choice(0, {"content": "x"}))[: -len(b"data: [DONE]\n\n")])
    with pytest.raises(Exception, match="ended before it was complete"):
        r.result()


@pytest.mark.parametrize(
    "text", ["plain", 'quote " and \\ backslash', "naïve ✓ 漢字", "line\nbreak"]
)
def test_fast_paths_agree_with_the_full_parse(text: str) -> None:
    """vLLM's compact chunks take regex fast paths; the same events with spaces (another
    engine) take the full JSON parse. Both give the same answer."""
    chunks = [
        _choice(0, {"role": "assistant", "content": ""}),
        _choice(0, {"content": text}),
        _choice(0, {"content": text}, finish_reason="length", stop_reason=None),
        {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3,
                                  "prompt_tokens_details": None}},
    ]  # fmt: skip
    compact = _events(*chunks)
    spaced = compact.replace(b'":', b'": ').replace(b',"', b', "')
    results = []
    for data in (compact, spaced):
        r = Reassembler(chat=True, max_bytes=1 << 20)
        r.feed(data)
        results.append(json.loads(r.result()))
    assert results[0] == results[1]
    assert results[0]["choices"][0]["message"]["content"] == text * 2
    assert results[0]["choices"][0]["finish_reason"] == "length"
    assert results[0]["usage"]["total_tokens"] == 3
