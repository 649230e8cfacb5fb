"""Reading demand and per-revision outcomes from gateway and engine /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from hedge_operator.dataplane.scraper import Scraper
from hedge_operator.dataplane.signals import (
    Counters,
    RevisionStats,
    TenantTotals,
    parse_engine,
    parse_gateway,
    revision_stats,
    tenant_totals,
)

MODEL = ("team-a", "llama")


class FakeGatewayMetrics:
    """The contract series, exposed by prometheus_client exactly as a gateway would."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["namespace", "model_deployment"]
        self.in_flight = Gauge(
            "hedge_gateway_demand_in_flight", "x", [*labels, "state"], registry=self.registry
        )
        self.arrivals = Counter(
            "hedge_gateway_demand_arrivals", "x", labels, registry=self.registry
        )
        self.requests = Counter(
            "hedge_gateway_revision_requests",
            "x",
            [*labels, "revision", "outcome"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            "hedge_gateway_revision_ttft_seconds", "x", [*labels, "revision"],
            registry=self.registry,
        )  # fmt: skip
        self.itl = Histogram(
            "hedge_gateway_revision_itl_seconds", "x", [*labels, "revision"],
            registry=self.registry,
        )  # fmt: skip
        # Unrelated series must be ignored.
        Gauge("hedge_gateway_backend_in_flight", "x", ["model", "backend"], registry=self.registry)

    def text(self) -> str:
        return generate_latest(self.registry).decode()


def test_parse_gateway_reads_the_contract_series() -> None:
    g = FakeGatewayMetrics()
    g.in_flight.labels(*MODEL, "self_hosted").set(5)
    g.in_flight.labels(*MODEL, "fallback").set(2)
    g.arrivals.labels(*MODEL).inc(7)
    g.requests.labels(*MODEL, "abc", "success").inc(9)
    g.requests.labels(*MODEL, "abc", "error").inc(1)
    g.ttft.labels(*MODEL, "abc").observe(0.2)
    g.ttft.labels(*MODEL, "abc").observe(0.4)
    reading = parse_gateway(g.text())
    assert reading.in_flight == {MODEL: {"self_hosted": 5.0, "fallback": 2.0}}
    assert reading.counters[("arrivals", *MODEL)] == 7
    assert reading.counters[("requests", *MODEL, "abc", "success")] == 9
    assert reading.counters[("ttft_count", *MODEL, "abc")] == 2
    assert reading.counters[("ttft_sum", *MODEL, "abc")] == pytest.approx(0.6)


def test_parse_engine_sums_vllm_gauges() -> None:
    text = (
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="m"} 3.0\n'
        "# TYPE vllm:num_requests_waiting gauge\n"
        'vllm:num_requests_waiting{engine="0",model_name="m"} 2.0\n'
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5\n'
    )
    reading = parse_engine(text)
    assert (reading.running, reading.waiting, reading.kv_cache) == (3.0, 2.0, 0.5)


def test_counters_survive_restarts_and_departures() -> None:
    c = Counters()
    key = ("arrivals", *MODEL)
    c.update("gw-1", {key: 10})
    c.update("gw-2", {key: 5})
    assert c.total(key) == 15
    c.update("gw-1", {key: 2})  # gw-1 restarted: its 10 stay counted
    assert c.total(key) == 17
    c.retire("gw-2")  # gw-2 is gone: its 5 stay counted
    assert c.total(key) == 17
    c.update("gw-1", {key: 4})
    assert c.total(key) == 19
    assert c.sources() == ["gw-1"]


def test_revision_stats_window() -> None:
    c = Counters()
    rev = (*MODEL, "abc")
    c.update("gw", {("requests", *rev, "success"): 8, ("requests", *rev, "error"): 2})
    before = revision_stats(c, rev)
    c.update(
        "gw",
        {
            ("requests", *rev, "success"): 10,
            ("requests", *rev, "error"): 10,
            ("requests", *rev, "client_error"): 5,
            ("ttft_sum", *rev): 3.0,
            ("ttft_count", *rev): 10,
        },
    )
    window = revision_stats(c, rev).minus(before)
    assert window.requests == 15
    assert window.error_rate == pytest.approx(8 / 10)  # client errors are not judged
    assert window.ttft_mean == pytest.approx(0.3)
    assert RevisionStats().error_rate is None


