"""Kubernetes discovery against a fake API server that speaks list/watch/410 for real."""

from __future__ import annotations

import openai
import pytest

from hedge_core.kube import Kube
from hedge_serving.gateway.app import RunningGateway
from hedge_serving.gateway.auth import ClientAuth
from hedge_serving.gateway.discovery import KubernetesDiscovery, ready_endpoints
from hedge_serving.gateway.keys import SecretCache
from hedge_serving.gateway.routing import ProviderType, RoutingTable, SecretRef
from tests.serving.gateway_stubs.engines import Engine
from tests.serving.gateway_stubs.harness import Clients, accepts, start_test_gateway, wait_for
from tests.serving.gateway_stubs.kubeapi import (
    FakeKubeAPI,
    endpoint_slice,
    model_deployment,
    provider_key_secret,
    secret,
)
from tests.serving.gateway_stubs.providers import OpenAIStub
from tests.serving.gateway_stubs.replies import reply_text

NS = "team-a"


def _discovery(
    kube: Kube, table: RoutingTable, secrets: SecretCache, **kw: object
) -> KubernetesDiscovery:
    return KubernetesDiscovery(table, secrets, kube, min_backoff_s=0.05, max_backoff_s=0.2, **kw)  # type: ignore[arg-type]


def _backends(table: RoutingTable, model: str) -> list[str]:
    route = table.resolve(model)
    return [] if route is None else [b.url for b in route.backends]


async def test_routes_follow_model_deployments_and_ready_endpoints(
    api: FakeKubeAPI, kube: Kube
) -> None:
    await api.put(
        "ModelDeployment",
        model_deployment(
            "llama",
            NS,
            model_name="llama-3-8b",
            adapters=("sql-lora",),
            serving={"requestTimeoutSeconds": 60, "maxQueueDepth": 4},
        ),
    )
    await api.put(
        "EndpointSlice",
        endpoint_slice("llama", NS, [("127.0.0.2", 8000, True), ("127.0.0.3", 8000, False)]),
    )
    await api.put("ModelDeployment", model_deployment("qwen", "team-b"))
    table, secrets = RoutingTable(), SecretCache()
    d = _discovery(kube, table, secrets)
    await d.start()
    try:
        await d.wait_synced(5)
        assert d.synced()
        assert _backends(table, "llama-3-8b") == ["http://127.0.0.2:8000"]
        assert _backends(table, "sql-lora") == ["http://127.0.0.2:8000"]
        route = table.resolve("llama-3-8b")
        assert route is not None and route.options.request_timeout_s == 60
        assert route.options.max_queue_depth == 4 and route.owner == NS
        assert table.resolve("qwen") is not None and _backends(table, "qwen") == []

        # the second pod becomes ready; a new slice adds a third pod
        await api.put(
            "EndpointSlice",
            endpoint_slice("llama", NS, [("127.0.0.2", 8000, True), ("127.0.0.3", 8000, True)]),
        )
        await api.put(
            "EndpointSlice", endpoint_slice("llama", NS, [("127.0.0.4", 8000, True)], "xyz")
        )
        await wait_for(lambda: len(_backends(table, "llama-3-8b")) == 3, what="3 backends")
        # a pod goes away; then the ModelDeployment is deleted
        await api.delete("EndpointSlice", NS, "llama-xyz")
        await wait_for(lambda: len(_backends(table, "llama-3-8b")) == 2, what="2 backends")
        await api.delete("ModelDeployment", NS, "llama")
        await wait_for(lambda: table.resolve("llama-3-8b") is None, what="route removed")
        assert table.resolve("sql-lora") is None
    finally:
        await d.stop()


async def test_relists_on_410_and_survives_api_server_restart(api: FakeKubeAPI, kube: Kube) -> None:
    await api.put("ModelDeployment", model_deployment("m1", NS))
    table, secrets = RoutingTable(), SecretCache()
    d = _discovery(kube, table, secrets)
    await d.start()
    try:
        await d.wait_synced(5)
        assert table.resolve("m1") is not None
        lists_before = sum(1 for r in api.requests if "watch" not in r)
        # while the watch is down, m1 is deleted and m2 created; history is compacted
        api.drop_watches()
        await api.delete("ModelDeployment", NS, "m1")
        await api.put("ModelDeployment", model_deployment("m2", NS))
        api.compact()
        await wait_for(
            lambda: table.resolve("m2") is not None and table.resolve("m1") is None,
            what="re-list after 410",
        )
        assert sum(1 for r in api.requests if "watch" not in r) > lists_before

        # the API server goes away and comes back on the same port
        port = api.port
        await api.stop()
        await api.put("ModelDeployment", model_deployment("m3", NS))
        await api.start(port)
        await wait_for(lambda: table.resolve("m3") is not None, timeout=10, what="m3 after restart")
        assert table.resolve("m2") is not None
    finally:
        await d.stop()


