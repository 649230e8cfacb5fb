"""The gateway on the local cluster: discovery, spreading, pod loss, fallback and recovery.

A ModelDeployment with 2 replicas and an OpenAI-compatible fallback (a local stub of the
OpenAI API). Until the operator creates the engine Deployment and Service itself, the test
creates them with the labels the operator uses (docs/contracts.md), so the EndpointSlices
carry `hedge.dev/model-deployment` exactly as they will then. The gateway runs in-process
on its own event loop and discovers everything through the API server's watches.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hedge_serving.gateway.app import GatewaySettings, RunningGateway, start_gateway
from hedge_serving.gateway.breaker import CircuitBreaker
from hedge_serving.gateway.discovery import KubernetesDiscovery, load_credentials
from hedge_serving.gateway.keys import SecretCache
from hedge_serving.gateway.routing import RoutingTable
from tests.serving.gateway_stubs import OpenAIStub

from .conftest import E2ECluster, wait_for

ROOT = Path(__file__).resolve().parents[2]
MD = "chat"
MODEL = "tiny"
FALLBACK_KEY = "sk-e2e-fallback"
SECRET = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {"name": "fallback"},
    "stringData": {"api-key": FALLBACK_KEY},
}


def engine_children(md: str, replicas: int) -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/part-of": "hedge", "hedge.dev/model-deployment": md}
    pod_labels = {**labels, "hedge.dev/component": "engine"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"{md}-engine", "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": pod_labels},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {"sim.hedge.dev/ttft-ms": "5", "sim.hedge.dev/itl-ms": "2"},
                },
                "spec": {
                    "containers": [
                        {
                            "name": "engine",
                            "image": "vllm/vllm-openai:v0.11.0",
                            "args": [
                                "--model",
                                "org/tiny",
                                "--served-model-name",
                                MODEL,
                                "--port",
                                "8000",
                            ],
                            "ports": [{"name": "http", "containerPort": 8000}],
                            "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}},
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ],
                    "tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": md, "labels": labels},
        "spec": {
            "selector": pod_labels,
            "ports": [{"name": "http", "port": 8000, "targetPort": "http"}],
        },
    }
    return [deployment, service]


def model_deployment(md: str, fallback_url: str) -> dict[str, Any]:
    return {
        "apiVersion": "hedge.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": md},
        "spec": {
            "model": {"source": "hf://org/tiny", "name": MODEL},
            "replicas": 2,
            "serving": {"requestTimeoutSeconds": 30},
            "fallback": {
                "providers": [
                    {
                        "type": "OpenAICompatible",
                        "model": "gpt-4o-mini",
                        "baseURL": fallback_url,
                        "apiKeySecretRef": {"name": "fallback", "key": "api-key"},
                    }
                ]
            },
        },
    }


async def _settle() -> None:
    """Let closed transports run their connection_lost callbacks before the loop closes."""
    for _ in range(10):
        await asyncio.sleep(0)


class GatewayOnThread:
    def __init__(self, kubeconfig: str, namespace: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        settings = GatewaySettings(port=0, admin_port=None, engine_metrics_interval_s=0.5)
        self.table = RoutingTable(lambda: CircuitBreaker(3, 1.0))
        secrets = SecretCache()
        self.discovery = KubernetesDiscovery(
            self.table, secrets, load_credentials(kubeconfig), namespaces=[namespace]
        )
        self.provider: OpenAIStub = self.run(OpenAIStub(api_key=FALLBACK_KEY).start())
        self.run(self.discovery.start())
        self.gw: RunningGateway = self.run(
            start_gateway(self.table, settings, keys=secrets, ready=self.discovery.synced)
        )

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def backends(self) -> list[str]:
        route = self.table.resolve(MODEL)
        return [] if route is None else [b.url for b in route.backends]

    def close(self) -> None:
        self.run(self.gw.stop())
        self.run(self.discovery.stop())
        self.run(self.provider.stop())
        self.run(_settle())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def gateway(cluster: E2ECluster, namespace: str) -> Iterator[GatewayOnThread]:
    cluster.kubectl("apply", "-f", str(ROOT / "crds" / "hedge.dev_modeldeployments.yaml"))
    g = GatewayOnThread(str(cluster.kubeconfig), namespace)
    yield g
    g.close()


def served(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        if fam.name == "vllm:request_success"
        for s in fam.samples
        if s.name.endswith("_total")
    )


class Load:
    """Non-streaming requests in a few threads; counts failures and who served."""

    def __init__(self, base_url: str, threads: int = 4) -> None:
        self.base_url = base_url
        self.failures: list[str] = []
        self.served_by: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        client = openai.OpenAI(base_url=self.base_url, api_key="x", max_retries=0, timeout=30)
        try:
            while not self._stop.is_set():
                try:
                    raw = client.chat.completions.with_raw_response.create(
                        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
                    )
                    raw.parse()
                    self.served_by.append((time.monotonic(), raw.headers["x-hedge-served-by"]))
                except openai.OpenAIError as exc:
                    self.failures.append(repr(exc))
        finally:
            client.close()

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


def test_gateway_spreads_survives_pod_loss_falls_back_and_recovers(
    cluster: E2ECluster, namespace: str, gateway: GatewayOnThread
) -> None:
    fallback_url = gateway.provider.url + "/v1"
    cluster.apply([SECRET, model_deployment(MD, fallback_url), *engine_children(MD, 2)], namespace)
    wait_for(lambda: len(gateway.backends()) == 2, 90, "2 ready backends in the routing table")
    base = gateway.gw.url + "/v1"
    client = openai.OpenAI(base_url=base, api_key="x", max_retries=0, timeout=30)
    try:
        assert [m.id for m in client.models.list().data] == [MODEL]
        before = {b: served(b) for b in gateway.backends()}
        for i in range(20):
            raw = client.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": f"q{i}"}], max_tokens=4
            )
            assert raw.headers["x-hedge-served-by"] == "self-hosted"
        assert all(served(b) > before[b] for b in before), "both pods served requests"

        # one pod is killed under load: no request fails
        with Load(base) as load:
            wait_for(lambda: len(load.served_by) > 20, 30, "load running")
            pods = cluster.get_json("pods", "-n", namespace, "-l", "hedge.dev/component=engine")
            victim = pods["items"][0]["metadata"]["name"]
            cluster.kubectl("delete", "pod", "-n", namespace, victim, "--wait=false")

            def replaced() -> bool:
                now = cluster.get_json("pods", "-n", namespace, "-l", "hedge.dev/component=engine")
                ready = {
                    p["metadata"]["name"]: p["status"].get("podIP")
                    for p in now["items"]
                    if not p["metadata"].get("deletionTimestamp")
                    and any(
                        c["type"] == "Ready" and c["status"] == "True"
                        for c in p["status"].get("conditions", [])
                    )
                }
                urls = sorted(f"http://{ip}:8000" for ip in ready.values())
                return victim not in ready and len(ready) == 2 and gateway.backends() == urls

            wait_for(replaced, 90, "the replacement pod in the routing table")
            count = len(load.served_by)
            wait_for(lambda: len(load.served_by) > count + 20, 30, "more load")
        assert load.failures == []

        # both pods go away: traffic switches to the fallback, with the headers
        with Load(base) as load:
            wait_for(lambda: len(load.served_by) > 20, 30, "load running")
            cluster.kubectl("scale", f"deployment/{MD}-engine", "-n", namespace, "--replicas=0")
            wait_for(lambda: gateway.backends() == [], 60, "no backend left")
            raw = client.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": "down"}]
            )
            assert raw.headers["x-hedge-served-by"] == "openai-compatible"
            assert raw.headers["x-hedge-fallback-reason"] == "Unavailable"
            assert raw.parse().model == "gpt-4o-mini"

            # pods back: traffic back on self-hosted
            cluster.kubectl("scale", f"deployment/{MD}-engine", "-n", namespace, "--replicas=2")
            wait_for(lambda: len(gateway.backends()) == 2, 90, "pods ready again")
            ready_at = time.monotonic()
            wait_for(
                lambda: any(t > ready_at and who == "self-hosted" for t, who in load.served_by),
                5,
                "traffic back on self-hosted within 5 s",
            )
        assert load.failures == []
        assert any(who == "openai-compatible" for _, who in load.served_by)
    finally:
        client.close()
