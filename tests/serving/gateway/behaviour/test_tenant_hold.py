"""A held request waits for the ModelDeployment it was resolved to, never another namespace's.

team-a's `llama` is the older claim and has a ready pod; team-b's `llama` is scaled to zero.
A team-b key asks for `llama`: the request is held for team-b's model (issue 16, High-3), and
is served by team-b's pod once it is ready, or refused with a 503 when none becomes ready in
time; team-a's pod sees nothing either way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from hedge_operator.dataplane.signals import parse_gateway
from hedge_serving.gateway.app import RunningGateway
from hedge_serving.gateway.auth import ClientAuth, parse_keys_file
from hedge_serving.gateway.routing import RouteSpec, ServingOptions
from tests.serving.gateway_stubs.engines import Engine
from tests.serving.gateway_stubs.harness import Clients, start_test_gateway

MODEL = "llama"
A, B = ("team-a", "llama"), ("team-b", "llama")
MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    made = Clients()
    yield made
    await made.close()


def specs(a_url: str, b_url: str | None, hold_s: float) -> list[RouteSpec]:
    """As discovery lists them: team-a's claim (older) first."""
    options = ServingOptions(hold_s=hold_s, request_timeout_s=30)
    return [
        RouteSpec(MODEL, (a_url,), options=options, owner="team-a", deployment=A),
        RouteSpec(MODEL, (b_url,) if b_url else (), options=options, owner="team-b", deployment=B),
    ]


async def held(gw: RunningGateway, key: tuple[str, str]) -> float:
    url = f"http://127.0.0.1:{gw.admin_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        return parse_gateway(await r.text()).in_flight.get(key, {}).get("held", 0.0)


async def wait_held(gw: RunningGateway, key: tuple[str, str], call: asyncio.Task[Any]) -> None:
    deadline = time.monotonic() + 5
    while await held(gw, key) != 1:
        if call.done():
            answer = call.exception() or call.result().system_fingerprint
            raise AssertionError(f"answered without waiting for its own pod: {answer}")
        assert time.monotonic() < deadline, "the request was never held"
        await asyncio.sleep(0.05)


async def test_a_held_request_is_served_by_its_own_namespace(clients: Clients) -> None:
    engine_a = await Engine("engine-a", MODEL).start()
    engine_b = await Engine("engine-b", MODEL).start()
    auth = ClientAuth(parse_keys_file("key-b team-b\n"))
    gw = await start_test_gateway(specs(engine_a.url, None, hold_s=10), auth=auth)
    try:
        call = asyncio.create_task(
            clients(gw, "key-b").chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
        )
        await wait_held(gw, B, call)
        # Any table update wakes the held request: one that changes nothing for team-b must
        # not hand it to team-a's ready pod.
        gw.table.replace(specs(engine_a.url, None, hold_s=10))
        assert await held(gw, B) == 1
        gw.table.replace(specs(engine_a.url, engine_b.url, hold_s=10))
        reply = await asyncio.wait_for(call, 10)
        assert reply.system_fingerprint == "engine-b"
        assert not engine_a.received
    finally:
        await gw.stop()
        await engine_a.stop()
        await engine_b.stop()


async def test_no_pod_of_its_own_namespace_in_time_is_a_503_not_another_namespace(
    clients: Clients,
) -> None:
    engine_a = await Engine("engine-a", MODEL).start()
    auth = ClientAuth(parse_keys_file("key-b team-b\n"))
    gw = await start_test_gateway(specs(engine_a.url, None, hold_s=1), auth=auth)
    try:
        call = asyncio.create_task(
            clients(gw, "key-b").chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
        )
        await wait_held(gw, B, call)
        gw.table.replace(specs(engine_a.url, None, hold_s=1))  # wakes it: still nothing
        with pytest.raises(openai.APIStatusError) as info:
            await asyncio.wait_for(call, 10)
        assert info.value.status_code == 503
        assert "no engine pod became ready within 1s" in str(info.value)
        assert not engine_a.received
    finally:
        await gw.stop()
        await engine_a.stop()
