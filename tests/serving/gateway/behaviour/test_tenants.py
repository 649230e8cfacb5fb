"""Tenants: no namespace can take another's traffic (docs/gateway.md, "Tenants").

Two namespaces claim the same model name. The bare name belongs to the older claim; every
model is reachable as `<namespace>/<name>`; a client key bound to a namespace resolves
names among that namespace's models alone — also after that namespace deletes its model,
when the other namespace's claim would otherwise take the name over.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest

from hedge_core.api import ModelDeployment
from hedge_serving.gateway.auth import ClientAuth, keys_from_secret, parse_keys_file
from hedge_serving.gateway.discovery import Parsed, route_specs
from hedge_serving.gateway.routing import RoutingTable
from tests.serving.gateway_stubs.engines import Engine
from tests.serving.gateway_stubs.harness import Clients, start_test_gateway

MODEL = "llama"


def md(namespace: str, name: str = "llama", served: str = MODEL) -> ModelDeployment:
    return ModelDeployment.from_body(
        {
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": {"source": "hf://org/llama", "name": served}},
        }
    )


def table_of(*claims: tuple[ModelDeployment, int, list[str]]) -> RoutingTable:
    """A table built the way discovery builds it: (ModelDeployment, created, backends)."""
    parsed = {(m.namespace, m.name): Parsed("1", m, created) for m, created, _ in claims}
    backends = {(m.namespace, m.name): urls for m, _, urls in claims}
    table = RoutingTable()
    table.replace(route_specs(parsed, backends))
    return table


A_URL, B_URL = "http://127.0.0.2:8000", "http://127.0.0.3:8000"


def backend_of(table: RoutingTable, model: str, scope: frozenset[str] | None = None) -> str:
    route = table.resolve(model, scope)
    assert route is not None, model
    return route.backends[0].url


def test_the_older_claim_owns_the_bare_name_and_both_are_reachable_qualified() -> None:
    table = table_of((md("team-b"), 200, [B_URL]), (md("team-a"), 100, [A_URL]))
    assert backend_of(table, MODEL) == A_URL
    assert backend_of(table, "team-a/llama") == A_URL
    assert backend_of(table, "team-b/llama") == B_URL
    assert table.resolve("team-c/llama") is None


def test_a_key_bound_to_a_namespace_resolves_names_in_it_alone() -> None:
    table = table_of((md("team-a"), 100, [A_URL]), (md("team-b"), 200, [B_URL]))
    assert backend_of(table, MODEL, frozenset({"team-b"})) == B_URL
    assert backend_of(table, MODEL, frozenset({"team-a"})) == A_URL
    assert table.resolve("team-a/llama", frozenset({"team-b"})) is None
    assert backend_of(table, "team-b/llama", frozenset({"team-b"})) == B_URL
    # A key bound to both: the older claim among them.
    assert backend_of(table, MODEL, frozenset({"team-a", "team-b"})) == A_URL


def test_deleting_a_model_does_not_hand_its_clients_to_another_namespace() -> None:
    table = table_of((md("team-b"), 200, [B_URL]))  # team-a deleted its "llama"
    assert table.resolve(MODEL, frozenset({"team-a"})) is None
    assert backend_of(table, MODEL) == B_URL  # unscoped clients: the remaining owner


def test_listing_shows_each_reachable_model_once_under_the_name_that_reaches_it() -> None:
    table = table_of((md("team-a"), 100, [A_URL]), (md("team-b"), 200, [B_URL]))
    assert [name for name, _ in table.listing()] == ["llama", "team-b/llama"]
    assert [name for name, _ in table.listing(frozenset({"team-b"}))] == ["llama"]
    assert table.listing(frozenset({"team-c"})) == []


def test_two_claims_in_one_namespace_the_older_wins_there_too() -> None:
    table = table_of(
        (md("team-a", "new", served="llama"), 300, [B_URL]),
        (md("team-a", "old", served="llama"), 100, [A_URL]),
    )
    assert backend_of(table, "team-a/llama") == A_URL
    assert backend_of(table, MODEL, frozenset({"team-a"})) == A_URL


def test_key_sources() -> None:
    assert parse_keys_file("k1,k2\n# comment\nk3 team-a\nk4 team-a, team-b\n") == [
        ("k1", None),
        ("k2", None),
        ("k3", frozenset({"team-a"})),
        ("k4", frozenset({"team-a", "team-b"})),
    ]
    assert sorted(keys_from_secret({"keys": "g1,g2", "namespace.team-a": "a1\na2"}), key=str) == [
        ("a1", frozenset({"team-a"})),
        ("a2", frozenset({"team-a"})),
        ("g1", None),
        ("g2", None),
    ]
    auth = ClientAuth([("a1", frozenset({"team-a"})), "g1"])
    assert auth.check("Bearer a1") == frozenset({"team-a"})
    assert auth.check("Bearer g1") is None


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    made = Clients()
    yield made
    await made.close()


async def test_through_the_gateway_with_the_openai_sdk(clients: Clients) -> None:
    engine_a = await Engine("engine-a", MODEL).start()
    engine_b = await Engine("engine-b", MODEL).start()
    parsed = {
        ("team-a", "llama"): Parsed("1", md("team-a"), 100),
        ("team-b", "llama"): Parsed("1", md("team-b"), 200),
    }
    backends = {("team-a", "llama"): [engine_a.url], ("team-b", "llama"): [engine_b.url]}
    keys = parse_keys_file("admin\nkey-a team-a\nkey-b team-b\n")
    gw = await start_test_gateway(route_specs(parsed, backends), auth=ClientAuth(keys))
    try:

        async def served_by(key: str, model: str) -> str:
            reply = await clients(gw, key).chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
            return str(reply.system_fingerprint)

        assert await served_by("admin", MODEL) == "engine-a"
        assert await served_by("admin", "team-b/llama") == "engine-b"
        assert await served_by("key-b", MODEL) == "engine-b"
        assert await served_by("key-a", MODEL) == "engine-a"
        with pytest.raises(openai.NotFoundError) as info:
            await served_by("key-b", "team-a/llama")
        assert "does not exist or you do not have access to it" in str(info.value)

        listed = await clients(gw, "key-b").models.list()
        assert [m.id for m in listed.data] == ["llama"]
        assert [m.owned_by for m in listed.data] == ["team-b"]
        listed = await clients(gw, "admin").models.list()
        assert [m.id for m in listed.data] == ["llama", "team-b/llama"]

        # team-a deletes its model: its clients get 404, never team-b's model.
        parsed.pop(("team-a", "llama"))
        gw.table.replace(route_specs(parsed, backends))
        with pytest.raises(openai.NotFoundError):
            await served_by("key-a", MODEL)
        assert await served_by("admin", MODEL) == "engine-b"
    finally:
        await gw.stop()
        await engine_a.stop()
        await engine_b.stop()
