"""Name squatting (issue 16, Medium-8): no served name can shadow a qualified name.

Every model is reachable as `<namespace>/<name>`. Served names may contain `/`, so team-b
serving `team-a/llama` would catch every unbound client asking for team-a's `llama` while
team-a's model is absent (deleted, being re-created, not yet applied). Such a served name is
never routed; names with a `/` stay usable when they start with the object's own namespace
or cannot be a namespace name (`Qwen/Qwen2.5-7B`).

Re-created objects: a bare name belongs to the oldest claim, so a delete-and-recreate hands
the bare name to an older claim in another namespace. The rule that keeps this fair is bound
keys (the chart's documented default): a key bound to team-a resolves bare names among
team-a's models alone, before, during and after the re-creation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest

from hedge_core.api import ModelDeployment
from hedge_serving.gateway.auth import ClientAuth, parse_keys_file
from hedge_serving.gateway.discovery import Parsed, route_specs
from hedge_serving.gateway.routing import RoutingTable
from tests.serving.gateway_stubs.engines import Engine
from tests.serving.gateway_stubs.harness import Clients, start_test_gateway


def md(namespace: str, name: str, served: str) -> ModelDeployment:
    return ModelDeployment.from_body(
        {
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": {"source": "hf://org/llama", "name": served}},
        }
    )


A_URL, B_URL = "http://127.0.0.2:8000", "http://127.0.0.3:8000"


def table_of(*claims: tuple[ModelDeployment, int, list[str]]) -> RoutingTable:
    parsed = {(m.namespace, m.name): Parsed("1", m, created) for m, created, _ in claims}
    backends = {(m.namespace, m.name): urls for m, _, urls in claims}
    table = RoutingTable()
    table.replace(route_specs(parsed, backends))
    return table


def test_a_served_name_in_another_namespaces_form_is_never_routed() -> None:
    squat = md("team-b", "squat", "team-a/llama")
    table = table_of((squat, 100, [B_URL]))
    assert table.resolve("team-a/llama") is None
    assert table.resolve("team-b/team-a/llama") is None
    assert table.resolve("team-a/llama", frozenset({"team-b"})) is None
    assert table.listing() == [] and table.listing(frozenset({"team-b"})) == []
    # team-a's own model arrives later: its qualified name is its own.
    table = table_of((squat, 100, [B_URL]), (md("team-a", "llama", "llama"), 200, [A_URL]))
    route = table.resolve("team-a/llama")
    assert route is not None and route.backends[0].url == A_URL


def test_names_with_a_slash_that_shadow_no_namespace_are_served() -> None:
    table = table_of(
        (md("team-b", "qwen", "Qwen/Qwen2.5-7B"), 100, [B_URL]),
        (md("team-a", "own", "team-a/llama"), 100, [A_URL]),
    )
    for name, url in (("Qwen/Qwen2.5-7B", B_URL), ("team-a/llama", A_URL)):
        route = table.resolve(name)
        assert route is not None and route.backends[0].url == url


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    made = Clients()
    yield made
    await made.close()


async def test_through_the_gateway(clients: Clients) -> None:
    engine_a = await Engine("engine-a", "llama").start()
    engine_b = await Engine("engine-b", "llama").start()
    squatter = await Engine("squatter", "team-a/llama").start()  # would answer, if asked
    parsed = {
        ("team-a", "llama"): Parsed("1", md("team-a", "llama", "llama"), 100),
        ("team-b", "llama"): Parsed("1", md("team-b", "llama", "llama"), 200),
        ("team-b", "squat"): Parsed("1", md("team-b", "squat", "team-a/llama"), 50),
    }
    backends = {
        ("team-a", "llama"): [engine_a.url],
        ("team-b", "llama"): [engine_b.url],
        ("team-b", "squat"): [squatter.url],
    }
    auth = ClientAuth(parse_keys_file("admin\nkey-a team-a\nkey-b team-b\n"))
    gw = await start_test_gateway(route_specs(parsed, backends), auth=auth)

    async def served_by(key: str, model: str) -> str:
        reply = await clients(gw, key).chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        return str(reply.system_fingerprint)

    try:
        assert await served_by("admin", "team-a/llama") == "engine-a"
        # team-a deletes llama (Helm reinstall, Argo Replace=true, a Velero restore) ...
        gone = dict(parsed)
        gone.pop(("team-a", "llama"))
        gw.table.replace(route_specs(gone, backends))
        for key, model in (
            ("admin", "team-a/llama"),
            ("key-a", "llama"),
            ("key-a", "team-a/llama"),
        ):
            with pytest.raises(openai.NotFoundError):
                await served_by(key, model)
        assert not squatter.received
        # ... and re-creates it, now newer than team-b's llama: team-b owns the bare name for
        # unbound keys, but team-a's bound key is served by team-a, as before.
        parsed[("team-a", "llama")] = Parsed("2", md("team-a", "llama", "llama"), 300)
        gw.table.replace(route_specs(parsed, backends))
        assert await served_by("key-a", "llama") == "engine-a"
        assert await served_by("admin", "team-a/llama") == "engine-a"
        assert await served_by("admin", "llama") == "engine-b"
        assert await served_by("key-b", "llama") == "engine-b"
    finally:
        await gw.stop()
        await engine_a.stop()
        await engine_b.stop()
        await squatter.stop()
