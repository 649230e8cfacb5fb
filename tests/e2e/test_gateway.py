"""The gateway on the local cluster, the whole chain: ModelDeployment → operator → engine pods
→ EndpointSlices → `hedge gateway` (discovery mode) → clients using the `openai` SDK.

A ModelDeployment with 2 replicas and an OpenAI-compatible fallback (a local stub of the
OpenAI API whose key is in a Secret): requests spread over both pods; killing one pod under
load loses no request; killing both switches to the fallback with the `x-hedge-served-by` and
`x-hedge-fallback-reason` headers; pods back → traffic back within 5 s. The engine pods take
a few seconds to load (`sim.hedge.dev/startup-delay-ms`: /health answers 503 meanwhile), so
the Deployment cannot replace killed pods before the gateway has to do without them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hedge_core.contracts import PROVIDER_KEY_LABEL

from .conftest import (
    E2ECluster,
    HedgeProcess,
    Operator,
    metric_sum,
    pod_ready,
    scrape,
    wait_for,
    wait_ready,
)
from .traffic import EGRESS_ARGS, FALLBACK_MODEL, FallbackProvider, Load, chat

MD = "chat"
MODEL = "tiny"
FALLBACK_KEY = "sk-e2e-fallback"
ENGINE_SELECTOR = f"hedge.dev%2Fmodel-deployment%3D{MD},hedge.dev%2Fcomponent%3Dengine"
STARTUP_DELAY_MS = 4000
# Load bounds, per phase: it stops at whichever comes first (or when the phase is done).
LOAD_THREADS = 4
LOAD_MAX_REQUESTS = 5000
LOAD_MAX_SECONDS = 60.0


def model_deployment(fallback_url: str) -> dict[str, Any]:
    return {
        "apiVersion": "hedge.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": MD},
        "spec": {
            "model": {"source": "hf://org/tiny", "name": MODEL},
            "resources": {"gpus": 1},
            "replicas": 2,
            "engine": {
                "podAnnotations": {
                    "sim.hedge.dev/ttft-ms": "10",
                    "sim.hedge.dev/itl-ms": "2",
                    "sim.hedge.dev/startup-delay-ms": str(STARTUP_DELAY_MS),
                }
            },
            "serving": {"requestTimeoutSeconds": 30},
            "fallback": {
                "providers": [
                    {
                        "type": "OpenAICompatible",
                        "model": FALLBACK_MODEL,
                        "baseURL": fallback_url,
                        "apiKeySecretRef": {"name": "fallback", "key": "api-key"},
                    }
                ]
            },
        },
    }


def fallback_secret() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "fallback", "labels": {PROVIDER_KEY_LABEL: "true"}},
        "stringData": {"api-key": FALLBACK_KEY},
    }


# ------------------------------------------------------------------- fixtures


@pytest.fixture
def fallback_provider() -> Iterator[FallbackProvider]:
    provider = FallbackProvider(FALLBACK_KEY)
    yield provider
    provider.close()


class Gateway:
    """`hedge gateway` in discovery mode against the session cluster, on ephemeral ports."""

    LISTENING = re.compile(r"gateway listening on (http://127\.0\.0\.1:\d+) \(admin port (\d+)\)")

    def __init__(self, proc: HedgeProcess) -> None:
        self.proc = proc

        def listening() -> re.Match[str] | None:
            proc.assert_running()
            return self.LISTENING.search(proc.log())

        match = wait_for(listening, 30, "the gateway to listen")
        self.url = match.group(1)
        self.admin = f"http://127.0.0.1:{match.group(2)}"
        wait_for(lambda: scrape(self.admin + "/readyz", timeout=2), 30, "the gateway's /readyz")

    def metrics(self) -> str:
        return scrape(self.admin + "/metrics", timeout=2)

    def backends(self) -> list[str]:
        """The self-hosted backends of MODEL in the gateway's routing table, by its metrics."""
        return sorted(
            sample.labels["backend"]
            for family in text_string_to_metric_families(self.metrics())
            for sample in family.samples
            if sample.name == "hedge_gateway_backend_in_flight"
            and sample.labels.get("model") == MODEL
        )


@pytest.fixture
def gateway(
    cluster: E2ECluster, namespace: str, hedge_process: Callable[..., HedgeProcess]
) -> Gateway:
    proc = hedge_process(
        "gateway",
        "--kubeconfig",
        str(cluster.kubeconfig),
        "--namespace",
        namespace,
        "--port",
        "0",
        "--admin-port",
        "0",
        "--engine-metrics-interval",
        "0.5",
        *EGRESS_ARGS,
    )
    return Gateway(proc)


