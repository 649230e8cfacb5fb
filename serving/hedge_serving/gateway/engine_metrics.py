"""Reads each self-hosted backend's queue depth from its vLLM `/metrics`, in the background.

One scrape of every backend per interval, never per request. The result feeds
`Backend.queue_estimate()`, which adds what the gateway sent since the scrape, so the
`Overloaded` decision follows bursts between scrapes.

A backend is a tenant's engine image, so its page is read within a byte cap and a deadline
(issue 16, Medium-9): a page over `MAX_METRICS_BYTES`, compressed, or slower than the
timeout is unreadable (the backend counts as not scraped), never held whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import aiohttp

from hedge_core.contracts import ENGINE_WAITING, METRICS_PATH
from hedge_serving.gateway.routing import Backend, RoutingTable

log = logging.getLogger("hedge.gateway")

WAITING_METRIC = ENGINE_WAITING
# vLLM's page is ~50-200 KB (histograms included); 64 concurrent scrapes x 2 MiB at most.
MAX_METRICS_BYTES = 2 * 1024 * 1024
_IDENTITY = {"Accept-Encoding": "identity"}  # no decompression: its output is not capped


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or `ValueError` once it is over `limit` bytes or compressed."""
    if response.headers.get("Content-Encoding", "identity").lower() != "identity":
        raise ValueError("a compressed /metrics page")
    if (response.content_length or 0) > limit:
        raise ValueError(f"a /metrics page over {limit} bytes")
    data = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > limit:
            raise ValueError(f"a /metrics page over {limit} bytes")
    return bytes(data)


def parse_waiting(text: str) -> float | None:
    """Sum of `vllm:num_requests_waiting` over its label sets, or None if absent."""
    total = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith(WAITING_METRIC) and (
            len(line) > len(WAITING_METRIC) and line[len(WAITING_METRIC)] in "{ "
        ):
            value = line.rsplit("}", 1)[-1].split()
            try:
                total += float(value[0])
                found = True
            except (IndexError, ValueError):
                continue
    return total if found else None


class EngineMetricsScraper:
    def __init__(
        self, table: RoutingTable, session: aiohttp.ClientSession, interval_s: float = 1.0
    ) -> None:
        self._table = table
        self._session = session
        self._interval = interval_s
        self._timeout = aiohttp.ClientTimeout(total=max(0.2, min(interval_s, 2.0)))
        self._task: asyncio.Task[None] | None = None
        self.max_bytes = MAX_METRICS_BYTES

    def start(self) -> None:
        if self._interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(), name="hedge-engine-metrics")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def scrape_once(self) -> None:
        backends = self._table.backends()
        if backends:
            await asyncio.gather(*(self._scrape(b) for b in backends))

    async def _run(self) -> None:
        while True:
            await self.scrape_once()
            await asyncio.sleep(self._interval)

    async def _scrape(self, backend: Backend) -> None:
        try:
            async with self._session.get(
                backend.url + METRICS_PATH,
                timeout=self._timeout,
                headers=_IDENTITY,
                auto_decompress=False,
            ) as r:
                if r.status != 200:
                    raise ValueError(f"HTTP {r.status}")
                body = await read_capped(r, self.max_bytes)
                waiting = parse_waiting(body.decode("utf-8", "replace"))
        except (aiohttp.ClientError, OSError, ValueError, TimeoutError):
            backend.scraped_at = None
            return
        if waiting is None:
            backend.scraped_at = None
            return
        backend.waiting = waiting
        backend.inflight_at_scrape = backend.outstanding
        backend.scraped_at = time.monotonic()
