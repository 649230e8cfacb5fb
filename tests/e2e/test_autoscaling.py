"""Autoscaling on the local cluster (docs/autoscaling.md), with Hedge installed by its Helm
chart: the operator and the gateway run as pods (the pod runner starts the real processes
under the chart's ServiceAccounts), and the operator finds the gateway replicas through the
EndpointSlices of the chart's admin Service, as in production. Clients use the `openai` SDK
through the gateway Service, from bounded load generators; the fallback provider is an
OpenAI API stub on loopback. Windows are short (stable 10 s, delays 5-15 s) so the module
stays within a few minutes.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import openai
import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from hedge_core.contracts import PROVIDER_KEY_LABEL
from hedge_core.kube import ApiError
from hedge_dev.cluster import NodeSpec, free_port
from hedge_operator.dataplane.discovery import DataPlane
from hedge_operator.dataplane.signals import parse_gateway
from hedge_operator.kube import Kube

from .conftest import (
    API,
    ROOT,
    E2ECluster,
    HedgeProcess,
    Operator,
    condition,
    get_md,
    metric_sum,
    pod_ready,
    scrape,
    wait_for,
)
from .traffic import EGRESS_VALUES, FALLBACK_MODEL, FallbackProvider

# ------------------------------------------------------------------- finding the gateways


class FakeGateway:
    """A gateway's admin /metrics with the demand contract series, on a loopback address."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.registry = CollectorRegistry()
        labels = ["namespace", "model_deployment"]
        self.in_flight = Gauge(
            "hedge_gateway_demand_in_flight", "x", [*labels, "state"], registry=self.registry
        )
        self.arrivals = Counter(
            "hedge_gateway_demand_arrivals", "x", labels, registry=self.registry
        )
        self._runner: web.AppRunner | None = None

    async def start(self) -> FakeGateway:
        async def metrics(_: web.Request) -> web.Response:
            return web.Response(body=generate_latest(self.registry))

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def admin_service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"clusterIP": "None", "ports": [{"name": "admin", "port": 9090}]},
    }


def admin_slice(name: str, service: str, port: int, hosts: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "admin", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [h], "conditions": {"ready": True}} for h in hosts],
    }


def test_the_operator_finds_every_gateway_through_the_admin_service(
    cluster: E2ECluster, namespace: str
) -> None:
    """Gateway replicas come and go behind the admin Service; the operator's scrape follows
    its EndpointSlices (a list+watch, no polling) and sums the replicas' demand."""
    port = free_port()
    hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    model = (namespace, "llama")
    cluster.apply(admin_service("gw-admin"), namespace)
    cluster.apply(admin_slice("gw-admin-1", "gw-admin", port, hosts[:2]), namespace)

    async def scenario() -> None:
        gateways = [await FakeGateway(h, port).start() for h in hosts]
        for i, gw in enumerate(gateways):
            gw.in_flight.labels(*model, "self_hosted").set(i + 1)  # 1, 2, 3
        kube = Kube(str(cluster.kubeconfig))
        await kube.client.login()
        plane = DataPlane(kube, gateway_service=(namespace, "gw-admin"), interval=0.0)
        await plane.start()
        try:

            async def demand_becomes(expected: float, read: int) -> None:
                async with asyncio.timeout(20):
                    while True:
                        snap = await plane.snapshot()
                        assert snap is not None
                        if snap.gateways_read == read and snap.model(model).demand == expected:
                            return
                        await asyncio.sleep(0.1)

            await demand_becomes(1 + 2, read=2)
            # A third replica appears (a scale-up of the gateway Deployment).
            await asyncio.to_thread(
                cluster.apply, admin_slice("gw-admin-1", "gw-admin", port, hosts), namespace
            )
            await demand_becomes(1 + 2 + 3, read=3)
            # One is gone; its demand with it (and it is not reported as failing).
            await asyncio.to_thread(
                cluster.apply, admin_slice("gw-admin-1", "gw-admin", port, hosts[1:]), namespace
            )
            await demand_becomes(2 + 3, read=2)
            snap = await plane.snapshot()
            assert snap is not None and snap.gateways_failed == []
            # A listed replica that does not answer is reported, and the sum is marked partial.
            await gateways[2].stop()
            await demand_becomes(2, read=1)
            snap = await plane.snapshot()
            assert snap is not None
            assert snap.gateways_failed == [f"http://127.0.0.3:{port}/metrics"]
            assert snap.model(model).partial
        finally:
            await plane.stop()
            await kube.close()
            for gw in gateways:
                await gw.stop()

    asyncio.run(scenario())


# ------------------------------------------------------------------- Hedge, by Helm

CHART = ROOT / "charts" / "hedge"
FALLBACK_KEY = "sk-e2e-autoscale"


