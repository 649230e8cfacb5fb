"""What discovery takes from a namespace, and what it refuses (issue 16, High-2 and Low).

- A Secret is a provider key only when it opted in (`hedge.dev/provider-key: "true"`):
  naming any other Secret in a ModelDeployment gets nothing into the gateway's memory, and
  the fallback provider is called without it never. Labelling the Secret later is enough.
- The gateway's client-keys Secret is never a provider key, labelled or not: an object that
  names it cannot send the admin key to its baseURL.
- Of a provider-key Secret only the referenced key is held; the watch's copy holds none.
- An EndpointSlice counts for a ModelDeployment only when it is for one of the Services the
  operator names for it (`<md>`, or `<md>-<revision>` for a revision its status names): a
  Service someone else labels `hedge.dev/model-deployment` adds no backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from hedge_core.kube import Kube
from hedge_serving.gateway.auth import ClientAuth
from hedge_serving.gateway.discovery import KubernetesDiscovery, Rollout
from hedge_serving.gateway.keys import SecretCache
from hedge_serving.gateway.routing import RoutingTable, SecretRef
from tests.serving.gateway_stubs.harness import Clients, accepts, start_test_gateway, wait_for
from tests.serving.gateway_stubs.kubeapi import (
    FakeKubeAPI,
    endpoint_slice,
    model_deployment,
    provider_key_secret,
    secret,
)
from tests.serving.gateway_stubs.providers import OpenAIStub

NS = "team-a"
RELEASE = "hedge-system"


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    made = Clients()
    yield made
    await made.close()


def discovery(
    kube: Kube, table: RoutingTable, secrets: SecretCache, **kw: Any
) -> KubernetesDiscovery:
    return KubernetesDiscovery(table, secrets, kube, min_backoff_s=0.05, max_backoff_s=0.2, **kw)


def with_fallback(
    name: str, namespace: str, url: str, secret_name: str, key: str
) -> dict[str, Any]:
    return model_deployment(
        name,
        namespace,
        fallback=[
            {
                "type": "OpenAICompatible",
                "model": "gpt-4o-mini",
                "baseURL": url + "/v1",
                "apiKeySecretRef": {"name": secret_name, "key": key},
            }
        ],
    )


async def test_an_unlabelled_secret_never_reaches_the_gateway(
    api: FakeKubeAPI, kube: Kube, clients: Clients
) -> None:
    provider = await OpenAIStub(api_key="sk-team").start()
    await api.put("Secret", secret("db-password", NS, {"password": "hunter2"}))
    await api.put(
        "ModelDeployment", with_fallback("llama", NS, provider.url, "db-password", "password")
    )
    table, secrets = RoutingTable(), SecretCache()
    d = discovery(kube, table, secrets)
    await d.start()
    gw = await start_test_gateway([], keys=secrets, table=table)
    try:
        await d.wait_synced(5)
        await wait_for(lambda: (NS, "db-password") in d._secret_watches, what="secret watch")
        await wait_for(lambda: d._secret_watches[(NS, "db-password")].synced.is_set())
        ref = SecretRef(namespace=NS, name="db-password", key="password")
        assert secrets.get(ref) is None
        assert d._secret_watches[(NS, "db-password")].items == {}
        # Every Secret read asks for the label: the API server never sends another Secret.
        reads = [r for r in api.requests if "/secrets" in r]
        assert reads and all("labelSelector=hedge.dev/provider-key%3Dtrue" in r for r in reads)
        with pytest.raises(openai.APIStatusError) as info:
            await clients(gw).chat.completions.create(
                model="llama", messages=[{"role": "user", "content": "hi"}]
            )
        assert info.value.status_code == 503
        assert not provider.received  # called without a key: never
        # The owner labels a Secret on purpose: now it is a provider key.
        await api.put("Secret", provider_key_secret("db-password", NS, {"password": "sk-team"}))
        await wait_for(lambda: secrets.get(ref) == "sk-team", what="labelled secret loaded")
    finally:
        await gw.stop()
        await d.stop()
        await provider.stop()


async def test_the_client_keys_secret_is_never_a_provider_key(
    api: FakeKubeAPI, kube: Kube, clients: Clients
) -> None:
    """A cluster-wide gateway watches the release namespace too: an object there names the
    client-keys Secret (even labelled) as its provider key, to send the admin key away."""
    catcher = await OpenAIStub(api_key="admin-key").start()
    keys = {"keys": "admin-key"}
    await api.put("Secret", provider_key_secret("gateway-keys", RELEASE, keys))
    await api.put(
        "ModelDeployment", with_fallback("thief", RELEASE, catcher.url, "gateway-keys", "keys")
    )
    table, secrets = RoutingTable(), SecretCache()
    auth = ClientAuth(required=True)
    d = discovery(kube, table, secrets, client_keys_secret=f"{RELEASE}/gateway-keys", auth=auth)
    await d.start()
    gw = await start_test_gateway([], keys=secrets, table=table, auth=auth)
    try:
        await d.wait_synced(5)
        await wait_for(lambda: accepts(auth, "admin-key", None), what="client keys")
        assert table.resolve("thief") is not None
        assert d._secret_watches == {}  # the routes' reference is refused, not watched
        assert secrets.get(SecretRef(namespace=RELEASE, name="gateway-keys", key="keys")) is None
        with pytest.raises(openai.APIStatusError):
            await clients(gw, "admin-key").chat.completions.create(
                model="thief", messages=[{"role": "user", "content": "hi"}]
            )
        assert all("admin-key" not in str(r.headers) for r in catcher.received)
        # Nor does the client-keys watch keep the Secret's values once read.
        assert d._client_keys_watch is not None
        assert all("data" not in s for s in d._client_keys_watch.items.values())
    finally:
        await gw.stop()
        await d.stop()
        await catcher.stop()


async def test_only_the_referenced_key_is_held(api: FakeKubeAPI, kube: Kube) -> None:
    await api.put(
        "Secret",
        provider_key_secret("keys", NS, {"openai": "sk-one", "anthropic": "sk-other", "x": "y"}),
    )
    await api.put(
        "ModelDeployment", with_fallback("llama", NS, "https://api.example", "keys", "openai")
    )
    table, secrets = RoutingTable(), SecretCache()
    d = discovery(kube, table, secrets)
    await d.start()
    try:
        await d.wait_synced(5)
        ref = SecretRef(namespace=NS, name="keys", key="openai")
        await wait_for(lambda: secrets.get(ref) == "sk-one", what="secret loaded")
        assert secrets._data == {(NS, "keys"): {"openai": "sk-one"}}
        watch = d._secret_watches[(NS, "keys")]
        assert all(
            "data" not in s and "annotations" not in s["metadata"] for s in watch.items.values()
        )
        # The object now names another key of the same Secret: that one is read instead.
        await api.put(
            "ModelDeployment",
            with_fallback("llama", NS, "https://api.example", "keys", "anthropic"),
        )
        other = SecretRef(namespace=NS, name="keys", key="anthropic")
        await wait_for(lambda: secrets.get(other) == "sk-other", what="the other key")
        assert secrets._data == {(NS, "keys"): {"anthropic": "sk-other"}}
        # A rotation is still seen (the watch resumes from the stripped copy's version).
        await api.put("Secret", provider_key_secret("keys", NS, {"anthropic": "sk-new"}))
        await wait_for(lambda: secrets.get(other) == "sk-new", what="rotated")
    finally:
        await d.stop()


def test_which_endpoint_slices_a_model_deployment_owns() -> None:
    from hedge_serving.gateway.discovery import trusted_slice

    def labels(service: str, revision: str = "") -> dict[str, str]:
        out = {"hedge.dev/model-deployment": "llama", "kubernetes.io/service-name": service}
        if revision:
            out["hedge.dev/revision"] = revision
        return out

    rollout = Rollout(stable="aaaa", canary="bbbb")
    assert trusted_slice(labels("llama"), rollout)
    assert trusted_slice(labels("llama-aaaa", "aaaa"), rollout)
    assert trusted_slice(labels("llama-bbbb", "bbbb"), rollout)
    assert not trusted_slice(labels("sidecar"), rollout)  # someone else's Service
    assert not trusted_slice(labels("llama-evil", "evil"), rollout)  # no such revision
    assert not trusted_slice(labels("llama", "aaaa"), rollout)  # wrong Service for it
    assert not trusted_slice(labels("llama"), None)  # no such ModelDeployment
    assert not trusted_slice({"kubernetes.io/service-name": "llama"}, rollout)


async def test_a_labelled_foreign_service_adds_no_backend(api: FakeKubeAPI, kube: Kube) -> None:
    await api.put("ModelDeployment", model_deployment("llama", NS))
    await api.put("EndpointSlice", endpoint_slice("llama", NS, [("127.0.0.2", 8000, True)]))
    # Anyone who may create a Service in the namespace can label it for the model.
    foreign = endpoint_slice("llama", NS, [("127.0.0.66", 8000, True)], "evil", service="evil")
    await api.put("EndpointSlice", foreign)
    rogue = endpoint_slice("llama", NS, [("127.0.0.67", 8000, True)], "rev", revision="rogue")
    await api.put("EndpointSlice", rogue)
    table = RoutingTable()
    d = discovery(kube, table, SecretCache())
    await d.start()
    try:
        await d.wait_synced(5)

        def urls() -> list[str]:
            route = table.resolve("llama")
            return [] if route is None else [b.url for b in route.backends]

        await wait_for(lambda: urls() != [], what="routed")
        assert urls() == ["http://127.0.0.2:8000"]
    finally:
        await d.stop()