# -------------------------------------------------------------------- helpers


def engine_pods(cluster: E2ECluster, namespace: str) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = cluster.get(
        f"/api/v1/namespaces/{namespace}/pods?labelSelector={ENGINE_SELECTOR}"
    )["items"]
    return pods


def ready_engine_urls(cluster: E2ECluster, namespace: str) -> dict[str, str]:
    """Pod name → `http://<pod IP>:8000` of the Ready engine pods."""
    return {
        p["metadata"]["name"]: f"http://{p['status']['podIP']}:8000"
        for p in engine_pods(cluster, namespace)
        if pod_ready(p)
    }


def served(url: str) -> float:
    """Requests an engine pod's simulator has answered, from its vLLM metrics."""
    return metric_sum(scrape(url + "/metrics"), "vllm:request_success_total")


def load_through(base_url: str) -> Load:
    return Load(
        base_url,
        MODEL,
        threads=LOAD_THREADS,
        max_requests=LOAD_MAX_REQUESTS,
        max_seconds=LOAD_MAX_SECONDS,
    )


# ---------------------------------------------------------------------- test


def test_model_deployment_behind_the_gateway_spreads_survives_falls_back_and_recovers(
    cluster: E2ECluster,
    namespace: str,
    operator: Operator,
    fallback_provider: FallbackProvider,
    gateway: Gateway,
) -> None:
    cluster.apply(
        [fallback_secret(), model_deployment(fallback_provider.stub.url + "/v1")], namespace
    )
    wait_ready(cluster, namespace, MD, replicas=2, timeout=90)
    pods = ready_engine_urls(cluster, namespace)
    assert len(pods) == 2
    wait_for(
        lambda: gateway.backends() == sorted(pods.values()),
        30,
        "both engine pods in the gateway's routing table",
    )

    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0, timeout=30)
    try:
        # -------- requests spread over both pods
        assert [m.id for m in client.models.list().data] == [MODEL]
        before = {url: served(url) for url in pods.values()}
        for i in range(20):
            raw = chat(client, MODEL, f"question {i}")
            assert raw.headers["x-hedge-served-by"] == "self-hosted"
            assert raw.parse().model == MODEL
        after = {url: served(url) for url in pods.values()}
        assert sum(after.values()) - sum(before.values()) == 20
        assert all(after[url] > before[url] for url in pods.values()), (before, after)

        # -------- one pod killed under load: no request fails, none leaves self-hosting
        with load_through(gateway.url + "/v1") as load:
            wait_for(lambda: len(load.answers) >= 20, 30, "load running")
            victim, survivor = sorted(pods)
            cluster.kubectl("delete", "pod", "-n", namespace, victim, "--wait=false")
            killed_at = time.monotonic()

            def replaced() -> dict[str, str] | None:
                now = ready_engine_urls(cluster, namespace)
                ok = (
                    victim not in now
                    and len(now) == 2
                    and gateway.backends() == sorted(now.values())
                )
                return now if ok else None

            pods = wait_for(replaced, 60, "the replacement pod in the gateway's routing table")
            (newcomer,) = set(pods) - {survivor}
            replaced_at = time.monotonic()
            wait_for(lambda: served(pods[newcomer]) > 0, 30, "the replacement pod to get traffic")
            wait_for(lambda: len(load.since(replaced_at)) >= 20, 30, "load after the replacement")
        assert load.failures == []
        assert len(load.since(killed_at)) >= 20
        assert {a.served_by for a in load.answers} == {"self-hosted"}
        retries = metric_sum(gateway.metrics(), "hedge_gateway_retries_total", model=MODEL)
        one_pod_killed = (len(load.answers), replaced_at - killed_at, retries)

        # -------- both pods killed: the fallback answers, with the headers; then pods back
        with load_through(gateway.url + "/v1") as load:
            wait_for(lambda: len(load.answers) >= 20, 30, "load running")
            deleting_at = time.monotonic()
            cluster.kubectl("delete", "pod", "-n", namespace, *sorted(pods), "--wait=false")
            killed_at = time.monotonic()
            wait_for(lambda: gateway.backends() == [], 30, "no backend left in the routing table")
            empty_at = time.monotonic()
            first_fallback = wait_for(
                lambda: next(
                    (a for a in load.since(killed_at) if a.served_by != "self-hosted"), None
                ),
                10,
                "a fallback answer",
            )
            wait_for(
                lambda: len(load.since(empty_at)) >= 20, 10, "fallback answers while pods load"
            )

            # A replacement pod turns Ready between the last poll that saw none and the first
            # that sees one; `not_ready_at` bounds the time to traffic back from above.
            not_ready_at = time.monotonic()

            def first_ready() -> float | None:
                nonlocal not_ready_at
                polled_at = time.monotonic()
                if set(ready_engine_urls(cluster, namespace)) - set(pods):
                    return polled_at
                not_ready_at = polled_at
                return None

            ready_at = wait_for(first_ready, 60, "a replacement pod Ready", interval=0.02)
            back = wait_for(
                lambda: next(
                    (a for a in load.since(empty_at) if a.served_by == "self-hosted"), None
                ),
                5,
                "a self-hosted answer within 5 s of a pod being Ready",
            )
            pods = wait_for(
                lambda: (
                    now
                    if len(now := ready_engine_urls(cluster, namespace)) == 2
                    and gateway.backends() == sorted(now.values())
                    else None
                ),
                60,
                "both replacement pods in the gateway's routing table",
            )
            wait_for(
                lambda: all(served(url) > 0 for url in pods.values()),
                30,
                "traffic on both replacement pods",
            )
    finally:
        client.close()

    assert load.failures == []
    fallbacks = [a for a in load.answers if a.served_by != "self-hosted"]
    assert {(a.served_by, a.model) for a in fallbacks} == {("openai-compatible", FALLBACK_MODEL)}
    # Requests caught while the pods went (before the EndpointSlices said so) may fail over
    # because every self-hosted attempt failed; nothing else does.
    assert {a.reason for a in fallbacks} <= {"Unavailable", "Error"}
    # From the gateway having no backend left until traffic is back, only the fallback
    # answers, and it says why: no ready self-hosted backend.
    gap = [a for a in load.since(empty_at) if a.end < back.start]
    assert len(gap) >= 20
    assert {(a.served_by, a.reason) for a in gap} == {("openai-compatible", "Unavailable")}
    # No self-hosted answer while the replacement pods were loading (they were created after
    # the delete request went out), and once one came back, self-hosted it stays.
    assert back.end - deleting_at >= STARTUP_DELAY_MS / 1000
    assert {a.served_by for a in load.since(back.end)} == {"self-hosted"}
    # The fallback got the key from the Secret (the stub refuses any other), once per fallback
    # answer, and the gateway's own count of fallbacks matches what the clients saw.
    received = fallback_provider.stub.received
    assert len(received) == len(fallbacks)
    assert {r.headers["Authorization"] for r in received} == {f"Bearer {FALLBACK_KEY}"}
    metrics = gateway.metrics()
    for reason in ("Unavailable", "Error"):
        seen = sum(1 for a in fallbacks if a.reason == reason)
        counted = metric_sum(
            metrics,
            "hedge_gateway_fallbacks_total",
            model=MODEL,
            provider="openai-compatible",
            reason=reason,
        )
        assert counted == seen, (reason, counted, seen)

    # Pods back → traffic back: from a replacement pod turning Ready to the first self-hosted
    # answer, at most `back.end - not_ready_at` (the gateway may even beat the Ready poll).
    back_within = back.end - not_ready_at
    print(
        f"\none pod killed: {one_pod_killed[0]} requests, 0 failed, "
        f"{one_pod_killed[2]:.0f} retried on the other pod, replacement in the gateway's "
        f"table {one_pod_killed[1]:.1f}s after the kill\n"
        f"both killed: {len(load.answers)} requests, 0 failed; first fallback answer "
        f"{first_fallback.end - killed_at:.2f}s after the kill, backends gone from the table "
        f"after {empty_at - killed_at:.2f}s, {len(fallbacks)} fallback answers "
        f"({sum(1 for a in fallbacks if a.reason == 'Error')} with reason Error); a "
        f"replacement pod turned Ready {not_ready_at - killed_at:.2f}..{ready_at - killed_at:.2f}s "
        f"after the kill, the first self-hosted answer came {back.end - ready_at:+.3f}s.."
        f"{back_within:.3f}s after that"
    )
    assert back_within <= 5.0
    gateway.proc.assert_running()
