"""Starting a gateway over stubs, and waiting on conditions without fixed sleeps."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import openai

from hedge_serving.gateway.app import GatewaySettings, RunningGateway, start_gateway
from hedge_serving.gateway.auth import ClientAuth
from hedge_serving.gateway.breaker import CircuitBreaker
from hedge_serving.gateway.egress import EgressPolicy
from hedge_serving.gateway.keys import KeyStore
from hedge_serving.gateway.routing import RouteSpec, RoutingTable

# The stubs listen on loopback over plain http: the tests' platform admin allows that, as a
# real one would allow an in-cluster proxy (`--egress-allow-http`, `--egress-allow-cidr`).
LOOPBACK_EGRESS = EgressPolicy.parse(
    http_hosts=("127.*", "localhost"), allow_cidrs=("127.0.0.0/8", "::1/128")
)
LOOPBACK_EGRESS_FLAGS = (
    "--egress-allow-http", "127.*", "--egress-allow-http", "localhost",
    "--egress-allow-cidr", "127.0.0.0/8", "--egress-allow-cidr", "::1/128",
)  # fmt: skip


async def start_test_gateway(
    specs: list[RouteSpec],
    *,
    keys: KeyStore | None = None,
    api_keys: tuple[str, ...] = (),
    table: RoutingTable | None = None,
    auth: ClientAuth | None = None,
    egress: EgressPolicy = LOOPBACK_EGRESS,
    **overrides: Any,
) -> RunningGateway:
    settings = dataclasses.replace(
        GatewaySettings(
            host="127.0.0.1",
            port=0,
            admin_port=0,
            engine_metrics_interval_s=0,
            drain_delay_s=0,  # tests that drain set their own
        ),
        **overrides,
    )
    settings = dataclasses.replace(
        settings, proxy=dataclasses.replace(settings.proxy, egress=egress)
    )
    if table is None:
        table = RoutingTable(
            lambda: CircuitBreaker(settings.breaker_failures, settings.breaker_open_s)
        )
        table.replace(specs)
    return await start_gateway(table, settings, keys=keys, auth=auth or ClientAuth(api_keys))


class Clients:
    """Makes openai SDK clients for a gateway and closes them all at the end of a test."""

    def __init__(self) -> None:
        self._made: list[openai.AsyncOpenAI] = []

    def __call__(self, gw: RunningGateway, api_key: str = "unused") -> openai.AsyncOpenAI:
        c = openai.AsyncOpenAI(
            base_url=gw.url + "/v1", api_key=api_key, max_retries=0, timeout=10.0
        )
        self._made.append(c)
        return c

    async def close(self) -> None:
        for c in self._made:
            await c.close()


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


_ANY: Any = object()


def accepts(auth: ClientAuth, key: str, scope: Any = _ANY) -> bool:
    """Whether `auth` takes `key` (and, if given, binds it to exactly `scope`)."""
    from hedge_serving.gateway.errors import AuthenticationFailed

    try:
        identity = auth.identify(f"Bearer {key}")
    except AuthenticationFailed:
        return False
    return scope is _ANY or identity.scope == scope
