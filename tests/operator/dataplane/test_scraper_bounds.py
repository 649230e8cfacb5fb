"""The operator reads engine and gateway /metrics within a byte cap (issue 16, Medium-9): an
endless page from a tenant's engine image is left out as unreadable, never held whole."""

from __future__ import annotations

import aiohttp

from hedge_operator.dataplane.scraper import Scraper
from tests.serving.gateway_stubs.endless import EndlessMetrics

MODEL = ("team-a", "llama")
ENGINE_CAP = 4 * 1024 * 1024  # scraper.MAX_ENGINE_METRICS_BYTES
SOCKET_SLACK = 32 * 1024 * 1024  # what loopback socket buffers hold past the client's read


async def test_an_endless_engine_page_is_unreadable_and_cut_at_the_cap() -> None:
    endless = await EndlessMetrics().start()
    try:
        async with aiohttp.ClientSession() as session:
            scraper = Scraper(
                session, lambda: [], lambda: {MODEL: [endless.url + "/metrics"]}, timeout=10.0
            )
            snapshot = await scraper.snapshot()
    finally:
        await endless.stop()
    assert endless.pages == 1
    assert snapshot.model(MODEL).engine_queue is None  # not read, rather than 2 from its head
    assert endless.written < ENGINE_CAP + SOCKET_SLACK, endless.written


async def test_an_endless_gateway_page_counts_as_a_failed_gateway() -> None:
    endless = await EndlessMetrics().start()
    url = endless.url + "/metrics"
    try:
        async with aiohttp.ClientSession() as session:
            scraper = Scraper(session, lambda: [url], timeout=10.0)
            scraper.max_gateway_bytes = 1024 * 1024
            snapshot = await scraper.snapshot()
    finally:
        await endless.stop()
    assert snapshot.gateways_failed == [url]
    assert endless.written < 1024 * 1024 + SOCKET_SLACK, endless.written
