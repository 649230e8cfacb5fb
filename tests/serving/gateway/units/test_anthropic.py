"""Properties of the OpenAI <-> Anthropic Messages translation, and of SSE relaying."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hedge_serving.gateway.providers.anthropic import (
    FINISH_REASONS,
    AnthropicStreamRelay,
    Untranslatable,
    chat_to_messages,
    message_to_chat,
)
from hedge_serving.gateway.providers.base import PassthroughRelay

text = st.text(min_size=0, max_size=40)
nonempty = st.text(min_size=1, max_size=40)
role = st.sampled_from(["system", "developer", "user", "assistant"])
content = st.one_of(
    text,
    st.lists(st.builds(lambda t: {"type": "text", "text": t}, text), max_size=3),
)
message = st.fixed_dictionaries({"role": role, "content": content})
stop = st.one_of(st.none(), nonempty, st.lists(text, max_size=4))
request = st.fixed_dictionaries(
    {"model": st.just("m"), "messages": st.lists(message, max_size=8)},
    optional={
        "max_tokens": st.one_of(st.none(), st.integers(-5, 10_000)),
        "max_completion_tokens": st.integers(1, 100),
        "stop": stop,
        "temperature": st.one_of(st.floats(0, 2), st.integers(0, 2)),
        "top_p": st.floats(0, 1),
        "stream": st.booleans(),
        "user": text,
        "n": st.integers(1, 3),
    },
)


def _texts(c: Any) -> list[str]:
    if isinstance(c, str):
        return [c] if c else []
    return [p["text"] for p in c if p["text"]]


@given(request)
@settings(max_examples=300, deadline=None)
def test_chat_to_messages_keeps_meaning(req: dict[str, Any]) -> None:
    try:
        out = chat_to_messages(req, "claude", 1024)
    except Untranslatable:
        assert req.get("n", 1) != 1
        return
    # system/developer text becomes `system`, in order
    system = [
        "\n".join(p["text"] for p in m["content"])
        if isinstance(m["content"], list)
        else m["content"]
        for m in req["messages"]
        if m["role"] in ("system", "developer")
    ]
    system = [s for s in system if s]
    assert out.get("system", None) == ("\n\n".join(system) if system else None)
    # turns alternate, are never empty, and keep every user/assistant text in order
    turns = out["messages"]
    assert all(a["role"] != b["role"] for a, b in itertools.pairwise(turns))
    got = [t for turn in turns for t in _texts(turn["content"])]
    want = [
        t
        for m in req["messages"]
        if m["role"] in ("user", "assistant")
        for t in _texts(m["content"])
    ]
    assert got == want
    assert all(turn["content"] for turn in turns)
    # max_tokens always set and positive; temperature clamped; stop sequences kept
    assert isinstance(out["max_tokens"], int) and out["max_tokens"] >= 1
    wanted_max = req.get("max_completion_tokens", req.get("max_tokens"))
    if isinstance(wanted_max, int) and wanted_max >= 1:
        assert out["max_tokens"] == wanted_max
    if "temperature" in req:
        assert 0 <= out["temperature"] <= 1
    stops = req.get("stop")
    stops = [stops] if isinstance(stops, str) else stops or []
    assert out.get("stop_sequences", []) == [s for s in stops if s.strip()]
    assert out.get("stream", False) == (req.get("stream") is True)
    json.dumps(out)  # always serialisable


@pytest.mark.parametrize(
    "req",
    [
        {"messages": [], "tools": [{"type": "function"}]},
        {"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]},
        {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
        {"messages": [], "response_format": {"type": "json_object"}},
        {"messages": "nope"},
    ],
)
def test_untranslatable_requests(req: dict[str, Any]) -> None:
    with pytest.raises(Untranslatable):
        chat_to_messages(req, "claude", 10)


def test_images_become_image_blocks() -> None:
    out = chat_to_messages(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                    ],
                }
            ]
        },
        "claude",
        10,
    )
    blocks = out["messages"][0]["content"]
    assert blocks[1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
    }
    assert blocks[2] == {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}


stop_reason = st.sampled_from([*FINISH_REASONS, None, "something_new"])
usage = st.fixed_dictionaries(
    {"input_tokens": st.integers(0, 10**6), "output_tokens": st.integers(0, 10**6)},
    optional={"cache_read_input_tokens": st.integers(0, 1000)},
)


@given(st.lists(text, max_size=4), stop_reason, usage)
def test_message_to_chat(blocks: list[str], reason: str | None, use: dict[str, int]) -> None:
    msg = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [{"type": "text", "text": t} for t in blocks],
        "stop_reason": reason,
        "usage": use,
    }
    out = message_to_chat(msg)
    assert out["object"] == "chat.completion"
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "".join(blocks)}
    finish = out["choices"][0]["finish_reason"]
    assert finish in ("stop", "length", "tool_calls", "content_filter")
    if reason == "max_tokens":
        assert finish == "length"
    prompt = use["input_tokens"] + use.get("cache_read_input_tokens", 0)
    assert out["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": use["output_tokens"],
        "total_tokens": prompt + use["output_tokens"],
    }


def anthropic_stream(deltas: list[str], reason: str, out_tokens: int) -> bytes:
    def ev(name: str, data: dict[str, Any]) -> str:
        return f"event: {name}\ndata: {json.dumps(data)}\n\n"

    parts = [
        ev(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_9",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": "claude-x",
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 7, "output_tokens": 1},
                },
            },
        ),
        ev(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ev("ping", {"type": "ping"}),
        *(
            ev(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": d},
                },
            )
            for d in deltas
        ),
        ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ev(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": None},
                "usage": {"output_tokens": out_tokens},
            },
        ),
        ev("message_stop", {"type": "message_stop"}),
    ]
    return "".join(parts).encode()


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


def parse_sse(data: bytes) -> list[Any]:
    events = []
    for raw in data.decode().split("\n\n"):
        if raw.strip():
            assert raw.startswith("data: ")
            payload = raw[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


@given(
    st.lists(text, max_size=6),
    st.sampled_from(list(FINISH_REASONS)),
    st.integers(0, 500),
    st.lists(st.integers(0, 10_000), max_size=8),
    st.booleans(),
)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_anthropic_stream_relay(
    deltas: list[str], reason: str, out_tokens: int, cuts: list[int], include_usage: bool
) -> None:
    relay = AnthropicStreamRelay(include_usage=include_usage, created=1)
    data = anthropic_stream(deltas, reason, out_tokens)
    out = b"".join(relay.feed(piece) for piece in split_at(data, cuts)) + relay.finish()
    events = parse_sse(out)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "claude-x" for c in chunks)
    with_choices = [c for c in chunks if c["choices"]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in with_choices) == "".join(
        deltas
    )
    assert with_choices[-1]["choices"][0]["finish_reason"] == FINISH_REASONS[reason]
    assert all(c["choices"][0]["finish_reason"] is None for c in with_choices[:-1])
    if include_usage:
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"] == {
            "prompt_tokens": 7,
            "completion_tokens": out_tokens,
            "total_tokens": 7 + out_tokens,
        }
    else:
        assert all("usage" not in c for c in chunks)


@given(
    st.lists(nonempty, min_size=1, max_size=5),
    st.integers(0, 10_000),
    st.lists(st.integers(0, 10_000), max_size=4),
)
def test_cut_anthropic_stream_ends_with_error_event(
    deltas: list[str], cut: int, cuts: list[int]
) -> None:
    data = anthropic_stream(deltas, "end_turn", 3)
    data = data[: cut % len(data.split(b"event: message_stop")[0])]  # never reaches message_stop
    relay = AnthropicStreamRelay()
    out = b"".join(relay.feed(p) for p in split_at(data, cuts)) + relay.finish()
    events = parse_sse(out)
    assert "[DONE]" not in events
    assert "error" in events[-1] and events[-1]["error"]["code"] == "stream_cut"


def openai_stream(deltas: list[str]) -> bytes:
    chunks = [
        "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": d}}]}) + "\n\n"
        for d in deltas
    ]
    return ("".join(chunks) + "data: [DONE]\n\n").encode()


@given(
    st.lists(text, max_size=6), st.lists(st.integers(0, 10_000), max_size=8), st.integers(0, 10_000)
)
def test_passthrough_relay_forwards_whole_events_and_flags_truncation(
    deltas: list[str], cuts: list[int], cut: int
) -> None:
    data = openai_stream(deltas)
    relay = PassthroughRelay()
    forwarded = [relay.feed(p) for p in split_at(data, cuts)]
    assert b"".join(forwarded) + relay.finish() == data
    assert all(f == b"" or f.endswith(b"\n\n") for f in forwarded)  # never half an event
    truncated = data[: cut % len(data)]  # loses at least the end of [DONE]
    relay = PassthroughRelay()
    out = b"".join(relay.feed(p) for p in split_at(truncated, cuts)) + relay.finish()
    events = parse_sse(out)
    assert "[DONE]" not in events
    assert events[-1]["error"]["code"] == "stream_cut"
