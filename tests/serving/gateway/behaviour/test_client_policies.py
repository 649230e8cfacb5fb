"""ClientPolicies discovered from a fake API server that speaks list/watch for real: a
policy's keys work once its labelled Secret is there, a rotated key replaces the old one
without a restart, an unlabelled Secret or an invalid policy authenticates nothing, and no
key value stays in the watches' caches (docs/tenants.md)."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from hedge_core.kube import Kube
from hedge_serving.gateway.auth import ClientAuth
from hedge_serving.gateway.discovery import KubernetesDiscovery
from hedge_serving.gateway.keys import SecretCache
from hedge_serving.gateway.routing import RoutingTable
from tests.serving.gateway_stubs.engines import Engine
from tests.serving.gateway_stubs.harness import Clients, accepts, start_test_gateway, wait_for
from tests.serving.gateway_stubs.kubeapi import (
    FakeKubeAPI,
    endpoint_slice,
    model_deployment,
    secret,
)

NS = "team-a"
LABEL = {"hedge.dev/client-key": "true"}


def client_policy(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "hedge.dev/v1alpha1",
        "kind": "ClientPolicy",
        "metadata": {"name": name, "namespace": namespace, "generation": 1},
        "spec": {"keys": [{"secretRef": {"name": "keys"}}], **spec},
    }


def discovery(kube: Kube, auth: ClientAuth) -> KubernetesDiscovery:
    return KubernetesDiscovery(
        RoutingTable(), SecretCache(), kube, auth=auth, client_policies=True,
        min_backoff_s=0.05, max_backoff_s=0.2,
    )  # fmt: skip


async def test_policy_keys_follow_their_secret_and_rotate_without_a_restart(
    api: FakeKubeAPI, kube: Kube
) -> None:
    auth = ClientAuth(required=True)
    await api.put("ClientPolicy", client_policy("default", NS, limits={"requestsPerMinute": 5}))
    d = discovery(kube, auth)
    await d.start()
    try:
        await d.wait_synced(5)
        assert not accepts(auth, "sk-old")  # no Secret yet: nothing, and still closed
        await api.put("Secret", secret("keys", NS, {"a": "sk-old"}, LABEL))
        await wait_for(lambda: accepts(auth, "sk-old", frozenset({NS})), what="the policy key")
        identity = auth.identify("Bearer sk-old")
        assert identity.tenant is not None and identity.tenant.label == "team-a/default"
        assert identity.key == "keys.a"
        # Rotation: the new key works and the old one stops, same process.
        await api.put("Secret", secret("keys", NS, {"a": "sk-new"}, LABEL))
        await wait_for(lambda: accepts(auth, "sk-new"), what="the rotated key")
        assert not accepts(auth, "sk-old")
        # The watches keep no key value.
        for w in d._key_secret_watches.values():
            assert all("data" not in s for s in w.items.values())
        # The policy goes: its keys stop.
        await api.delete("ClientPolicy", NS, "default")
        await wait_for(lambda: not accepts(auth, "sk-new"), what="keys of a deleted policy")
    finally:
        await d.stop()


async def test_an_unlabelled_secret_or_an_invalid_policy_authenticates_nothing(
    api: FakeKubeAPI, kube: Kube
) -> None:
    auth = ClientAuth(required=True)
    await api.put("Secret", secret("keys", NS, {"a": "sk-unlabelled"}))  # no opt-in label
    await api.put("Secret", secret("keys", "team-b", {"a": "sk-b"}, LABEL))
    await api.put("ClientPolicy", client_policy("default", NS))
    await api.put("ClientPolicy", client_policy("broken", "team-b", weight=0))  # weight >= 1
    d = discovery(kube, auth)
    await d.start()
    try:
        await d.wait_synced(5)
        # A valid policy naming the same Secret as the broken one: had the broken one been
        # taken, the key would belong to two identities and authenticate neither.
        await api.put("ClientPolicy", client_policy("good", "team-b"))
        await wait_for(lambda: accepts(auth, "sk-b", frozenset({"team-b"})), what="team-b key")
        assert not accepts(auth, "sk-unlabelled")
        await api.put("Secret", secret("keys", NS, {"a": "sk-unlabelled"}, LABEL))
        await wait_for(lambda: accepts(auth, "sk-unlabelled"), what="the key once labelled")
    finally:
        await d.stop()


async def test_a_policy_key_through_the_gateway_with_the_openai_sdk(
    api: FakeKubeAPI, kube: Kube
) -> None:
    engine = await Engine("engine", "llama-3-8b").start()
    host, port = engine.url.removeprefix("http://").split(":")
    await api.put("ModelDeployment", model_deployment("llama", NS, model_name="llama-3-8b"))
    await api.put("EndpointSlice", endpoint_slice("llama", NS, [(host, int(port), True)]))
    await api.put("ClientPolicy", client_policy("default", NS))
    await api.put("Secret", secret("keys", NS, {"a": "sk-team-a"}, LABEL))
    auth = ClientAuth(required=True)
    table, secrets = RoutingTable(), SecretCache()
    d = KubernetesDiscovery(table, secrets, kube, auth=auth, client_policies=True)
    await d.start()
    gw = await start_test_gateway([], keys=secrets, table=table, auth=auth)
    clients = Clients()
    try:
        await d.wait_synced(5)
        await wait_for(lambda: accepts(auth, "sk-team-a"), what="the policy key")
        reply = await clients(gw, "sk-team-a").chat.completions.create(
            model="llama-3-8b", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert reply.choices[0].message.content
        with pytest.raises(openai.AuthenticationError):
            await clients(gw, "sk-other").models.list()
    finally:
        await clients.close()
        await gw.stop()
        await d.stop()
        await engine.stop()
