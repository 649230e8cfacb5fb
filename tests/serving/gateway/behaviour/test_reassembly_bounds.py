"""Re-assembled answers with logprobs are bounded by what they hold, not by their bytes
(issue 16, Medium-9): per answer (`--max-response-bytes`, logprobs weighted) and per
gateway (all re-assemblies together). A loopback engine streams vLLM-shaped logprobs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from hedge_serving.gateway import streams
from hedge_serving.gateway.proxy import ProxySettings
from hedge_serving.gateway.routing import RouteSpec
from tests.serving.gateway_stubs.harness import start_test_gateway, wait_for
from tests.serving.gateway_stubs.servers import start_app

MODEL = "llama-3-8b"


def _event(doc: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"


def _chunk(choice: dict[str, Any], **top: Any) -> bytes:
    doc = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
    return _event({**doc, "choices": [choice], **top})


def _logprobs(token: str) -> dict[str, Any]:
    alternatives = [
        {"token": f"{token}{i}", "logprob": -1.0 - i, "bytes": [97 + i]} for i in range(5)
    ]
    return {
        "content": [{"token": token, "logprob": -0.5, "bytes": [97], "top_logprobs": alternatives}]
    }


class LogprobsEngine:
    """Streams `tokens` tokens, each with 5 top logprobs (~600 bytes an event); with
    `pause`, stops halfway until it is set."""

    def __init__(self) -> None:
        self.pause: asyncio.Event | None = None
        self.halfway = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> LogprobsEngine:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner, self.url = await start_app(app)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        tokens = int(body["max_tokens"])
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
        await response.write(_chunk({**role, "finish_reason": None}))
        for i in range(tokens):
            if i == tokens // 2 and self.pause is not None:
                self.halfway += 1
                await self.pause.wait()
            delta = {"index": 0, "delta": {"content": "a"}, "logprobs": _logprobs("a")}
            await response.write(_chunk({**delta, "finish_reason": None}))
        end = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
        await response.write(_chunk(end))
        usage = {"prompt_tokens": 1, "completion_tokens": tokens, "total_tokens": tokens + 1}
        doc = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
        await response.write(_event({**doc, "choices": [], "usage": usage}))
        await response.write(b"data: [DONE]\n\n")
        return response


@pytest.fixture
async def engine() -> AsyncIterator[LogprobsEngine]:
    e = await LogprobsEngine().start()
    yield e
    await e.stop()


async def _ask(url: str, tokens: int) -> tuple[int, dict[str, Any]]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": tokens,
        "logprobs": True,
        "top_logprobs": 5,
    }
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/chat/completions", json=body) as r:
        return r.status, await r.json()


async def test_logprobs_count_for_what_they_hold_against_the_answer_cap(
    engine: LogprobsEngine,
) -> None:
    gw = await start_test_gateway(
        [RouteSpec(MODEL, (engine.url,))], proxy=ProxySettings(max_response_bytes=300_000)
    )
    try:
        # ~20 KB of stream: held decoded at ~6x, within 300 KB.
        status, doc = await _ask(gw.url, 30)
        assert status == 200, doc
        assert len(doc["choices"][0]["logprobs"]["content"]) == 30
        # ~120 KB of stream, under the byte cap but ~700 KB once decoded: refused.
        status, doc = await _ask(gw.url, 200)
        assert status == 502, doc
        assert "too large" in doc["error"]["message"], doc
        assert streams.GATEWAY_HELD.held == 0
    finally:
        await gw.stop()


async def test_all_reassemblies_of_a_gateway_share_one_cap(
    engine: LogprobsEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streams.GATEWAY_HELD, "limit", 600_000)
    gw = await start_test_gateway([RouteSpec(MODEL, (engine.url,))])
    gate = engine.pause = asyncio.Event()
    try:
        first = asyncio.ensure_future(_ask(gw.url, 150))  # ~540 KB held whole, alone fine
        await wait_for(lambda: engine.halfway == 1, what="the first answer half read")
        await wait_for(lambda: streams.GATEWAY_HELD.held > 200_000, what="the first answer held")
        engine.pause = None
        status, doc = await _ask(gw.url, 150)  # would take the gateway over 600 KB
        assert status == 502, doc
        assert "already hold the gateway's 600000 bytes" in doc["error"]["message"], doc
        gate.set()
        status, doc = await first
        assert status == 200, doc
    finally:
        gate.set()
        await gw.stop()
    assert streams.GATEWAY_HELD.held == 0  # everything given back
