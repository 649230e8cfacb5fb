"""Does I/O: scrapes every gateway replica's and engine pod's /metrics into a `Snapshot`.

Once per tick whoever asks, and never raises: a source that cannot be read is left out and
reported (see dataplane.signals for what is read and why). Pages are read within a byte
cap and the timeout: an engine pod runs a tenant's image, and a page over the cap (or
compressed: decompression output is not capped) counts as unreadable, never held whole.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping

import aiohttp

from hedge_operator.dataplane.signals import (
    Counters,
    EngineReading,
    ModelKey,
    ModelSignals,
    Snapshot,
    parse_engine,
    parse_gateway,
)

log = logging.getLogger(__name__)

# A gateway's page grows with its models (~10 KB each); an engine's (vLLM) is ~50-200 KB.
MAX_GATEWAY_METRICS_BYTES = 64 * 1024 * 1024
MAX_ENGINE_METRICS_BYTES = 4 * 1024 * 1024
_IDENTITY = {"Accept-Encoding": "identity"}


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> str | None:
    """The page as text, or None once it is over `limit` bytes or compressed."""
    if response.headers.get("Content-Encoding", "identity").lower() != "identity":
        return None
    if (response.content_length or 0) > limit:
        return None
    data = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > limit:
            return None
    return data.decode("utf-8", "replace")


class Scraper:
    """Scrapes every gateway replica (and the engines it is told about) at most once per
    `interval`, however many ModelDeployments ask; concurrent askers share one scrape."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        gateways: Callable[[], Iterable[str]],
        engines: Callable[[], Mapping[ModelKey, Iterable[str]]] | None = None,
        *,
        interval: float = 1.0,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._gateways = gateways
        self._engines = engines
        self._interval = interval
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock
        self._counters = Counters()
        self._latest: Snapshot | None = None
        self._pending: asyncio.Task[Snapshot] | None = None
        self._previous_arrivals: dict[ModelKey, float] = {}
        self._scrapes = 0
        self.max_gateway_bytes = MAX_GATEWAY_METRICS_BYTES
        self.max_engine_bytes = MAX_ENGINE_METRICS_BYTES

    async def snapshot(self) -> Snapshot:
        latest = self._latest
        if latest is not None and self._clock() - latest.at < self._interval:
            return latest
        if self._pending is None or self._pending.done():
            self._pending = asyncio.create_task(self._scrape())
        return await asyncio.shield(self._pending)

    async def _get(self, url: str, limit: int) -> str | None:
        try:
            async with self._session.get(
                url, timeout=self._timeout, headers=_IDENTITY, auto_decompress=False
            ) as response:
                if response.status != 200:
                    return None
                text = await read_capped(response, limit)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return None
        if text is None:
            log.warning("the /metrics page of %s is over %d bytes or compressed", url, limit)
        return text

    async def _scrape(self) -> Snapshot:
        gateways = sorted(set(self._gateways()))
        engines = {k: sorted(set(v)) for k, v in (self._engines() if self._engines else {}).items()}
        engine_urls = sorted({url for urls in engines.values() for url in urls})
        texts = await asyncio.gather(
            *(self._get(u, self.max_gateway_bytes) for u in gateways),
            *(self._get(u, self.max_engine_bytes) for u in engine_urls),
        )
        gateway_texts = dict(zip(gateways, texts[: len(gateways)], strict=True))
        engine_texts = dict(zip(engine_urls, texts[len(gateways) :], strict=True))

        in_flight: dict[ModelKey, dict[str, float]] = {}
        failed: list[str] = []
        read = 0
        for url, text in gateway_texts.items():
            if text is None:
                failed.append(url)
                continue
            try:
                reading = parse_gateway(text)
            except ValueError:
                failed.append(url)
                continue
            read += 1
            self._counters.update(url, reading.counters)
            for model, states in reading.in_flight.items():
                mine = in_flight.setdefault(model, {})
                for state, value in states.items():
                    mine[state] = mine.get(state, 0.0) + value
        for source in self._counters.sources():
            if source not in gateway_texts:
                self._counters.retire(source)

        engine_readings: dict[str, EngineReading] = {}
        for url, text in engine_texts.items():
            if text is None:
                continue
            try:
                engine_readings[url] = parse_engine(text)
            except ValueError:
                continue

        models: dict[ModelKey, ModelSignals] = {}
        arrivals_now = {k[1:]: v for k, v in self._counters.totals(("arrivals",)).items()}
        keys = set(in_flight) | {(k[0], k[1]) for k in arrivals_now} | set(engines)
        for model in keys:
            total_arrivals = arrivals_now.get(model, 0.0)
            # A model seen for the first time after the operator's first scrape has all of
            # its arrivals new (the first request of a model at zero must wake it, even if
            # it was served by the fallback and gone before this scrape).
            before = self._previous_arrivals.get(model, 0.0 if self._scrapes else total_arrivals)
            arrived = total_arrivals - before
            self._previous_arrivals[model] = total_arrivals
            states = in_flight.get(model, {})
            readings = [engine_readings[u] for u in engines.get(model, ()) if u in engine_readings]
            kv = [r.kv_cache for r in readings if r.kv_cache is not None]
            models[model] = ModelSignals(
                demand=sum(states.values()) if read else None,
                by_state=states,
                arrivals=max(0.0, arrived),
                engine_queue=sum(r.running + r.waiting for r in readings) if readings else None,
                kv_cache=max(kv) if kv else None,
                partial=bool(failed),
            )
        if failed:
            log.warning("could not read the metrics of gateway(s) %s", ", ".join(failed))
        if read:
            self._scrapes += 1
        snapshot = Snapshot(self._clock(), read, failed, models, self._counters, engine_readings)
        self._latest = snapshot
        return snapshot
