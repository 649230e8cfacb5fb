"""Bodies that cost far more than their bytes are refused before they are built (issue 16,
Medium-9 and Low: UTF-16/32): a clear 400 over a real socket, the event loop kept free."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from hedge_serving.gateway.app import RunningGateway
from hedge_serving.gateway.routing import RouteSpec
from tests.serving.gateway_stubs.engines import Engine
from tests.serving.gateway_stubs.harness import Clients, start_test_gateway

MODEL = "llama-3-8b"
FOUR_MIB = 4 * 1024 * 1024


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[RunningGateway, Engine]]:
    engine = await Engine("e0", MODEL).start()
    gw = await start_test_gateway([RouteSpec(MODEL, (engine.url,))])
    try:
        yield gw, engine
    finally:
        await gw.stop()
        await engine.stop()


async def _post(url: str, body: bytes) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(url, data=io.BytesIO(body), headers={"Content-Type": "application/json"}) as r,
    ):
        doc = await r.json(content_type=None)
        return r.status, doc.get("error", doc)  # an answer that is not an error, as is


class LoopLag:
    """The longest the event loop went without running a 2 ms ticker."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.002)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last)
            last = now

    def __enter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def test_four_mib_of_empty_objects_is_a_fast_400(
    gateway: tuple[RunningGateway, Engine],
) -> None:
    gw, _ = gateway
    items = (FOUR_MIB - 100) // 3
    body = b'{"model": "%s", "input": [' % MODEL.encode() + b"{}," * items + b"{}]}"
    assert len(body) <= FOUR_MIB
    with LoopLag() as lag:
        status, error = await _post(gw.url + "/v1/embeddings", body)
    assert status == 400, error
    assert "more than 65536 objects and arrays" in str(error["message"])
    assert error["type"] == "invalid_request_error"
    # json.loads of this body alone blocks the loop ~100-280 ms here (and builds ~100 MiB);
    # the pre-scan takes a few ms. 80 ms leaves room for a loaded CI machine.
    assert lag.worst < 0.080, f"the event loop was blocked {lag.worst * 1000:.0f} ms"


async def test_a_body_nested_970_deep_is_a_400_not_a_500(
    gateway: tuple[RunningGateway, Engine],
) -> None:
    gw, _ = gateway
    body = b'{"model": "%s", "input": ' % MODEL.encode() + b"[" * 970 + b"]" * 970 + b"}"
    status, error = await _post(gw.url + "/v1/responses", body)
    assert status == 400, error
    assert "nested more than 64 deep" in str(error["message"])


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"])
async def test_utf16_and_utf32_bodies_are_refused(
    gateway: tuple[RunningGateway, Engine], encoding: str
) -> None:
    gw, _ = gateway
    doc = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    status, error = await _post(gw.url + "/v1/chat/completions", json.dumps(doc).encode(encoding))
    assert status == 400, error
    assert "UTF-8" in str(error["message"]) and "UTF-16 or UTF-32" in str(error["message"])


async def test_ordinary_requests_with_tools_and_brackets_in_text_are_served(
    gateway: tuple[RunningGateway, Engine], client: Clients
) -> None:
    gw, _ = gateway
    nested: dict[str, object] = {"type": "string"}
    for _ in range(20):  # a deep, legitimate tool schema
        nested = {"type": "object", "properties": {"x": nested}}
    text = "if (a) { b[1] = {c, d}; }\n" * 5000  # 20k braces inside a string
    done = await client(gw).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": text}],
        tools=[{"type": "function", "function": {"name": "f", "parameters": nested}}],
    )
    assert done.choices[0].message is not None
