"""What every stub server shares: an aiohttp app on 127.0.0.1 (an ephemeral port, TLS when
asked), a record of the requests it received, OpenAI-shaped errors and SSE events."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from typing import Any

from aiohttp import web


async def start_app(
    app: web.Application, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    if ssl_context is not None:  # the certificate names localhost
        return runner, f"https://localhost:{port}"
    return runner, f"http://127.0.0.1:{port}"


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def openai_error(status: int, message: str, type_: str, code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return web.json_response(body, status=status)


@dataclass
class Received:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any]


class Server:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    def app(self) -> web.Application:
        raise NotImplementedError

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> Server:
        self.runner, self.url = await start_app(self.app(), ssl_context)
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def _record(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return openai_error(400, "body must be a JSON object", "invalid_request_error")
        self.received.append(
            Received(request.path, dict(request.query), dict(request.headers), body)
        )
        return body