@pytest.fixture
async def gateways() -> AsyncIterator[tuple[list[FakeGatewayMetrics], list[str], Any]]:
    """Two gateway replicas' admin ports on loopback, plus one that answers 500."""
    metrics = [FakeGatewayMetrics(), FakeGatewayMetrics()]
    runners = []
    urls = []
    for i in range(3):

        async def handler(_: web.Request, i: int = i) -> web.Response:
            if i == 2:
                return web.Response(status=500)
            return web.Response(text=metrics[i].text())

        app = web.Application()
        app.router.add_get("/metrics", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        urls.append(f"http://127.0.0.1:{port}/metrics")
        runners.append(runner)
    async with aiohttp.ClientSession() as session:
        yield metrics, urls, session
    for runner in runners:
        await runner.cleanup()


async def test_scraper_sums_replicas_and_sees_the_first_request_of_a_model(
    gateways: tuple[list[FakeGatewayMetrics], list[str], Any],
) -> None:
    metrics, urls, session = gateways
    now = [0.0]
    live = list(urls[:2])
    scraper = Scraper(session, lambda: live, interval=1.0, clock=lambda: now[0])
    metrics[0].in_flight.labels(*MODEL, "self_hosted").set(3)
    metrics[1].in_flight.labels(*MODEL, "held").set(2)
    first = await scraper.snapshot()
    assert first.gateways_read == 2
    assert first.model(MODEL).demand == 5
    assert first.model(MODEL).arrivals == 0  # baseline at the operator's first scrape
    assert first.model(("other", "m")).demand == 0  # read gateways, no demand

    # Within the interval the same snapshot is served (one scrape per tick).
    assert await scraper.snapshot() is first

    # A model at zero gets its first request, served by the fallback and finished before
    # the next scrape: its arrival is still seen.
    metrics[1].arrivals.labels("team-b", "cold").inc()
    now[0] = 1.5
    second = await scraper.snapshot()
    assert second.model(("team-b", "cold")).arrivals == 1
    assert second.model(("team-b", "cold")).demand == 0

    # A gateway that cannot be read is reported, never taken for zero demand.
    live[:] = [urls[2]]
    now[0] = 3.0
    third = await scraper.snapshot()
    assert third.gateways_read == 0
    assert third.gateways_failed == [urls[2]]
    assert third.model(MODEL).demand is None
    assert third.model(MODEL).total_demand is None


async def test_engine_queue_counts_when_clients_bypass_the_gateway(
    gateways: tuple[list[FakeGatewayMetrics], list[str], Any],
) -> None:
    metrics, urls, session = gateways

    async def engine(_: web.Request) -> web.Response:
        return web.Response(
            text="# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 6\n"
            "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting 1\n"
        )

    app = web.Application()
    app.router.add_get("/metrics", engine)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        scraper = Scraper(
            session,
            lambda: urls[:1],
            lambda: {MODEL: [f"http://127.0.0.1:{port}/metrics"]},
        )
        metrics[0].in_flight.labels(*MODEL, "self_hosted").set(2)
        signals = (await scraper.snapshot()).model(MODEL)
        assert signals.demand == 2
        assert signals.engine_queue == 7
        assert signals.total_demand == 7
    finally:
        await runner.cleanup()


def _tenant_page(*done: tuple[str, str, str, str, int | None, bool]) -> str:
    """A real gateway registry's page after the given ClientPolicy requests ended."""
    from hedge_serving.gateway.metrics import GatewayMetrics
    from hedge_serving.gateway.routing import RoutingTable

    metrics = GatewayMetrics(RoutingTable())
    for tenant, key, model, served_by, tokens, limited in done:
        metrics.tenant_done(tenant, key, model, served_by, tokens, rate_limited=limited)
    return generate_latest(metrics.registry).decode()


def test_parse_gateway_reads_the_tenant_series() -> None:
    page = _tenant_page(
        ("team-a/team-a", "ci", "llama", "self-hosted", 30, False),
        ("team-a/team-a", "ci", "llama", "self-hosted", 12, False),
        ("team-a/team-a", "ci", "llama", "openai", 100, False),
        ("team-a/team-a", "ci", "llama", "gateway", None, True),
    )
    counters = parse_gateway(page).counters
    assert counters[("tenant_requests", "team-a/team-a", "ci", "llama", "self-hosted")] == 2
    assert counters[("tenant_tokens", "team-a/team-a", "ci", "llama", "self-hosted")] == 42
    assert counters[("tenant_tokens", "team-a/team-a", "ci", "llama", "openai")] == 100
    assert counters[("tenant_rate_limited", "team-a/team-a", "ci", "llama")] == 1
    assert not any(k[0].endswith("_created") for k in counters)


SELF_10 = ("t/a", "k", "m", "self-hosted", 10, False)


@pytest.mark.parametrize(
    ("pages", "expected"),
    [
        # One replica: refused requests are not usage, their 429s are counted apart.
        (
            {"gw-1": [SELF_10, ("t/a", "k", "m", "gateway", None, True)]},
            {"t/a": TenantTotals(requests=1, tokens=10, rate_limited=1)},
        ),
        # Two replicas, two keys, two models, two tenants: summed per tenant.
        (
            {
                "gw-1": [SELF_10, ("t/b", "k", "m", "openai", 5, False)],
                "gw-2": [("t/a", "other", "n", "openai", 7, False)],
            },
            {"t/a": TenantTotals(2, 17, 0), "t/b": TenantTotals(1, 5, 0)},
        ),
        # No tenant traffic at all.
        ({"gw-1": []}, {}),
    ],
)  # fmt: skip
def test_tenant_totals_sum_over_replicas(
    pages: dict[str, list[tuple[str, str, str, str, int | None, bool]]],
    expected: dict[str, TenantTotals],
) -> None:
    counters = Counters()
    for source, done in pages.items():
        counters.update(source, parse_gateway(_tenant_page(*done)).counters)
    assert tenant_totals(counters) == expected


def test_tenant_totals_survive_a_gateway_restart() -> None:
    counters = Counters()
    before = _tenant_page(*[SELF_10] * 3)
    counters.update("gw-1", parse_gateway(before).counters)
    assert tenant_totals(counters)["t/a"] == TenantTotals(3, 30, 0)
    # Restarted: its counters start again from one request; the three before stay counted.
    after = _tenant_page(("t/a", "k", "m", "self-hosted", 4, False))
    counters.update("gw-1", parse_gateway(after).counters)
    assert tenant_totals(counters)["t/a"] == TenantTotals(4, 34, 0)
