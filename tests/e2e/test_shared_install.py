"""One install shared by two tenants, attacked in order (docs/security.md).

Three namespaces: the release's (the gateway's client keys live there), team-a's and
team-b's. team-b is the attacker: it may create ModelDeployments and Secrets in its own
namespace and holds a key bound to it. Every attack must be refused with a clear error, and
nothing may reach the attacker's listeners (a "metadata" server and a redirector on
loopback, and a collector that would receive the platform's client keys).

The egress policy is the platform admin's: plain http to loopback is allowed for the
redirector's address only, in team-b's namespace (the way an admin allows an in-cluster
proxy), never for the metadata server's address.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from aiohttp import web

from tests.e2e.conftest import (
    E2ECluster,
    HedgeProcess,
    condition,
    fresh_namespace,
    get_md,
    metric_sum,
    wait_for,
    wait_ready,
)
from tests.e2e.test_gateway import Gateway

METADATA_HOST = "127.0.0.3"  # never allowed
REDIRECTOR_HOST = "127.0.0.2"  # allowed over http, for team-b only
ADMIN_KEY = "platform-admin-key"
PROVIDER_KEY = "sk-team-b-provider-key"


class Listener:
    """An attacker's HTTP server on loopback, on its own thread: it records every request
    (path and headers) and answers with `reply`."""

    def __init__(self, host: str, reply: Callable[[web.Request], web.StreamResponse]) -> None:
        self.host = host
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._reply = reply
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)

    async def _start(self) -> int:
        async def handle(request: web.Request) -> web.StreamResponse:
            self.requests.append((request.path, dict(request.headers)))
            return self._reply(request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def listeners() -> Iterator[tuple[Listener, Listener, Listener]]:
    metadata = Listener(
        METADATA_HOST, lambda _: web.json_response({"iam": {"token": "instance-secret"}})
    )
    redirector = Listener(
        REDIRECTOR_HOST,
        lambda request: web.HTTPFound(f"{metadata.url}/latest/meta-data{request.path_qs}"),
    )
    collector = Listener(REDIRECTOR_HOST, lambda _: web.json_response({"error": "nope"}))
    try:
        yield metadata, redirector, collector
    finally:
        for listener in (metadata, redirector, collector):
            listener.close()


@pytest.fixture
def team_b(cluster: E2ECluster) -> Iterator[str]:
    yield from fresh_namespace(cluster)


@pytest.fixture
def release(cluster: E2ECluster) -> Iterator[str]:
    yield from fresh_namespace(cluster)


def secret(namespace: str, name: str, data: dict[str, str], opted_in: bool) -> dict[str, Any]:
    labels = {"hedge.dev/provider-key": "true"} if opted_in else {}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def model(
    namespace: str,
    name: str,
    served: str,
    *,
    replicas: int = 1,
    fallback: dict[str, Any] | None = None,
    serving: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "name": served},
        "resources": {"gpus": 1, "gpuType": "nvidia-a100-80gb"},
        "replicas": replicas,
    }
    if fallback is not None:
        spec["fallback"] = fallback
    if serving is not None:
        spec["serving"] = serving
    return {
        "apiVersion": "hedge.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def spill_to(base_url: str, secret_name: str, key: str = "api-key") -> dict[str, Any]:
    """A fallback that answers at once while no engine pod is ready."""
    return {
        "onUnavailable": True,
        "providers": [
            {
                "type": "OpenAICompatible",
                "baseURL": base_url,
                "model": "gpt-4o-mini",
                "apiKeySecretRef": {"name": secret_name, "key": key},
            }
        ],
    }


def reason_of(cluster: E2ECluster, namespace: str, name: str, reason: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        ready = condition(get_md(cluster, namespace, name), "Ready")
        return ready if ready.get("reason") == reason else None

    return wait_for(check, 60, f"{namespace}/{name} Ready=False {reason}")


def refused(client: openai.OpenAI, model_name: str) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model=model_name, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    return caught.value


def test_a_shared_install_refuses_each_attack_of_one_tenant_on_another(
    cluster: E2ECluster,
    namespace: str,
    team_b: str,
    release: str,
    crd: None,
    hedge_process: Callable[..., HedgeProcess],
    listeners: tuple[Listener, Listener, Listener],
) -> None:
    team_a = namespace
    metadata, redirector, collector = listeners
    client_keys = {
        "keys": ADMIN_KEY,
        f"namespace.{team_a}": "key-a",
        f"namespace.{team_b}": "key-b",
    }
    # Even labelled as a provider key (a platform admin's slip), the gateway's own client-keys
    # Secret is never one.
    cluster.apply(secret(release, "client-keys", client_keys, opted_in=True))
    cluster.apply(secret(team_b, "provider", {"api-key": PROVIDER_KEY}, opted_in=True))
    cluster.apply(secret(team_b, "not-a-provider-key", {"api-key": "team-b-db-password"}, False))
    watched = ("--namespace", team_a, "--namespace", team_b, "--namespace", release)
    hedge_process("operator", *watched, "--metrics-port", "0", "--health-port", "0")
    gateway = Gateway(
        hedge_process(
            "gateway", "--kubeconfig", str(cluster.kubeconfig), *watched,
            "--api-keys-secret", f"{release}/client-keys",
            "--port", "0", "--admin-port", "0", "--drain-delay", "0",
            # The admin allows plain http to the redirector's address, for team-b and the
            # release namespace only.
            "--egress-allow-http", f"{team_b}={REDIRECTOR_HOST}",
            "--egress-allow-http", f"{release}={REDIRECTOR_HOST}",
            "--egress-allow-cidr", "127.0.0.0/8",
        )
    )  # fmt: skip
    cluster.apply(model(team_a, "llama", "llama"))
    wait_ready(cluster, team_a, "llama")
    b = openai.OpenAI(base_url=gateway.url + "/v1", api_key="key-b", max_retries=0)

    # 1. A provider baseURL at the metadata server: refused by the egress policy (not https,
    #    not an allowed host), with a 503 that names the policy.
    cluster.apply(
        model(team_b, "steal", "steal", replicas=0, fallback=spill_to(metadata.url, "provider"))
    )
    wait_for(lambda: get_md(cluster, team_b, "steal").get("status"), 60, "team-b/steal status")
    error = wait_for(
        lambda: (e := refused(b, "steal")).status_code == 503 and e, 30, "a 503 for steal"
    )
    assert "egress" in str(error.message).lower(), error.message

    # 2. A provider baseURL at an allowed redirector that answers 302 to the metadata
    #    server: the redirect is never followed, and its body never comes back as a 200.
    cluster.apply(
        model(team_b, "bounce", "bounce", replicas=0, fallback=spill_to(redirector.url, "provider"))
    )
    wait_for(lambda: get_md(cluster, team_b, "bounce").get("status"), 60, "team-b/bounce status")

    def bounced() -> openai.APIStatusError | None:
        error = refused(b, "bounce")
        return error if redirector.requests else None

    error = wait_for(bounced, 30, "the redirector to be called and the client refused")
    assert error.status_code >= 500
    assert "instance-secret" not in str(error.body)

    # 3. A provider key from a Secret that did not opt in, and from the gateway's own
    #    client-keys Secret (in the release namespace, where an MD could name it): refused
    #    by the operator with one message that says nothing of the Secret's contents, and
    #    never read by the gateway.
    cluster.apply(
        model(
            team_b, "peek", "peek", replicas=0,
            fallback=spill_to(redirector.url, "not-a-provider-key"),
        )
    )  # fmt: skip
    peek = reason_of(cluster, team_b, "peek", "SecretNotOptedIn")
    assert "hedge.dev/provider-key" in peek["message"]
    assert "team-b-db-password" not in str(get_md(cluster, team_b, "peek"))
    cluster.apply(
        model(
            release, "admin", "admin", replicas=0,
            fallback=spill_to(collector.url, "client-keys", key="keys"),
        )
    )  # fmt: skip
    wait_for(lambda: get_md(cluster, release, "admin").get("status"), 60, "the admin MD status")
    admin = openai.OpenAI(base_url=gateway.url + "/v1", api_key=ADMIN_KEY, max_retries=0)
    wait_for(lambda: refused(admin, "admin").status_code >= 500, 30, "a 5xx for admin")

    # 4. A held request across namespaces: team-b's own `llama`, at zero and without a
    #    fallback, is held for its own pods and answered 503, never by team-a's `llama`.
    before = metric_sum(gateway.metrics(), "hedge_gateway_demand_arrivals_total", namespace=team_a)
    cluster.apply(
        model(
            team_b, "llama", "llama", replicas=0,
            serving={"coldStartHoldSeconds": 2, "requestTimeoutSeconds": 10},
        )
    )  # fmt: skip
    wait_for(lambda: get_md(cluster, team_b, "llama").get("status"), 60, "team-b/llama status")
    held = wait_for(
        lambda: (e := refused(b, "llama")).status_code == 503 and e, 30, "a 503 for team-b/llama"
    )
    assert held.response.headers.get("retry-after")
    after = metric_sum(gateway.metrics(), "hedge_gateway_demand_arrivals_total", namespace=team_a)
    assert after == before  # no request of team-b reached team-a's model

    # 5. A served name in another namespace's qualified form: refused by the operator, and
    #    team-a/llama still reaches team-a's pods only.
    cluster.apply(model(team_b, "squat", f"{team_a}/llama"))
    reason_of(cluster, team_b, "squat", "ReservedModelName")

    def arrivals(ns: str) -> float:
        return metric_sum(gateway.metrics(), "hedge_gateway_demand_arrivals_total", namespace=ns)

    a_before, b_before = arrivals(team_a), arrivals(team_b)
    for _ in range(4):
        answer = admin.chat.completions.with_raw_response.create(
            model=f"{team_a}/llama", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert answer.headers["x-hedge-served-by"] == "self-hosted"
    assert arrivals(team_a) == a_before + 4
    assert arrivals(team_b) == b_before

    # 6. Calling team-a's engine Service directly from team-b: the operator wrote a
    #    NetworkPolicy that admits only the gateways and the operator to team-a's engine
    #    pods (the local cluster has no network plugin to enforce it: the object is checked).
    path = f"/apis/networking.k8s.io/v1/namespaces/{team_a}/networkpolicies/llama"
    policy = wait_for(lambda: cluster.get(path), 60, "team-a's engine NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    peers = [peer for rule in policy["spec"]["ingress"] for peer in rule.get("from", [])]
    assert peers, policy
    for peer in peers:
        # Every admitted peer names pods by label; none is "any pod of any namespace".
        assert peer.get("podSelector", {}).get("matchLabels"), peer

    # Nothing reached the attacker's listeners but the one request the admin allowed.
    assert metadata.requests == []
    assert collector.requests == []
    for _, headers in redirector.requests:
        assert ADMIN_KEY not in str(headers)