async def test_fallback_keys_come_from_watched_secrets(
    api: FakeKubeAPI, kube: Kube, client: Clients
) -> None:
    provider = await OpenAIStub(api_key="sk-one").start()
    await api.put("Secret", provider_key_secret("openai", NS, {"api-key": "sk-one"}))
    await api.put("Secret", secret("unrelated", NS, {"api-key": "nope"}))
    await api.put(
        "ModelDeployment",
        model_deployment(
            "llama",
            NS,
            fallback=[
                {
                    "type": "OpenAICompatible",
                    "model": "gpt-4o-mini",
                    "baseURL": provider.url + "/v1",
                    "apiKeySecretRef": {"name": "openai", "key": "api-key"},
                }
            ],
        ),
    )
    table, secrets = RoutingTable(), SecretCache()
    d = _discovery(kube, table, secrets)
    await d.start()
    gw = await start_test_gateway([], keys=secrets, table=table)
    try:
        await d.wait_synced(5)
        ref = SecretRef(namespace=NS, name="openai", key="api-key")
        await wait_for(lambda: secrets.get(ref) == "sk-one", what="secret loaded")
        route = table.resolve("llama")
        assert route is not None and route.fallback[0].type is ProviderType.OPENAI_COMPATIBLE
        c = client(gw)
        raw = await c.chat.completions.with_raw_response.create(
            model="llama", messages=[{"role": "user", "content": "k"}]
        )
        assert raw.headers["x-hedge-served-by"] == "openai-compatible"
        assert raw.headers["x-hedge-fallback-reason"] == "Unavailable"
        assert raw.parse().choices[0].message.content == reply_text("k")
        # rotate the key at the provider and in the Secret: the next request uses the new one
        provider.api_key = "sk-two"
        await api.put("Secret", provider_key_secret("openai", NS, {"api-key": "sk-two"}))
        await wait_for(lambda: secrets.get(ref) == "sk-two", what="secret rotated")
        await c.chat.completions.create(model="llama", messages=[{"role": "user", "content": "k"}])
        assert provider.received[-1].headers["Authorization"] == "Bearer sk-two"
        # the gateway only ever asked for the Secret it needs
        assert not any("unrelated" in r for r in api.requests)
        assert all("fieldSelector=metadata.name" in r for r in api.requests if "/secrets" in r)
        # the ModelDeployment now references another Secret: the old one is no longer watched
        await api.put("Secret", provider_key_secret("openai-2", NS, {"api-key": "sk-three"}))
        md = model_deployment(
            "llama",
            NS,
            fallback=[
                {
                    "type": "OpenAICompatible",
                    "model": "gpt-4o-mini",
                    "baseURL": provider.url + "/v1",
                    "apiKeySecretRef": {"name": "openai-2", "key": "api-key"},
                }
            ],
        )
        await api.put("ModelDeployment", md)
        new_ref = SecretRef(namespace=NS, name="openai-2", key="api-key")
        await wait_for(lambda: secrets.get(new_ref) == "sk-three", what="new secret")
        await wait_for(lambda: set(d._secret_watches) == {(NS, "openai-2")}, what="old watch gone")
        assert secrets.get(ref) is None
    finally:
        await gw.stop()
        await d.stop()
        await provider.stop()


