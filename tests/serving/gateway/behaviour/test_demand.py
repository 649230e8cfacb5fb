"""Routes know their ModelDeployment, and the gateway exports its demand per ModelDeployment
(docs/contracts.md): requests in flight by state and arrivals, read by the operator's
autoscaler through the same parser it uses in production (`hedge_operator.dataplane.signals`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest

from hedge_core.api import ModelDeployment
from hedge_operator.dataplane.signals import parse_gateway
from hedge_serving.gateway.app import RunningGateway
from hedge_serving.gateway.config import RoutesFileError, parse_routes
from hedge_serving.gateway.discovery import routes_for
from hedge_serving.gateway.routing import (
    DemandState,
    ProviderSpec,
    ProviderType,
    RouteSpec,
    RoutingTable,
)
from tests.serving.gateway_stubs.engines import Engine
from tests.serving.gateway_stubs.harness import Clients, start_test_gateway, wait_for

KEY = ("team-a", "llama")
MODEL = "llama-3-8b"


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    made = Clients()
    yield made
    await made.close()


async def gateway_metrics(gw: RunningGateway) -> str:
    url = f"http://127.0.0.1:{gw.admin_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        assert r.status == 200
        return await r.text()


async def demand(gw: RunningGateway) -> tuple[dict[str, float], float]:
    reading = parse_gateway(await gateway_metrics(gw))
    return reading.in_flight.get(KEY, {}), reading.counters.get(("arrivals", *KEY), 0.0)


def md(adapters: tuple[str, ...] = ()) -> ModelDeployment:
    return ModelDeployment.from_body(
        {
            "metadata": {"name": KEY[1], "namespace": KEY[0]},
            "spec": {
                "model": {"source": "hf://org/llama", "name": MODEL},
                "adapters": [{"name": a, "source": f"hf://org/{a}"} for a in adapters],
            },
        }
    )


def test_discovered_routes_and_their_adapters_share_their_model_deployment() -> None:
    specs = routes_for(md(adapters=("sql-lora",)), ["http://127.0.0.2:8000"])
    assert [(s.model, s.deployment) for s in specs] == [(MODEL, KEY), ("sql-lora", KEY)]
    table = RoutingTable()
    table.replace(specs)
    base, adapter = table.resolve(MODEL), table.resolve("sql-lora")
    assert base is not None and adapter is not None
    assert base.demand is adapter.demand and base.deployment == KEY
    assert [d.key for d in table.demands()] == [KEY]


def test_demand_survives_table_updates_and_goes_with_its_model_deployment() -> None:
    table = RoutingTable()
    table.replace(routes_for(md(), []))
    route = table.resolve(MODEL)
    assert route is not None
    route.demand.in_flight[DemandState.HELD] += 1  # a request held across the update
    table.replace(routes_for(md(), ["http://127.0.0.2:8000"]))
    after = table.resolve(MODEL)
    assert after is not None and after.demand is route.demand
    table.replace([])
    assert table.demands() == []


def test_routes_file_names_the_model_deployment() -> None:
    specs = parse_routes(
        {
            "models": [
                {"name": "a", "aliases": ["a2"], "modelDeployment": "team-a/llama"},
                {"name": "b"},
            ]
        }
    )
    assert [(s.model, s.deployment_key) for s in specs] == [
        ("a", KEY),
        ("a2", KEY),
        ("b", ("", "b")),
    ]
    for bad in ("llama", "/llama", "team-a/", "a/b/c"):
        with pytest.raises(RoutesFileError, match=r"models\[0\]\.modelDeployment: expected"):
            parse_routes({"models": [{"name": "a", "modelDeployment": bad}]})


async def test_in_flight_by_state_and_arrivals_are_exported(clients: Clients) -> None:
    engine = await Engine(model=MODEL).start()
    # The fallback is another slow engine speaking the OpenAI API, so a fallback request can
    # be caught in flight too.
    provider = await Engine(model="gpt-4o-mini").start()
    fallback = (
        ProviderSpec(
            type=ProviderType.OPENAI_COMPATIBLE, model="gpt-4o-mini", base_url=provider.url + "/v1"
        ),
    )
    specs = [
        RouteSpec(MODEL, (engine.url,), fallback, deployment=KEY),
        RouteSpec("sql-lora", (), fallback, deployment=KEY),  # no backend: falls back
    ]
    gw = await start_test_gateway(specs)
    try:
        client = clients(gw)
        assert await demand(gw) == ({"self_hosted": 0, "held": 0, "fallback": 0}, 0)
        engine.faults.delay_s = provider.faults.delay_s = 0.5
        messages = [{"role": "user", "content": "hi"}]
        calls = [
            asyncio.create_task(client.chat.completions.create(model=m, messages=messages))  # type: ignore[arg-type]
            for m in (MODEL, MODEL, "sql-lora")
        ]
        await wait_for(lambda: engine.in_flight == 2 and provider.in_flight == 1, what="3 calls")
        states, arrivals = await demand(gw)
        assert states == {"self_hosted": 2, "held": 0, "fallback": 1}
        assert arrivals == 3
        served = [r.choices[0].message.content for r in await asyncio.gather(*calls)]
        assert all(served)
        assert await demand(gw) == ({"self_hosted": 0, "held": 0, "fallback": 0}, 3)

        # Requests that never reach a route are no demand: unknown model, bad body.
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="nope", messages=messages)  # type: ignore[arg-type]
        assert (await demand(gw))[1] == 3
    finally:
        await gw.stop()
        await engine.stop()
        await provider.stop()
