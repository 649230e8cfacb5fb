"""Does I/O: where the operator finds the data plane it reads: every gateway replica's
admin /metrics and the ready engine pods' /metrics, behind one `scraper.Scraper` shared by
the autoscaler and the rollout analysis.

Gateways are found as Prometheus would find them: through the EndpointSlices of the
gateways' headless admin Service (`--gateway-service NS/NAME`, set by the chart), watched
with the project's one list+watch loop, plus any static `--gateway-metrics-url` (a gateway
outside the cluster, the demo, tests). Engine pods come from kopf's pod index (their IPs), so
no extra watch is needed; only models with spec.autoscaling have their engines read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import aiohttp

from hedge_core.api import ENGINE_PORT
from hedge_core.kube import ListWatch
from hedge_operator import metrics
from hedge_operator.dataplane.scraper import Scraper
from hedge_operator.dataplane.signals import ModelKey, Snapshot, admin_urls, engine_metrics_url
from hedge_operator.kube import Kube
from hedge_operator.provisioning.observed import PodSummary

log = logging.getLogger(__name__)

#: How often the shared scrape may run. Below the autoscaler's 1 s tick, so every tick
#: sees a scrape at most half a second old whatever the phase of the timers.
SCRAPE_INTERVAL = 0.5
SCRAPE_TIMEOUT = 1.5


def parse_service(value: str) -> tuple[str, str]:
    """`NAMESPACE/NAME` → (namespace, name); ValueError naming the flag otherwise."""
    ns, slash, name = value.partition("/")
    if not slash or not ns or not name or "/" in name:
        raise ValueError(f"--gateway-service must be NAMESPACE/NAME, got {value!r}")
    return ns, name


def engine_urls(
    pods: Mapping[ModelKey, Sequence[PodSummary]], wanted: Iterable[ModelKey]
) -> dict[ModelKey, list[str]]:
    """/metrics of the ready, live engine pods of the `wanted` models."""
    out: dict[ModelKey, list[str]] = {}
    for key in wanted:
        urls = [
            engine_metrics_url(p.ip, ENGINE_PORT)
            for p in pods.get(key, ())
            if p.ready and p.ip and not p.deleting
        ]
        if urls:
            out[key] = urls
    return out


class DataPlane:
    """The scraper and the sources it reads; started and stopped with the operator."""

    def __init__(
        self,
        kube: Kube,
        *,
        gateway_service: tuple[str, str] | None = None,
        gateway_urls: Sequence[str] = (),
        engines: Callable[[], Mapping[ModelKey, Iterable[str]]] | None = None,
        interval: float = SCRAPE_INTERVAL,
    ) -> None:
        self._kube = kube
        self.gateway_service = gateway_service
        self.static_urls = list(gateway_urls)
        self._engines = engines
        self._interval = interval
        self._watch: ListWatch | None = None
        self._known: list[str] = []
        self._session: aiohttp.ClientSession | None = None
        self.scraper: Scraper | None = None

    @property
    def configured(self) -> bool:
        """Whether any gateway is to be read at all."""
        return self.gateway_service is not None or bool(self.static_urls)

    def describe(self) -> str:
        where = []
        if self.gateway_service is not None:
            where.append("Service {}/{}".format(*self.gateway_service))
        where += self.static_urls
        return ", ".join(where) or "none (--gateway-service or --gateway-metrics-url)"

    def gateways(self) -> list[str]:
        urls = set(self.static_urls)
        if self._watch is not None:
            urls.update(admin_urls(self._watch.items.values()))
        return sorted(urls)

    def set_engines(self, engines: Callable[[], Mapping[ModelKey, Iterable[str]]]) -> None:
        self._engines = engines

    def _engine_urls(self) -> Mapping[ModelKey, Iterable[str]]:
        return self._engines() if self._engines is not None else {}

    async def start(self) -> None:
        # Engine pods and gateways answer on the cluster network, never through a proxy.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=30),
            trust_env=False,
        )
        self.scraper = Scraper(
            self._session,
            self.gateways,
            self._engine_urls,
            interval=self._interval,
            timeout=SCRAPE_TIMEOUT,
        )
        if self.gateway_service is not None:
            ns, name = self.gateway_service
            self._watch = self._kube.watch_gateways(ns, name, self._changed, self._event)
            self._watch.start()
        log.info("reading gateway metrics from %s", self.describe())

    def _changed(self, items: list[dict[str, Any]]) -> None:
        gateways = self.gateways()
        if gateways != self._known:
            self._known = gateways
            log.info("gateways: %s", ", ".join(gateways) or "none")

    def _event(self, kind: str, obj: dict[str, Any]) -> None:
        self._changed([])

    async def snapshot(self) -> Snapshot | None:
        """The latest scrape (at most `interval` old); None before `start`."""
        if self.scraper is None:
            return None
        snap = await self.scraper.snapshot()
        metrics.GATEWAYS.labels("read").set(snap.gateways_read)
        metrics.GATEWAYS.labels("failed").set(len(snap.gateways_failed))
        return snap

    async def stop(self) -> None:
        if self._watch is not None:
            await self._watch.stop()
            self._watch = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.scraper = None