async def test_gateway_serves_discovered_pods_and_client_keys_secret(
    api: FakeKubeAPI, kube: Kube, client: Clients
) -> None:
    engines = [await Engine(f"e{i}", "llama-3-8b").start() for i in range(2)]
    await api.put("ModelDeployment", model_deployment("llama", NS, model_name="llama-3-8b"))
    for i, e in enumerate(engines):
        port = int(e.url.rsplit(":", 1)[1])
        await api.put(
            "EndpointSlice", endpoint_slice("llama", NS, [("127.0.0.1", port, True)], f"s{i}")
        )
    # unbound keys live under the data key `keys` (any other data key is ignored)
    await api.put("Secret", secret("gateway-keys", "hedge-system", {"keys": "client-key"}))
    table, secrets = RoutingTable(), SecretCache()
    auth = ClientAuth(required=True)
    d = _discovery(kube, table, secrets, client_keys_secret="hedge-system/gateway-keys", auth=auth)
    await d.start()
    gw: RunningGateway = await start_test_gateway([], keys=secrets, table=table, auth=auth)
    try:
        await d.wait_synced(5)
        with pytest.raises(openai.AuthenticationError):
            await client(gw, api_key="wrong").models.list()
        await wait_for(lambda: accepts(auth, "client-key"), what="client keys")
        c = client(gw, api_key="client-key")
        assert [m.id for m in (await c.models.list()).data] == ["llama-3-8b"]
        # One request at a time, so prefix affinity alone picks the pod: with 6 prompts all
        # landed on one of the two pods about once in 32 runs (the pods' random ports change
        # the hashes; CI hit it). With 32, about once in 2 billion.
        for i in range(32):
            raw = await c.chat.completions.with_raw_response.create(
                model="llama-3-8b", messages=[{"role": "user", "content": f"p{i}"}]
            )
            assert raw.headers["x-hedge-served-by"] == "self-hosted"
        assert all(e.received for e in engines)
        # the Secret disappears: the API locks rather than opening up
        await api.delete("Secret", "hedge-system", "gateway-keys")
        await wait_for(lambda: not accepts(auth, "client-key"), what="keys dropped")
        with pytest.raises(openai.AuthenticationError):
            await c.models.list()
    finally:
        await gw.stop()
        await d.stop()
        for e in engines:
            await e.stop()


def test_ready_endpoints_ipv6_and_not_ready() -> None:
    s = {
        "addressType": "IPv6",
        "ports": [{"name": "metrics", "port": 9}, {"name": "http", "port": 8000}],
        "endpoints": [
            {"addresses": ["fd00::1"], "conditions": {"ready": True}},
            {"addresses": ["fd00::2"], "conditions": {"ready": False}},
            {"addresses": ["fd00::3"], "conditions": {}},
        ],
    }
    assert ready_endpoints(s) == ["http://[fd00::1]:8000", "http://[fd00::3]:8000"]


async def test_model_deployments_are_read_by_the_api_module(
    api: FakeKubeAPI, kube: Kube, caplog: pytest.LogCaptureFixture
) -> None:
    """The gateway applies the API's defaults and rejects what the API rejects: one reader."""
    from hedge_core.api import ServingSpec

    await api.put("ModelDeployment", model_deployment("plain", NS))
    broken = model_deployment(
        "broken",
        NS,
        fallback=[{"type": "OpenAI", "model": "gpt-4o-mini", "apiKeySecretRef": {"name": "k"}}],
    )  # the Secret key is required: the operator reports InvalidSpec, the gateway skips it
    await api.put("ModelDeployment", broken)
    table = RoutingTable()
    d = _discovery(kube, table, SecretCache())
    caplog.set_level("WARNING", logger="hedge.gateway.discovery")
    await d.start()
    try:
        await d.wait_synced(5)
        route = table.resolve("plain")
        assert route is not None
        defaults = ServingSpec()
        assert route.options.request_timeout_s == defaults.request_timeout_seconds
        assert route.options.max_queue_depth == defaults.max_queue_depth
        assert table.resolve("broken") is None
        # Unrelated changes rebuild the table; the invalid object is not logged again.
        await api.put("EndpointSlice", endpoint_slice("plain", NS, [("127.0.0.2", 8000, True)]))
        await wait_for(lambda: _backends(table, "plain") == ["http://127.0.0.2:8000"], what="slice")
        logged = [r for r in caplog.records if "broken" in r.getMessage()]
        assert len(logged) == 1 and "apiKeySecretRef.key" in logged[0].getMessage()
        # Fixed: routed.
        fixed = model_deployment(
            "broken",
            NS,
            fallback=[
                {
                    "type": "OpenAI",
                    "model": "gpt-4o-mini",
                    "apiKeySecretRef": {"name": "k", "key": "api-key"},
                }
            ],
        )
        await api.put("ModelDeployment", fixed)
        await wait_for(lambda: table.resolve("broken") is not None, what="fixed object routed")
    finally:
        await d.stop()