@dataclass
class Hedge:
    """One Helm release of Hedge for this module, watching its own namespace."""

    cluster: E2ECluster
    namespace: str
    release: str
    provider: FallbackProvider

    @property
    def gateway_deployment(self) -> str:
        return f"{self.release}-gateway"

    def gateway_url(self) -> str:
        service = self.cluster.get_json("service", "-n", self.namespace, self.gateway_deployment)
        return f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}/v1"

    def pods(self, selector: str) -> list[dict[str, Any]]:
        path = f"/api/v1/namespaces/{self.namespace}/pods?labelSelector={quote(selector)}"
        items: list[dict[str, Any]] = self.cluster.get(path)["items"]
        return items

    def operator_metrics(self) -> str:
        selector = f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component=operator"
        (pod,) = [p for p in self.pods(selector) if pod_ready(p)]
        ports = pod["spec"]["containers"][0]["ports"]
        port = next(p["containerPort"] for p in ports if p["name"] == "metrics")
        return scrape(f"http://{pod['status']['podIP']}:{port}/metrics", timeout=2)

    def md(self, name: str) -> dict[str, Any]:
        return get_md(self.cluster, self.namespace, name)

    def autoscaling(self, name: str) -> dict[str, Any]:
        return dict((self.md(name).get("status") or {}).get("autoscaling") or {})

    def desired(self, name: str) -> int | None:
        value = self.autoscaling(name).get("desiredReplicas")
        return int(value) if value is not None else None

    def engine_pods(self, name: str) -> list[dict[str, Any]]:
        return self.pods(f"hedge.dev/model-deployment={name},hedge.dev/component=engine")

    def deployment_replicas(self, name: str) -> int | None:
        path = f"/apis/apps/v1/namespaces/{self.namespace}/deployments"
        for d in self.cluster.get(
            path + f"?labelSelector={quote('hedge.dev/model-deployment=' + name)}"
        )["items"]:
            return int(d["spec"]["replicas"])
        return None

    def events(self, name: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.cluster.get_json(
            "events", "-n", self.namespace, "--field-selector", f"involvedObject.name={name}"
        )["items"]
        return items

    def routed(self, model: str) -> bool:
        client = openai.OpenAI(base_url=self.gateway_url(), api_key="x", max_retries=0, timeout=5)
        try:
            return model in {m.id for m in client.models.list().data}
        except (openai.APIError, OSError):
            return False
        finally:
            client.close()

    def apply(self, manifest: dict[str, Any]) -> None:
        self.cluster.apply(manifest, self.namespace)

    def delete(self, name: str) -> None:
        self.cluster.kubectl(
            "delete", "-n", self.namespace, "modeldeployment", name, "--wait=false",
            "--ignore-not-found",
        )  # fmt: skip


def helm(cluster: E2ECluster, *args: str, timeout: float = 240) -> str:
    proc = subprocess.run(
        [str(cluster.helm_bin), f"--kubeconfig={cluster.kubeconfig}", *args],
        capture_output=True, text=True, timeout=timeout, env=cluster.env, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


@pytest.fixture(scope="module")
def hedge(cluster: E2ECluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hedge]:
    namespace = f"as-{uuid.uuid4().hex[:8]}"
    cluster.api.request(
        "POST", "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
    )  # fmt: skip
    release = f"hedge-{namespace[3:]}"
    values = {
        "watchNamespaces": [namespace],
        "operator": {"metricsPort": free_port(), "healthPort": free_port()},
        # Without client keys, said explicitly as the chart requires (issue 16 High-5).
        "gateway": {
            "replicaCount": 1,
            "drainDelaySeconds": 1,
            "drainTimeoutSeconds": 10,
            "apiKeys": {"secretName": ""},
            "allowUnauthenticated": True,
            "clientPolicies": {"enabled": False},
            "egress": EGRESS_VALUES,
        },
    }
    path = tmp_path_factory.mktemp("autoscaling") / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    provider = FallbackProvider(FALLBACK_KEY)
    helm(cluster, "install", release, str(CHART), "-n", namespace, "-f", str(path),
         "--wait", "--timeout=180s")  # fmt: skip
    hedge = Hedge(cluster, namespace, release, provider)
    try:
        cluster.apply(
            {"apiVersion": "v1", "kind": "Secret",
             "metadata": {"name": "fallback", "labels": {PROVIDER_KEY_LABEL: "true"}},
             "stringData": {"api-key": FALLBACK_KEY}},
            namespace,
        )  # fmt: skip
        yield hedge
    finally:
        for md in cluster.get(f"{API}/namespaces/{namespace}/modeldeployments")["items"]:
            hedge.delete(md["metadata"]["name"])
        helm(cluster, "uninstall", release, "-n", namespace, "--wait", "--timeout=120s")
        cluster.api.request("DELETE", f"/api/v1/namespaces/{namespace}")
        provider.close()


def model_deployment(
    name: str,
    *,
    replicas: int = 0,
    autoscaling: dict[str, Any] | None = None,
    fallback: str | None = None,
    serving: dict[str, Any] | None = None,
    sim: dict[str, str] | None = None,
    resources: dict[str, Any] | None = None,
    budget: dict[str, int] | None = None,
) -> dict[str, Any]:
    annotations = {"sim.hedge.dev/ttft-ms": "20", "sim.hedge.dev/itl-ms": "20", **(sim or {})}
    spec: dict[str, Any] = {
        "model": {"source": f"hf://org/{name}", "name": name},
        "replicas": replicas,
        "resources": resources or {"gpus": 1},
        "engine": {"podAnnotations": annotations},
        "serving": {"requestTimeoutSeconds": 60, **(serving or {})},
    }
    if autoscaling is not None:
        spec["autoscaling"] = {
            "stableWindowSeconds": 10,
            "panicWindowSeconds": 2,
            "scaleDownDelaySeconds": 5,
            "scaleToZeroAfterSeconds": 15,
            **autoscaling,
        }
    if fallback is not None:
        spec["fallback"] = {
            "providers": [
                {
                    "type": "OpenAICompatible",
                    "model": FALLBACK_MODEL,
                    "baseURL": fallback,
                    "apiKeySecretRef": {"name": "fallback", "key": "api-key"},
                }
            ]
        }
        if budget is not None:
            spec["fallback"]["budget"] = budget
    return {
        "apiVersion": "hedge.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": spec,
    }


# ------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Reply:
    start: float
    end: float
    served_by: str
    reason: str | None
    complete: bool  # a stream that ended with its finish_reason (never cut)
    error: str | None = None
    status: int = 200
    retry_after: str | None = None
    tokens: int = 0  # usage.total_tokens of an answer in one piece
    code: str | None = None  # the OpenAI error code of a refusal
    wall: float = field(default_factory=time.time)  # when it ended, UTC epoch seconds


class Clients:
    """Up to `workers` clients of the gateway (openai SDK, threads), of which `active` send
    at any time, each in a loop; bounded in time and count. Streams or not; each request
    opens its own connection, so the gateway Service spreads them over its replicas."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        workers: int = 16,
        tokens: int = 20,
        stream: bool = True,
        max_seconds: float = 240,
        max_requests: int = 20_000,
    ) -> None:
        self.url, self.model, self.tokens, self.stream = url, model, tokens, stream
        self.replies: list[Reply] = []
        self.active = 0
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_seconds
        self._count = itertools.count()
        self._max_requests = max_requests
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(workers)
        ]

    def __enter__(self) -> Clients:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self.set(0)
        for t in self._threads:
            t.join(60)

    def set(self, active: int) -> None:
        with self._changed:
            self.active = active
            self._changed.notify_all()

    def _run(self, i: int) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            with self._changed:
                if i >= self.active:
                    self._changed.wait(timeout=1.0)
                    continue
            n = next(self._count)
            if n >= self._max_requests:
                return
            # A client (and connection) per request: the Service spreads them.
            client = openai.OpenAI(base_url=self.url, api_key="x", max_retries=0, timeout=60)
            try:
                self.replies.append(self._one(client, n))
            finally:
                client.close()

    def _one(self, client: openai.OpenAI, n: int) -> Reply:
        start = time.monotonic()
        messages = [{"role": "user", "content": f"request {n}"}]
        served_by, reason, complete = "", None, False
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=self.model, messages=messages, max_tokens=self.tokens,  # type: ignore[arg-type]
                stream=self.stream,
            )  # fmt: skip
            served_by = raw.headers.get("x-hedge-served-by", "")
            reason = raw.headers.get("x-hedge-fallback-reason")
            if self.stream:
                for chunk in raw.parse():
                    if chunk.choices and chunk.choices[0].finish_reason:
                        complete = True
            else:
                answer = raw.parse()
                complete = answer.choices[0].finish_reason is not None
                tokens = answer.usage.total_tokens if answer.usage else 0
                return Reply(start, time.monotonic(), served_by, reason, complete, tokens=tokens)
            return Reply(start, time.monotonic(), served_by, reason, complete)
        except openai.APIStatusError as exc:
            code = exc.body.get("code") if isinstance(exc.body, dict) else None
            return Reply(
                start, time.monotonic(), served_by, reason, False, repr(exc)[:300],
                exc.status_code, exc.response.headers.get("Retry-After"), code=code,
            )  # fmt: skip
        except (openai.APIError, OSError) as exc:
            return Reply(start, time.monotonic(), served_by, reason, False, repr(exc)[:300])

    def failures(self) -> list[Reply]:
        return [r for r in list(self.replies) if r.error is not None or not r.complete]

    def since(self, t: float) -> list[Reply]:
        return [r for r in list(self.replies) if r.start >= t]


class Recorder:
    """Polls a model's desired replicas (status.autoscaling) on a thread: the trace of what
    the autoscaler decided, with the times it was first seen."""

    def __init__(self, hedge: Hedge, name: str, interval: float = 0.2) -> None:
        self.hedge, self.name, self.interval = hedge, name, interval
        self.trace: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                desired = self.hedge.desired(self.name)
            except (ApiError, OSError):
                continue
            if desired is not None and (not self.trace or self.trace[-1][1] != desired):
                self.trace.append((time.monotonic(), desired))

    def first(self, replicas: int, after: float = 0.0) -> float | None:
        return next((t for t, d in self.trace if d >= replicas and t >= after), None)

    def changes(self) -> list[tuple[float, int]]:
        """(time, direction) of every change of the desired count."""
        out = []
        for (_, a), (t, b) in itertools.pairwise(self.trace):
            out.append((t, 1 if b > a else -1))
        return out


def ready_engine_count(hedge: Hedge, name: str) -> int:
    return sum(1 for p in hedge.engine_pods(name) if pod_ready(p))


# ---------------------------------------------------------------- scale from zero


@pytest.mark.timeout(180)
def test_a_model_at_zero_with_fallback_answers_at_once_and_wakes(hedge: Hedge) -> None:
    """The first request is answered by the fallback; the operator writes the 0→1 scale
    within 2 s of it; once the pod is Ready the next answer is self-hosted within 1 s."""
    name = "wake"
    hedge.apply(
        model_deployment(
            name,
            autoscaling={"minReplicas": 0, "maxReplicas": 2, "targetRequests": 4},
            fallback=hedge.provider.url,
            sim={"sim.hedge.dev/startup-delay-ms": "3000"},
        )
    )
    wait_for(lambda: hedge.desired(name) == 0, 60, "status.autoscaling at zero")
    wait_for(lambda: hedge.routed(name), 30, "the model in the gateway's routing table")
    assert hedge.deployment_replicas(name) == 0

    client = openai.OpenAI(base_url=hedge.gateway_url(), api_key="x", max_retries=0, timeout=30)
    try:
        sent = time.monotonic()
        raw = client.chat.completions.with_raw_response.create(
            model=name, messages=[{"role": "user", "content": "first"}], max_tokens=4
        )
        assert raw.headers["x-hedge-served-by"] == "openai-compatible"
        assert raw.headers["x-hedge-fallback-reason"] == "Unavailable"
        assert raw.parse().choices[0].message.content
        wait_for(lambda: hedge.deployment_replicas(name) == 1, 10, "the 0→1 scale", 0.05)
        scaled_after = time.monotonic() - sent
        assert scaled_after <= 2.0, scaled_after

        # Requests keep coming; the first self-hosted answer after the pod turns Ready.
        with Clients(hedge.gateway_url(), name, workers=2, tokens=4, stream=False) as load:
            load.set(2)
            not_ready_at = time.monotonic()

            def ready() -> float | None:
                nonlocal not_ready_at
                polled = time.monotonic()
                if ready_engine_count(hedge, name) == 1:
                    return polled
                not_ready_at = polled
                return None

            ready_at = wait_for(ready, 60, "the engine pod Ready", interval=0.05)
            first_self = wait_for(
                lambda: next(
                    (r.end for r in load.since(not_ready_at) if r.served_by == "self-hosted"),
                    None,
                ),
                10,
                "a self-hosted answer",
            )
        assert load.failures() == [], load.failures()[:5]
        print(f"0→1 written {scaled_after:.2f}s after the first request; first self-hosted "
              f"answer {first_self - ready_at:.2f}s after the pod was seen Ready")  # fmt: skip
        assert first_self - ready_at <= 1.0, (first_self - ready_at, ready_at - not_ready_at)
        served = {r.served_by for r in load.replies}
        assert served == {"openai-compatible", "self-hosted"}, served
        events = [(e["reason"], e["message"]) for e in hedge.events(name)]
        assert any(reason == "WakeFromZero" and "0 → 1" in msg for reason, msg in events), events
    finally:
        client.close()
        hedge.delete(name)


@pytest.mark.timeout(180)
def test_a_model_at_zero_without_fallback_holds_the_request_until_it_has_loaded(
    hedge: Hedge,
) -> None:
    """No fallback: the gateway holds the request while the model wakes and loads (4 s of
    simulated weight loading), and answers it self-hosted: no 503."""
    name = "hold"
    load_ms = 4000
    hedge.apply(
        model_deployment(
            name,
            autoscaling={"minReplicas": 0, "maxReplicas": 1, "targetRequests": 4},
            serving={"coldStartHoldSeconds": 45},
            sim={"sim.hedge.dev/startup-delay-ms": str(load_ms)},
        )
    )
    wait_for(lambda: hedge.desired(name) == 0, 60, "status.autoscaling at zero")
    wait_for(lambda: hedge.routed(name), 30, "the model in the gateway's routing table")
    client = openai.OpenAI(base_url=hedge.gateway_url(), api_key="x", max_retries=0, timeout=60)
    try:
        sent = time.monotonic()
        raw = client.chat.completions.with_raw_response.create(
            model=name, messages=[{"role": "user", "content": "wake up"}], max_tokens=4
        )
        waited = time.monotonic() - sent
        assert raw.headers["x-hedge-served-by"] == "self-hosted"
        assert raw.parse().choices[0].message.content
        assert waited >= load_ms / 1000, waited  # it really waited for the load
        print(f"held {waited:.2f}s (model load {load_ms / 1000:g}s), answered self-hosted")
        assert hedge.desired(name) == 1
    finally:
        client.close()
        hedge.delete(name)


# ------------------------------------------------------------------------ load steps


@pytest.mark.timeout(300)
def test_a_load_step_scales_up_within_seconds_and_down_without_cutting_a_stream(
    hedge: Hedge,
) -> None:
    """2 → 12 concurrent streams with 4 per replica: 3 replicas asked for within 5 s of the
    step. Back to 2 streams: down to one replica once the delay has passed, while streams
    run on the pods that go (none is cut); no load: zero after the idle period."""
    name = "step"
    hedge.apply(
        model_deployment(
            name,
            replicas=1,
            autoscaling={"minReplicas": 0, "maxReplicas": 4, "targetRequests": 4},
            # ~3 s per stream (30 tokens, 100 ms apart): many are in flight at any time.
            sim={"sim.hedge.dev/itl-ms": "100", "sim.hedge.dev/startup-delay-ms": "500"},
        )
    )
    wait_for(lambda: ready_engine_count(hedge, name) == 1, 60, "one ready engine pod")
    wait_for(lambda: hedge.routed(name), 30, "the model in the gateway's routing table")
    url = hedge.gateway_url()
    with Recorder(hedge, name) as recorder, Clients(url, name, workers=12, tokens=30) as load:
        load.set(2)
        wait_for(lambda: len(load.replies) >= 6, 60, "the light load to run")
        assert hedge.desired(name) == 1
        load.set(12)
        step_at = time.monotonic()
        reached = wait_for(lambda: recorder.first(3, step_at), 15, "3 replicas asked for")
        up_after = reached - step_at
        wait_for(lambda: ready_engine_count(hedge, name) == 3, 60, "3 ready engine pods")
        wait_for(lambda: len(load.since(time.monotonic())) == 0 and len(load.replies) > 0, 1,
                 "bookkeeping")  # fmt: skip

        # Back to 2 streams: down to 1 replica after the delay, streams still running.
        load.set(2)
        light_at = time.monotonic()
        wait_for(lambda: hedge.desired(name) == 1, 60, "back to one replica")
        down_after = time.monotonic() - light_at
        wait_for(lambda: len(hedge.engine_pods(name)) == 1, 60, "the other pods gone")
        during_scale_down = len(load.since(light_at))
        # Before the count dropped, every ready pod got its work as its deletion cost.
        (survivor,) = hedge.engine_pods(name)
        annotations = survivor["metadata"].get("annotations") or {}
        assert "controller.kubernetes.io/pod-deletion-cost" in annotations, annotations

        # No load at all: zero once no request arrived for scaleToZeroAfterSeconds (15 s).
        load.set(0)
    idle_at = max(r.end for r in load.replies)  # the last stream ended: no demand since
    wait_for(lambda: hedge.desired(name) == 0, 60, "zero replicas")
    zero_after = time.monotonic() - idle_at
    wait_for(lambda: not hedge.engine_pods(name), 60, "no engine pod left")

    print(f"step: 3 replicas asked for {up_after:.1f}s after 2→12 streams; back to 1 replica "
          f"{down_after:.1f}s after 12→2 ({during_scale_down} streams meanwhile); zero "
          f"{zero_after:.1f}s after the last request; {len(load.replies)} streams, "
          f"{len(load.failures())} cut or failed; desired trace "
          f"{[d for _, d in recorder.trace]}")  # fmt: skip
    assert up_after <= 5.0, up_after
    assert load.failures() == [], load.failures()[:5]
    assert {r.served_by for r in load.replies} == {"self-hosted"}
    assert during_scale_down >= 4  # streams ran while pods were taken away
    assert down_after >= 5, down_after  # not before the delay
    # The idle period (15 s), as the operator sees activity: once per tick (1 s) from a
    # scrape at most 0.5 s old, so the last stream may have ended up to 1.5 s after it.
    assert 15 - 1.5 <= zero_after <= 30, zero_after
    assert max(d for _, d in recorder.trace) <= 4
    reasons = [e["reason"] for e in hedge.events(name)]
    assert {"PanicScaleUp", "ScaleDown", "ScaleToZero"} <= set(reasons), reasons
    hedge.delete(name)


# ----------------------------------------------------------------------- GPU reality


@pytest.fixture
def one_l4_gpu(cluster: E2ECluster) -> Iterator[str]:
    """A node of its own for the test: one NVIDIA L4 GPU, so capacity is known exactly."""
    state = cluster.cluster.state()
    assert state is not None
    node = NodeSpec(f"gpu-l4-{uuid.uuid4().hex[:6]}", 101, "NVIDIA-L4", gpus=1)
    cluster.api.request("POST", "/api/v1/nodes", node.manifest(state.octet))

    def ready() -> bool:
        conditions = cluster.get(f"/api/v1/nodes/{node.name}")["status"].get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    wait_for(ready, 30, f"node {node.name} Ready")
    yield node.name
    cluster.api.request("DELETE", f"/api/v1/nodes/{node.name}")


@pytest.mark.timeout(240)
def test_more_replicas_wanted_than_gpus_free(hedge: Hedge, one_l4_gpu: str) -> None:
    """Demand asks for 3 replicas; one GPU exists. The other two wait for a node (no more
    than demand needs), the condition says how many GPUs are missing, the fallback serves
    the overflow with reason Overloaded, and no request fails."""
    name = "short"
    hedge.apply(
        model_deployment(
            name,
            replicas=1,
            autoscaling={"minReplicas": 1, "maxReplicas": 3, "targetRequests": 2},
            fallback=hedge.provider.url,
            serving={"maxQueueDepth": 1},
            resources={"gpus": 1, "gpuType": "nvidia-l4"},
            sim={"sim.hedge.dev/itl-ms": "100", "sim.hedge.dev/max-concurrency": "2"},
        )
    )
    wait_for(lambda: ready_engine_count(hedge, name) == 1, 60, "one ready engine pod")
    wait_for(lambda: hedge.routed(name), 30, "the model in the gateway's routing table")

    def shortage() -> dict[str, Any] | None:
        degraded = condition(hedge.md(name), "Degraded")
        both = "2 of 3" in degraded.get("message", "")  # the scheduler has tried both pods
        return degraded if degraded.get("reason") == "InsufficientGPUs" and both else None

    with Clients(hedge.gateway_url(), name, workers=6, tokens=20) as load:
        load.set(6)
        wait_for(lambda: hedge.desired(name) == 3, 30, "3 replicas asked for")
        degraded = wait_for(shortage, 60, "Degraded=InsufficientGPUs")
        # Watch a while: pods never outnumber what demand asks for; the two extra wait.
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            pods = [
                p for p in hedge.engine_pods(name) if not p["metadata"].get("deletionTimestamp")
            ]
            desired = hedge.desired(name) or 0
            assert len(pods) <= desired <= 3, (len(pods), desired)
            time.sleep(0.5)
        pending = [p for p in hedge.engine_pods(name) if p["status"].get("phase") == "Pending"]
        overloaded_at = time.monotonic()
        wait_for(
            lambda: any(r.reason == "Overloaded" for r in load.since(overloaded_at)),
            30,
            "answers from the fallback with reason Overloaded",
        )
    print(f"shortage: {degraded['message']}; {len(pending)} pending; "
          f"{sum(r.reason == 'Overloaded' for r in load.replies)} of {len(load.replies)} "
          "answers from the fallback (Overloaded)")  # fmt: skip
    assert degraded["status"] == "True"
    assert (
        "2 of 3 replica(s) cannot be scheduled: 2 nvidia.com/gpu (nvidia-l4) missing"
        in (degraded["message"])
    )
    assert "the fallback serves the overflow" in degraded["message"]
    assert len(pending) == 2
    assert load.failures() == [], load.failures()[:5]
    assert {r.reason for r in load.replies} <= {None, "Overloaded"}
    warnings = [e for e in hedge.events(name) if e["reason"] == "InsufficientGPUs"]
    assert warnings and warnings[0]["type"] == "Warning"
    hedge.delete(name)
    wait_for(lambda: not hedge.engine_pods(name), 60, "the engine pods gone")


# ------------------------------------------------------------------- many gateways


def gateway_pods(hedge: Hedge) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/instance={hedge.release},app.kubernetes.io/component=gateway"
    return [p for p in hedge.pods(selector) if pod_ready(p)]


def gateway_arrivals(pod: dict[str, Any], model: tuple[str, str]) -> float:
    text = scrape(f"http://{pod['status']['podIP']}:9090/metrics", timeout=2)
    return parse_gateway(text).counters.get(("arrivals", *model), 0.0)


@pytest.mark.timeout(240)
def test_two_gateway_replicas_give_the_same_desired_count_as_one(hedge: Hedge) -> None:
    """Demand is summed over the gateway replicas: spreading the same load over two of them
    changes neither the measured demand nor the decision."""
    name = "spread"
    hedge.apply(
        model_deployment(
            name,
            replicas=1,
            autoscaling={"minReplicas": 1, "maxReplicas": 6, "targetRequests": 4},
            sim={"sim.hedge.dev/itl-ms": "100"},
        )
    )
    wait_for(lambda: ready_engine_count(hedge, name) == 1, 60, "one ready engine pod")
    wait_for(lambda: hedge.routed(name), 30, "the model in the gateway's routing table")
    key = (hedge.namespace, name)

    def demand() -> float:
        return metric_sum(
            hedge.operator_metrics(), "hedge_operator_demand",
            namespace=hedge.namespace, model_deployment=name,
        )  # fmt: skip

    def steady(seconds: float) -> tuple[int, float]:
        """The desired count, unchanged for `seconds`, and the demand then."""
        deadline = time.monotonic() + seconds
        first = hedge.desired(name)
        while time.monotonic() < deadline:
            assert hedge.desired(name) == first
            time.sleep(0.5)
        assert first is not None
        return first, demand()

    with (
        Recorder(hedge, name) as recorder,
        Clients(hedge.gateway_url(), name, workers=10, tokens=20) as load,
    ):
        load.set(10)
        wait_for(lambda: hedge.desired(name) == 3, 30, "3 replicas for 10 streams")
        wait_for(lambda: ready_engine_count(hedge, name) == 3, 60, "3 ready engine pods")
        one = steady(10)

        hedge.cluster.kubectl("scale", "-n", hedge.namespace,
                              f"deployment/{hedge.gateway_deployment}", "--replicas=2")  # fmt: skip
        pods = wait_for(lambda: len(p := gateway_pods(hedge)) == 2 and p, 60, "2 gateway pods")

        def reads_both() -> bool:
            metrics = hedge.operator_metrics()
            return metric_sum(metrics, "hedge_operator_gateways", result="read") == 2

        wait_for(reads_both, 30, "the operator reading both gateways")
        before = [gateway_arrivals(p, key) for p in pods]
        wait_for(
            lambda: all(gateway_arrivals(p, key) > b for p, b in zip(pods, before, strict=True)),
            30,
            "both gateways serving the model",
        )
        split_at = len(recorder.trace)
        two = steady(10)
        load.set(0)
    hedge.cluster.kubectl("scale", "-n", hedge.namespace,
                          f"deployment/{hedge.gateway_deployment}", "--replicas=1")  # fmt: skip
    wait_for(lambda: len(gateway_pods(hedge)) == 1, 60, "back to one gateway pod")
    print(f"one gateway: {one[0]} replicas for demand {one[1]:.1f}; two gateways: {two[0]} "
          f"for {two[1]:.1f}")  # fmt: skip
    assert one[0] == two[0] == 3
    assert abs(one[1] - two[1]) <= 2.0, (one, two)
    assert recorder.trace[split_at - 1 :] == recorder.trace[-1:]  # no change once split
    assert load.failures() == [], load.failures()[:5]
    hedge.delete(name)


# ------------------------------------------------------------------ the fallback budget


@pytest.mark.timeout(240)
def test_a_fallback_budget_stops_spilling_at_its_ceiling_until_the_next_minute(
    hedge: Hedge,
) -> None:
    """A model with no self-hosted capacity spills everything: the spill stops within a
    few percent of tokensPerMinute, clients then get 429 with Retry-After, status and an
    Event say why, and the next minute it spills again."""
    name = "budget"
    ceiling = 600
    hedge.apply(
        model_deployment(
            name,
            replicas=0,
            fallback=hedge.provider.url,
            budget={"tokensPerMinute": ceiling},
            serving={"coldStartHoldSeconds": 0},
        )
    )
    wait_for(lambda: hedge.routed(name), 30, "the model in the gateway's routing table")
    wait_for(lambda: (hedge.md(name).get("status") or {}).get("fallbackBudget"), 30,
             "status.fallbackBudget")  # fmt: skip
    # Spend within one minute window: start with at least 25 s of it left.
    if time.time() % 60 > 35:
        wait_for(lambda: time.time() % 60 < 30, 30, "the next minute")
    with Clients(hedge.gateway_url(), name, workers=2, tokens=8, stream=False) as load:
        load.set(2)
        refused = wait_for(
            lambda: next((r for r in load.replies if r.status == 429), None), 30, "a 429"
        )
        wait_for(lambda: len(load.since(refused.end)) >= 10, 30, "more refusals")
        load.set(0)
    refusals = [r for r in load.replies if r.status == 429]
    # What spilled in the minute window that ran out (the gateway counts an answer when it
    # ends); a window that turned while the load ramped up is not this one.
    window = refusals[0].wall // 60
    spilled = [r for r in load.replies if r.status == 200 and r.wall // 60 == window]
    spent = sum(r.tokens for r in spilled)
    answered_after = [r for r in load.replies if r.status == 200 and r.start > refused.end]
    md = wait_for(
        lambda: (m := hedge.md(name))["status"]["fallbackBudget"].get("exhaustedUntil") and m,
        10,
        "status.fallbackBudget.exhaustedUntil",
    )
    budget = md["status"]["fallbackBudget"]
    events = {e["reason"]: e for e in hedge.events(name)}
    print(f"budget: {spent} tokens spilled in {len(spilled)} answers for a ceiling of {ceiling} "
          f"({(spent - ceiling) / ceiling:+.1%}); {len(refusals)} refused with 429, "
          f"Retry-After {refusals[0].retry_after}s; status {budget}")  # fmt: skip
    assert ceiling <= spent <= ceiling * 1.05, spent
    assert not answered_after  # once refused, nothing spills this minute
    assert {r.code for r in refusals} == {"fallback_budget_exhausted"}
    assert all(1 <= int(r.retry_after or 0) <= 60 for r in refusals)
    assert ceiling <= budget["minuteTokens"] <= ceiling * 1.05
    assert events["FallbackBudgetExhausted"]["type"] == "Warning"
    assert f"(tokensPerMinute {ceiling})" in events["FallbackBudgetExhausted"]["message"]
    exhausted = metric_sum(hedge.operator_metrics(), "hedge_operator_fallback_budget_exhausted",
                           namespace=hedge.namespace, model_deployment=name)  # fmt: skip
    assert exhausted == 1

    # The next minute: spilling resumes.
    client = openai.OpenAI(base_url=hedge.gateway_url(), api_key="x", max_retries=0, timeout=10)
    try:

        def spills() -> bool:
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model=name, messages=[{"role": "user", "content": "again"}], max_tokens=2
                )
            except openai.RateLimitError:
                return False
            return raw.headers["x-hedge-fallback-reason"] == "Unavailable"

        wait_for(spills, 70, "spilling in the next minute", interval=1.0)
    finally:
        client.close()
    wait_for(lambda: "FallbackBudgetRenewed" in {e["reason"] for e in hedge.events(name)}, 10,
             "the FallbackBudgetRenewed Event")  # fmt: skip
    hedge.delete(name)


# ---------------------------------------------------------------------------- noise


def sawtooth(t: float, period: float, low: float, high: float) -> float:
    phase = (t % period) / period
    return low + (high - low) * (phase * 2 if phase < 0.5 else 2 - phase * 2)


@pytest.mark.timeout(300)
def test_a_sawtooth_load_does_not_flap(hedge: Hedge) -> None:
    """Streams swing ±30 % around three replicas' worth (12 with 4 per replica), 40 s a
    period, for 100 s: at most one change of direction per half period, never to zero (a
    replay of the same policy over such traces: tests/operator/test_scaling.py)."""
    name = "saw"
    period = 40.0
    hedge.apply(
        model_deployment(
            name,
            replicas=3,
            autoscaling={
                "minReplicas": 0,
                "maxReplicas": 6,
                "targetRequests": 4,
                # Windows a little longer than the swing's half period ride it out (with
                # windows far shorter the policy follows the load, one change per swing).
                "stableWindowSeconds": 20,
                "scaleDownDelaySeconds": 30,
            },
            sim={"sim.hedge.dev/itl-ms": "100"},
        )
    )
    wait_for(lambda: ready_engine_count(hedge, name) == 3, 60, "three ready engine pods")
    wait_for(lambda: hedge.routed(name), 30, "the model in the gateway's routing table")
    with (
        Recorder(hedge, name) as recorder,
        Clients(hedge.gateway_url(), name, workers=16, tokens=20) as load,
    ):
        started = time.monotonic()
        while (t := time.monotonic() - started) < 2.5 * period:
            load.set(round(sawtooth(t, period, 12 * 0.7, 12 * 1.3)))
            time.sleep(0.5)  # the load generator's own pace, not a wait for a condition
        load.set(0)
    trace = [d for _, d in recorder.trace]
    changes = recorder.changes()
    print(f"sawtooth: desired {trace}; direction changes at "
          f"{[round(t - started) for t, _ in changes]}s; {len(load.replies)} streams")  # fmt: skip
    assert load.failures() == [], load.failures()[:5]
    assert min(trace) >= 1 and max(trace) <= 5, trace
    reversals = [t for (t, d), (_, e) in itertools.pairwise(changes) if d != e]
    for a, b in itertools.pairwise(reversals):
        assert b - a >= period / 2, (reversals, trace)
    hedge.delete(name)


# ----------------------------------------------------------------- what can go wrong


@pytest.mark.timeout(120)
def test_gateways_that_cannot_be_read_never_scale_a_model_to_zero(
    cluster: E2ECluster, namespace: str, crd: None, hedge_process: Callable[..., HedgeProcess]
) -> None:
    """The operator's only gateway does not answer: demand is unknown, not zero. A model
    that would otherwise reach zero within seconds keeps its replica; status and a Warning
    Event name the gateway."""
    dead = f"http://127.0.0.1:{free_port()}/metrics"
    operator = hedge_process(
        "operator", "--namespace", namespace, "--metrics-port", "0", "--health-port", "0",
        "--gateway-metrics-url", dead,
    )  # fmt: skip
    cluster.apply(
        model_deployment(
            "blind",
            replicas=1,
            autoscaling={
                "minReplicas": 0,
                "maxReplicas": 2,
                "scaleDownDelaySeconds": 0,
                "scaleToZeroAfterSeconds": 1,
            },
        ),
        namespace,
    )

    def status() -> dict[str, Any]:
        return dict(get_md(cluster, namespace, "blind").get("status", {}).get("autoscaling") or {})

    wait_for(lambda: status().get("reason") == "NoMetrics", 30, "reason NoMetrics")
    held_since = time.monotonic()
    while time.monotonic() - held_since < 8:  # eight times the idle period
        assert status()["desiredReplicas"] == 1, status()
        time.sleep(0.5)
    assert f"unreadable: {dead}" in status()["message"]
    deployments = cluster.get(f"/apis/apps/v1/namespaces/{namespace}/deployments")["items"]
    assert [d["spec"]["replicas"] for d in deployments] == [1]
    events = cluster.get_json("events", "-n", namespace)["items"]
    warnings = [e for e in events if e["reason"] == "NoMetrics"]
    assert warnings and warnings[0]["type"] == "Warning" and dead in warnings[0]["message"]
    operator.assert_running()


@pytest.mark.timeout(120)
def test_an_hpa_can_drive_a_model_through_its_scale_subresource(
    cluster: E2ECluster, namespace: str, operator: Operator
) -> None:
    """For teams that standardise on HPA or KEDA instead of Hedge's autoscaler: the real
    HPA controller resolves a ModelDeployment's scale subresource (AbleToScale), and what it
    sets (spec.replicas) is what the engine Deployment gets."""
    cluster.apply(model_deployment("by-hpa", replicas=1), namespace)
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "by-hpa"},
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "hedge.dev/v1alpha1",
                "kind": "ModelDeployment",
                "name": "by-hpa",
            },
            "minReplicas": 2,
            "maxReplicas": 3,
            "metrics": [
                {"type": "Resource",
                 "resource": {"name": "cpu", "target": {"type": "Utilization",
                                                        "averageUtilization": 80}}}
            ],
        },
    }  # fmt: skip
    cluster.apply(hpa, namespace)

    def able() -> dict[str, Any] | None:
        found = cluster.get(
            f"/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers/by-hpa"
        )
        conditions = (found.get("status") or {}).get("conditions") or []
        # A CRD created moments ago may take the controller manager's discovery up to 30 s.
        return next(
            (c for c in conditions if c["type"] == "AbleToScale" and c["status"] == "True"), None
        )

    condition_ = wait_for(able, 90, "the HPA's AbleToScale condition to be True")
    assert condition_["reason"] in ("SucceededGetScale", "SucceededRescale"), condition_
    # No metrics server here, so the HPA only enforces its bounds: minReplicas 2.
    wait_for(
        lambda: get_md(cluster, namespace, "by-hpa")["spec"].get("replicas") == 2, 60,
        "the HPA to set spec.replicas through the scale subresource",
    )  # fmt: skip
    wait_for(lambda: [d["spec"]["replicas"] for d in cluster.get(
        f"/apis/apps/v1/namespaces/{namespace}/deployments")["items"]] == [2], 30,
        "the engine Deployment to follow")  # fmt: skip
