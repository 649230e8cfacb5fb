"""Autoscaling on the local cluster (docs/autoscaling.md).

The operator reads demand where it is whole, at every gateway replica, found through the
EndpointSlices of the gateways' admin Service as in production.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from hedge_dev.cluster import free_port
from hedge_operator.dataplane import DataPlane
from hedge_operator.kube import Kube

from .conftest import E2ECluster

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
