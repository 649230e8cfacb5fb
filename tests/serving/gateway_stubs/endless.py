"""A loopback /metrics server whose page never ends (a tenant's hostile engine image),
bounded here so that a client without a cap still ends: at most `max_bytes` or `max_s`."""

from __future__ import annotations

import time

from aiohttp import web

from tests.serving.gateway_stubs.servers import Server

FIRST = (
    b"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting 1\n"
    b"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 1\n"
)
PAD = b"# " + b"x" * 65_000 + b"\n"


class EndlessMetrics(Server):
    def __init__(self, max_bytes: int = 256 * 1024 * 1024, max_s: float = 10.0) -> None:
        super().__init__()
        self.max_bytes = max_bytes
        self.max_s = max_s
        self.written = 0  # bytes of the last page the client took before it hung up
        self.pages = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        self.pages += 1
        self.written = 0
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        await response.write(FIRST)
        self.written = len(FIRST)
        started = time.monotonic()
        try:
            while self.written < self.max_bytes and time.monotonic() - started < self.max_s:
                await response.write(PAD)
                self.written += len(PAD)
            await response.write_eof()
        except (ConnectionError, OSError):
            pass  # the client hung up: what we measure
        return response
