"""Priorities when a model is full (docs/tenants.md, "Priorities"): with every self-hosted
backend over its queue limit, a sheddable request is refused with a 429 (never sent to the
paid fallback), a standard one spills when its tenant may, else queues at the pods; the
`x-hedge-priority` header lowers a request's priority and never raises it; a bad value is a
400 naming the allowed ones."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from hedge_core.api import ClientPolicy
from hedge_serving.gateway.app import RunningGateway
from hedge_serving.gateway.auth import ClientAuth
from hedge_serving.gateway.routing import ProviderSpec, ProviderType, RouteSpec, ServingOptions
from hedge_serving.gateway.tenants import policy_keys, secret_digests
from tests.serving.gateway_stubs.engines import Engine
from tests.serving.gateway_stubs.harness import Clients, start_test_gateway

MODEL = "llama"
MESSAGES: Any = [{"role": "user", "content": "hello"}]
KEYS = {"shed": "sk-shed", "std": "sk-std", "std-local": "sk-std-local"}


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    made = Clients()
    yield made
    await made.close()


def auth() -> ClientAuth:
    """Three tenants: sheddable, standard, and standard kept off the fallback."""
    made = ClientAuth(["sk-admin"], required=True)
    entries = []
    for name, spec in (
        ("shed", {"priority": "sheddable"}),
        ("std", {}),
        ("std-local", {"fallback": {"allowed": False}}),
    ):
        body = {
            "metadata": {"name": name, "namespace": "team-a", "generation": 1},
            "spec": {"keys": [{"secretRef": {"name": "keys", "key": name}}], **spec},
        }
        entries += policy_keys(
            ClientPolicy.from_body(body), {"keys": secret_digests({name: KEYS[name]})}
        )
    made.set_policy_keys(entries)
    return made


async def full_gateway(engine: Engine, provider: Engine) -> RunningGateway:
    fallback = (
        ProviderSpec(
            type=ProviderType.OPENAI_COMPATIBLE, model=MODEL, base_url=provider.url + "/v1"
        ),
    )
    route = RouteSpec(
        MODEL, (engine.url,), fallback, ServingOptions(max_queue_depth=0), owner="team-a",
        deployment=("team-a", "llama"),
    )  # fmt: skip
    gw = await start_test_gateway([route], auth=auth())
    backend = gw.table.backends()[0]
    backend.scraped_at = 0.0  # every backend full: a deep queue, as scraped
    backend.waiting = 5
    return gw


async def shed_count(gw: RunningGateway) -> float:
    url = f"http://127.0.0.1:{gw.admin_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        text = await r.text()
    line = 'hedge_gateway_shed_total{model="llama",priority="sheddable"} '
    found = [float(x.split()[-1]) for x in text.splitlines() if x.startswith(line)]
    return found[0] if found else 0.0


async def test_when_full_sheddable_is_refused_standard_spills_or_queues(clients: Clients) -> None:
    engine = await Engine("engine", MODEL).start()
    provider = await Engine("provider", MODEL).start()
    gw = await full_gateway(engine, provider)
    try:
        with pytest.raises(openai.RateLimitError) as info:
            await clients(gw, KEYS["shed"]).chat.completions.create(model=MODEL, messages=MESSAGES)
        error = info.value.response.json()["error"]
        assert error["code"] == "capacity_shed"
        assert int(info.value.response.headers["retry-after"]) >= 1
        assert engine.received == [] and provider.received == []
        assert await shed_count(gw) == 1
        # Standard, allowed to spill: the fallback serves it.
        raw = await clients(gw, KEYS["std"]).chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES
        )
        assert raw.headers["x-hedge-served-by"] != "self-hosted"
        assert len(provider.received) == 1
        # Standard, kept off the fallback: it queues at the pods.
        raw = await clients(gw, KEYS["std-local"]).chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES
        )
        assert raw.headers["x-hedge-served-by"] == "self-hosted"
        assert len(provider.received) == 1
    finally:
        await gw.stop()
        await engine.stop()
        await provider.stop()


async def test_the_header_lowers_a_priority_and_never_raises_it(clients: Clients) -> None:
    engine = await Engine("engine", MODEL).start()
    provider = await Engine("provider", MODEL).start()
    gw = await full_gateway(engine, provider)
    try:
        lowered = clients(gw, KEYS["std"]).with_options(
            default_headers={"x-hedge-priority": "sheddable"}
        )
        with pytest.raises(openai.RateLimitError):
            await lowered.chat.completions.create(model=MODEL, messages=MESSAGES)
        raised = clients(gw, KEYS["shed"]).with_options(
            default_headers={"x-hedge-priority": "Critical"}
        )
        with pytest.raises(openai.RateLimitError):  # still sheddable
            await raised.chat.completions.create(model=MODEL, messages=MESSAGES)
        bad = clients(gw, KEYS["std"]).with_options(default_headers={"x-hedge-priority": "high"})
        with pytest.raises(openai.BadRequestError) as info:
            await bad.chat.completions.create(model=MODEL, messages=MESSAGES)
        message = info.value.response.json()["error"]["message"]
        assert "critical, standard, sheddable" in message
        # Keys without a policy may lower theirs too.
        admin = clients(gw, "sk-admin").with_options(
            default_headers={"x-hedge-priority": "sheddable"}
        )
        with pytest.raises(openai.RateLimitError):
            await admin.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert provider.received == [] and engine.received == []
        assert await shed_count(gw) == 3
    finally:
        await gw.stop()
        await engine.stop()
        await provider.stop()


async def test_with_room_at_the_pods_every_priority_is_served(clients: Clients) -> None:
    engine = await Engine("engine", MODEL).start()
    provider = await Engine("provider", MODEL).start()
    gw = await full_gateway(engine, provider)
    gw.table.backends()[0].waiting = 0
    gw.table.backends()[0].scraped_at = None
    try:
        for key in KEYS.values():
            raw = await clients(gw, key).chat.completions.with_raw_response.create(
                model=MODEL, messages=MESSAGES
            )
            assert raw.headers["x-hedge-served-by"] == "self-hosted"
        assert provider.received == []
    finally:
        await gw.stop()
        await engine.stop()
        await provider.stop()
