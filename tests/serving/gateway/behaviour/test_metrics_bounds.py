"""The gateway reads an engine's /metrics within a byte cap (issue 16, Medium-9): an
endless page is unreadable (the backend counts as not scraped), never held whole."""

from __future__ import annotations

import aiohttp

from hedge_serving.gateway.engine_metrics import EngineMetricsScraper
from hedge_serving.gateway.routing import RouteSpec, RoutingTable
from tests.serving.gateway_stubs.endless import EndlessMetrics
from tests.serving.gateway_stubs.engines import Engine

MODEL = "llama-3-8b"
CAP = 2 * 1024 * 1024  # engine_metrics.MAX_METRICS_BYTES
SOCKET_SLACK = 32 * 1024 * 1024  # what loopback socket buffers hold past the client's read


async def test_an_endless_engine_metrics_page_is_cut_at_the_cap_and_unreadable() -> None:
    endless = await EndlessMetrics().start()
    table = RoutingTable()
    table.replace([RouteSpec(MODEL, (endless.url,))])
    (backend,) = table.backends()
    async with aiohttp.ClientSession() as session:
        scraper = EngineMetricsScraper(table, session, interval_s=2.0)
        try:
            await scraper.scrape_once()
        finally:
            await endless.stop()
    assert endless.pages == 1
    assert backend.scraped_at is None  # over the cap: unreadable, not a queue of 1
    assert endless.written < CAP + SOCKET_SLACK, endless.written


async def test_an_ordinary_engine_page_is_still_read() -> None:
    engine = await Engine("e0", MODEL).start()
    engine.waiting = 3
    table = RoutingTable()
    table.replace([RouteSpec(MODEL, (engine.url,))])
    (backend,) = table.backends()
    async with aiohttp.ClientSession() as session:
        try:
            await EngineMetricsScraper(table, session, interval_s=2.0).scrape_once()
        finally:
            await engine.stop()
    assert backend.scraped_at is not None and backend.waiting == 3
