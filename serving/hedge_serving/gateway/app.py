"""The gateway's HTTP servers: the OpenAI API port and the admin port.

The API port runs aiohttp's low-level server with one dispatch function (no router, no
middleware: the hot path is a dict lookup, auth, body read, one `json.loads`, the proxy).
Every answer it makes itself, including the HTTP parser's own rejections (oversized
headers, garbage request lines), is in the OpenAI error shape. The admin port serves
`/metrics`, `/healthz` and `/readyz`.

Connections are bounded before anyone is authenticated (issue 16, High-4): a request head
must arrive whole within `head_timeout_s` and within `max_head_bytes`, an idle keep-alive
connection closes after `keepalive_timeout_s`, and connections over the global or the
per-client-IP cap are closed at accept, before aiohttp builds anything for them.

Stopping (SIGTERM) drains without refusing anyone: `/readyz` turns 503 at once while the API
keeps serving for `drain_delay_s` (endpoints take that long to drop the pod; answers now
carry `Connection: close` so clients reconnect elsewhere), then the listener closes and
in-flight requests and streams get up to `drain_timeout_s` to finish.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast

import aiohttp
from aiohttp import web
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hedge_core.contracts import METRICS_PATH
from hedge_serving.gateway import errors
from hedge_serving.gateway.admission import Quotas, Ticket
from hedge_serving.gateway.auth import ClientAuth
from hedge_serving.gateway.balancer import Balancer
from hedge_serving.gateway.bodies import BodyLimits, parse_request_json
from hedge_serving.gateway.breaker import CircuitBreaker
from hedge_serving.gateway.egress import provider_session
from hedge_serving.gateway.endpoints import BY_PATH, Endpoint
from hedge_serving.gateway.engine_metrics import EngineMetricsScraper
from hedge_serving.gateway.fairness import HEADER_PRIORITY, BadHeader, effective_priority
from hedge_serving.gateway.keys import KeyStore, LocalKeyStore
from hedge_serving.gateway.metrics import SERVED_BY_GATEWAY, UNKNOWN_MODEL, GatewayMetrics
from hedge_serving.gateway.proxy import Proxy, ProxySettings, RequestState
from hedge_serving.gateway.routing import RoutingTable
from hedge_serving.gateway.tenants import Scope
from hedge_serving.gateway.upstream import AiohttpUpstream, Upstream, UpstreamPool

log = logging.getLogger("hedge.gateway")

_JSON = "application/json"
_CLIENT_GONE = 499
MODELS_CACHE_SCOPES = 256  # /v1/models answers kept, one per client-key scope


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 8080
    admin_host: str | None = None  # defaults to `host`
    admin_port: int | None = 9090  # None: no admin server
    max_body_bytes: int = 4 * 1024 * 1024
    body_timeout_s: float = 30.0
    drain_timeout_s: float = 30.0
    drain_delay_s: float = 5.0  # keep serving after SIGTERM while endpoints drop the pod
    breaker_failures: int = 3
    breaker_open_s: float = 1.0
    affinity_slack: int = 4
    affinity_ratio: float = 1.5
    engine_metrics_interval_s: float = 1.0  # 0 disables scraping vLLM /metrics
    upstream_keepalive_s: float = 4.0  # below uvicorn's 5 s so pooled sockets are not stale
    upstream_max_conns: int = 1024  # per backend; more requests wait for a connection
    upstream_client: str = "pooled"  # or "aiohttp" (measured in bench/gateway_bench.py)
    # Before authentication (docs/gateway.md, "Limits"): 0 turns a cap off.
    head_timeout_s: float = 10.0  # from the connection (or the head's first byte) to its end
    max_head_bytes: int = 32 * 1024  # request line and all headers together
    keepalive_timeout_s: float = 75.0  # idle keep-alive; above common LB idle timeouts (60 s)
    max_connections: int = 4096  # open client connections, all clients together
    max_connections_per_ip: int = 512  # open client connections from one address
    body_limits: BodyLimits = field(default_factory=BodyLimits)
    proxy: ProxySettings = field(default_factory=ProxySettings)


def _json_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    h = {"Content-Type": _JSON}
    if headers:
        h.update(headers)
    return web.Response(status=status, body=body, headers=h)


def error_response(err: errors.GatewayError) -> web.Response:
    resp = _json_response(err.status, err.body(), err.headers)
    if err.close_connection:
        resp.force_close()
    return resp


def _raw_error(status: int, message: str) -> bytes:
    """A whole `Connection: close` answer, for connections closed before a request exists."""
    body = errors.for_status(status, message).body()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"Content-Type: {_JSON}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class OpenAIRequestHandler(RequestHandler):
    """aiohttp's connection handler, with its own error pages in the OpenAI shape, a
    deadline and a byte budget for each request head, and the connection caps."""

    reading: StreamReader | None = None  # body of the request being handled
    _admitted: str | None = None  # the client address counted against the caps
    _head_bytes = 0  # bytes of the head being read
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._manager
        assert isinstance(server, _Server)
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if not server.admit(address):
            # Over a cap: close before aiohttp starts a task or a parser buffer for it.
            cast(asyncio.Transport, transport).abort()
            return
        self._admitted = address
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._admitted is None:
            return  # refused at accept: nothing was started
        server = self._manager
        if isinstance(server, _Server):
            server.release(self._admitted)
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._admitted is None or self._force_close:
            return
        payload = self._messages[-1][1] if self._messages else self.reading
        if payload is None or payload.is_eof():  # not a body: the (next) request's head
            if self._head_timer is None:
                self._arm_head_deadline()
            self._head_bytes += len(data)
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:
            self._head_bytes = 0
            self._cancel_head_deadline()
        elif self._head_bytes > self._limits().max_head_bytes > 0:
            self._refuse_head(
                431,
                f"The request head is over {self._limits().max_head_bytes} bytes "
                "(request line and headers together).",
            )

    def _limits(self) -> GatewaySettings:
        server = self._manager
        return server.settings if isinstance(server, _Server) else GatewaySettings()

    def _arm_head_deadline(self) -> None:
        timeout = self._limits().head_timeout_s
        if timeout > 0 and self._head_timer is None:
            self._head_timer = self._loop.call_later(timeout, self._head_deadline)

    def _cancel_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_deadline(self) -> None:
        self._head_timer = None
        if self._current_request is not None:
            # A pipelined head behind a request in flight: judge it once that one is done.
            self._arm_head_deadline()
            return
        if self._head_bytes:
            timeout = self._limits().head_timeout_s
            self._refuse_head(408, f"The request head was not received within {timeout:g}s.")
        else:
            self.force_close()  # a connection that never sent a byte: nothing to answer

    def _refuse_head(self, status: int, message: str) -> None:
        self._cancel_head_deadline()
        transport = self.transport
        if transport is not None and not self._force_close:
            log.debug("closing a connection from %s: %s", self._admitted, message)
            transport.write(_raw_error(status, message))
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            self.logger.error("error handling a request", exc_info=exc)
            text = "The server had an error while processing your request."
        else:
            self.logger.debug("rejected a malformed request: %s", exc)
            text = (message or str(exc or "") or "Bad request").strip().splitlines()[0]
            text = text.split(": b'", 1)[0][:200]  # not the client's bytes back
        resp = error_response(errors.for_status(status, text))
        resp.force_close()
        return resp

    def eof_received(self) -> bool:  # type: ignore[override]
        # The client half-closed its side. If a request is still being read, its body is
        # cut: tell the parser (the handler then answers 400) and keep our side open for
        # that answer; otherwise let the connection close as usual.
        idle = self._waiter is not None  # start() waits for the next request
        payload = self.reading
        if idle or payload is None or payload.is_eof():
            return False
        payload.feed_eof()  # the handler sees a short body and answers 400
        return True


class _Server(web.Server):
    """aiohttp's server, with the gateway's connection handler and the connection caps."""

    def __init__(self, *args: Any, settings: GatewaySettings, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = settings
        self.open_total = 0
        self.open_by_address: dict[str, int] = {}
        self.refused = 0  # connections closed at accept, over a cap

    def admit(self, address: str) -> bool:
        s = self.settings
        held = self.open_by_address.get(address, 0)
        if (0 < s.max_connections <= self.open_total) or (0 < s.max_connections_per_ip <= held):
            self.refused += 1
            if self.refused & (self.refused - 1) == 0:  # 1st, 2nd, 4th, 8th ...: not a flood
                log.warning(
                    "refused a connection from %s at accept (over the connection caps: "
                    "%d open, %d from this address); %d refused so far",
                    address,
                    self.open_total,
                    held,
                    self.refused,
                )
            return False
        self.open_total += 1
        self.open_by_address[address] = held + 1
        return True

    def release(self, address: str) -> None:
        self.open_total -= 1
        left = self.open_by_address.get(address, 1) - 1
        if left > 0:
            self.open_by_address[address] = left
        else:
            self.open_by_address.pop(address, None)

    def __call__(self) -> RequestHandler:
        # aiohttp has no hook for the connection handler class; `Server.__call__` builds a
        # plain RequestHandler from the same (private) attributes.
        return OpenAIRequestHandler(self, loop=self._loop, **self._kwargs)


class Gateway:
    """The request dispatcher; its parts are passed in so tests can swap them."""

    def __init__(
        self,
        table: RoutingTable,
        proxy: Proxy,
        metrics: GatewayMetrics,
        auth: ClientAuth,
        settings: GatewaySettings,
    ) -> None:
        self.table = table
        self.proxy = proxy
        self.metrics = metrics
        self.auth = auth
        self.settings = settings
        self.draining = False
        self.ready: Callable[[], bool] = lambda: True
        self._models_cache: dict[Scope, tuple[int, bytes]] = {}

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        response = await self._handle(request)
        if self.draining and not response.prepared:
            response.force_close()  # the client's next request opens a connection elsewhere
        return response

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        endpoint = BY_PATH.get(path)
        if endpoint is not None:
            if request.method != "POST":
                return self._reject(errors.MethodNotAllowed(f"Use POST for {path}."), request)
            return await self._proxy(request, endpoint)
        if path == "/v1/models" or path.startswith("/v1/models/"):
            if request.method != "GET":
                return self._reject(errors.MethodNotAllowed(f"Use GET for {path}."), request)
            try:
                scope = self.auth.check(request.headers.get("Authorization"))
            except errors.GatewayError as err:
                return self._reject(err, request)
            model_id = path[len("/v1/models/") :] if path != "/v1/models" else None
            return self._models(model_id, scope)
        return self._reject(
            errors.NotFound(f"Invalid URL ({request.method} {path[:200]})"), request
        )

    def _reject(self, err: errors.GatewayError, request: web.BaseRequest) -> web.Response:
        self.metrics.request_done(UNKNOWN_MODEL, SERVED_BY_GATEWAY, err.status, 0.0)
        return error_response(err)

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        limit = self.settings.max_body_bytes
        length = request.content_length
        err: errors.GatewayError
        if length is not None and length > limit:
            err = errors.PayloadTooLarge(
                f"The request body is {length} bytes; the limit is {limit} bytes."
            )
        else:
            try:
                if request.content.is_eof():  # the whole body is already here
                    body = await request.read()
                else:
                    async with asyncio.timeout(self.settings.body_timeout_s):
                        body = await request.read()
                if length is None or len(body) == length:
                    return body
                err = errors.BadRequest(
                    f"The request body was cut short: {len(body)} of {length} bytes."
                )
            except web.HTTPRequestEntityTooLarge:
                err = errors.PayloadTooLarge(f"The request body is over {limit} bytes.")
            except TimeoutError:
                err = errors.ClientError("The request body was not received in time.")
                err.status = 408
            except (aiohttp.ClientPayloadError, RequestPayloadError):
                err = errors.BadRequest("The request body could not be read.")
        err.close_connection = True  # do not linger reading what is left of the body
        raise err

    async def _proxy(self, request: web.BaseRequest, endpoint: Endpoint) -> web.StreamResponse:
        started = time.perf_counter()
        state = RequestState(UNKNOWN_MODEL, started)
        ticket: Ticket | None = None
        try:
            identity = self.auth.identify(request.headers.get("Authorization"))
            scope = identity.scope
            body = await self._read_body(request)
            payload: Any = parse_request_json(body, self.settings.body_limits)
            if type(payload) is not dict:
                raise errors.BadRequest("The request body must be a JSON object.")
            model = payload.get("model")
            if model is None:
                raise errors.BadRequest("You must provide a model parameter.", param="model")
            if type(model) is not str:
                raise errors.BadRequest("`model` must be a string.", param="model")
            stream = payload.get("stream")
            if stream is not None and type(stream) is not bool:
                raise errors.BadRequest("`stream` must be true or false.", param="stream")
            route = self.table.resolve(model, scope)
            if route is None:
                raise errors.ModelNotFound(
                    f"The model `{model[:200]}` does not exist or you do not have access to it.",
                    param="model",
                )
            if model != route.model:
                # A qualified name (`<namespace>/<name>`): the engine knows the model by its
                # served name. Rare, so only this path re-encodes the body.
                payload["model"] = route.model
                body = json.dumps(payload).encode()
            state.model = route.label
            asked = request.headers.get(HEADER_PRIORITY)
            if identity.tenant is not None or asked is not None:
                tenant = identity.tenant
                priority = effective_priority(tenant.priority if tenant else None, asked)
                if isinstance(priority, BadHeader):
                    raise errors.BadRequest(priority.message, param=priority.param)
                state.priority = priority
            if identity.tenant is not None:
                state.identity = identity
                state.metered = True  # its usage is counted (and settles its reservation)
                quotas = self.proxy.quotas
                if quotas is not None:
                    ticket = await quotas.admit(identity, route.model, endpoint, payload, len(body))
                    if ticket is not None:
                        state.headers = ticket.headers
            state.arrive(route.demand)
            response = await self.proxy.serve(request, route, endpoint, body, payload, state)
            return response
        except errors.GatewayError as err:
            state.status = err.status
            state.served_by = SERVED_BY_GATEWAY
            resp = error_response(err)
            for name, value in state.headers.items():
                if name not in resp.headers:
                    resp.headers[name] = value
            return resp
        except asyncio.CancelledError:
            state.status = _CLIENT_GONE
            raise
        except Exception:
            log.exception("unexpected error while serving a request")
            state.status = 500
            state.served_by = SERVED_BY_GATEWAY
            return error_response(
                errors.InternalError("The server had an error while processing your request.")
            )
        finally:
            state.leave()
            if state.metered:
                self._tenant_done(state, ticket)
            self.metrics.request_done(
                state.model,
                state.served_by,
                state.status,
                time.perf_counter() - started,
                state.mean_gap,
            )

    def _tenant_done(self, state: RequestState, ticket: Ticket | None) -> None:
        """Usage of a ClientPolicy's request, and its reservation settled: on the tokens it
        used; on nothing if it failed before any was; as reserved if not known."""
        identity = state.identity
        tenant = identity.tenant
        if tenant is None:
            return
        used = state.tokens
        if ticket is not None and self.proxy.quotas is not None:
            failed = used is None and (state.status >= 400 or state.status == 0)
            self.proxy.quotas.settle(ticket, 0 if failed else used)
        self.metrics.tenant_done(
            tenant.label,
            identity.key or "",
            state.model,
            state.served_by,
            used,
            rate_limited=state.status == 429 and state.served_by == SERVED_BY_GATEWAY,
        )

    def _models(self, model_id: str | None, scope: Scope = None) -> web.Response:
        if model_id is not None:
            route = self.table.resolve(model_id, scope)
            if route is None:
                err = errors.ModelNotFound(
                    f"The model `{model_id[:200]}` does not exist or you do not have access to it.",
                    param="model",
                )
                return error_response(err)
            doc = {
                "id": model_id,
                "object": "model",
                "created": route.created,
                "owned_by": route.owner,
            }
            return _json_response(200, json.dumps(doc).encode())
        cached = self._models_cache.get(scope)
        if cached is None or cached[0] != self.table.version:
            data = [
                {"id": name, "object": "model", "created": r.created, "owned_by": r.owner}
                for name, r in self.table.listing(scope)
            ]
            cached = (self.table.version, json.dumps({"object": "list", "data": data}).encode())
            if len(self._models_cache) >= MODELS_CACHE_SCOPES:
                self._models_cache.clear()  # bounded: scopes are few, but keys are not ours
            self._models_cache[scope] = cached
        return _json_response(200, cached[1])

    # -- admin -------------------------------------------------------------------------

    def admin_app(self) -> web.Application:
        app = web.Application()

        async def metrics(_: web.Request) -> web.Response:
            body = generate_latest(self.metrics.registry)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def healthz(_: web.Request) -> web.Response:
            return web.Response(text="ok\n")

        async def readyz(_: web.Request) -> web.Response:
            if self.draining:
                return web.Response(status=503, text="draining\n")
            if not self.ready():
                return web.Response(status=503, text="routing table not loaded yet\n")
            return web.Response(text="ok\n")

        app.router.add_get(METRICS_PATH, metrics)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        return app


@dataclass
class RunningGateway:
    gateway: Gateway
    table: RoutingTable
    port: int
    admin_port: int | None
    session: aiohttp.ClientSession
    _scrape_session: aiohttp.ClientSession
    _runner: web.ServerRunner
    _admin_runner: web.AppRunner | None
    _scraper: EngineMetricsScraper
    upstream: Upstream | None = None
    _on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.gateway.settings.host}:{self.port}"

    async def stop(self, drain_delay_s: float | None = None) -> None:
        """Turn unready and keep serving for the drain delay, then stop accepting
        connections, let in-flight requests and streams finish (up to the drain timeout),
        and close everything."""
        self.gateway.draining = True
        delay = self.gateway.settings.drain_delay_s if drain_delay_s is None else drain_delay_s
        if delay > 0:
            await asyncio.sleep(delay)
        for hook in self._on_stop:
            await hook()
        await self._runner.cleanup()
        quotas = self.gateway.proxy.quotas
        if quotas is not None:
            await quotas.close()
        await self._scraper.stop()
        if self.upstream is not None:
            closing = self.upstream.close()
            if closing is not None:
                await closing
        await self.session.close()
        await self._scrape_session.close()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()


async def start_gateway(
    table: RoutingTable | None = None,
    settings: GatewaySettings | None = None,
    *,
    keys: KeyStore | None = None,
    auth: ClientAuth | None = None,
    ready: Callable[[], bool] | None = None,
    quotas: Quotas | None = None,
) -> RunningGateway:
    """Start the API (and admin) server on the running loop; returns once listening.
    `quotas`: where ClientPolicy limits are counted (none: they are not enforced)."""
    settings = settings or GatewaySettings()
    if table is None:
        table = RoutingTable(
            lambda: CircuitBreaker(settings.breaker_failures, settings.breaker_open_s)
        )
    metrics = GatewayMetrics(table)
    # Provider calls honour HTTPS_PROXY / HTTP_PROXY / NO_PROXY (trust_env), as corporate
    # egress requires, and connect only where the egress policy allows; engine pods are
    # reached directly (pooled client, scraper session).
    session = provider_session(settings.proxy.egress, settings.upstream_keepalive_s)
    scrape_session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=settings.upstream_keepalive_s),
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=False,
    )
    upstream: Upstream
    if settings.upstream_client == "aiohttp":
        upstream = AiohttpUpstream(
            settings.proxy.connect_timeout_s,
            settings.upstream_keepalive_s,
            settings.upstream_max_conns,
        )
    else:
        upstream = UpstreamPool(
            settings.proxy.connect_timeout_s,
            settings.upstream_keepalive_s,
            settings.upstream_max_conns,
        )
    proxy = Proxy(
        session,
        upstream,
        Balancer(settings.affinity_slack, settings.affinity_ratio),
        metrics,
        keys or LocalKeyStore(),
        settings.proxy,
        table=table,
    )
    proxy.quotas = quotas
    gateway = Gateway(table, proxy, metrics, auth or ClientAuth(), settings)

    def prune(t: RoutingTable) -> None:
        routes = t.all_routes()
        metrics.prune(r.label for r in routes)
        proxy.prune_providers(spec for r in routes for spec in r.fallback)
        if isinstance(upstream, UpstreamPool):
            upstream.retain({b.url for b in t.backends()})

    table.subscribe(prune)
    if ready is not None:
        gateway.ready = ready
    limit = settings.max_body_bytes

    def request_factory(
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: Any,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        if isinstance(protocol, OpenAIRequestHandler):
            protocol.reading = payload
        return web.BaseRequest(
            message,
            payload,
            protocol,
            writer,
            task,
            asyncio.get_running_loop(),
            client_max_size=limit,
        )

    server = _Server(
        gateway.handle,
        settings=settings,
        request_factory=request_factory,
        handler_cancellation=True,
        access_log=None,
        max_field_size=16 * 1024,
        max_line_size=16 * 1024,
        keepalive_timeout=settings.keepalive_timeout_s,
    )
    runner = web.ServerRunner(server, shutdown_timeout=settings.drain_timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
    await site.start()
    port = _bound_port(site)
    admin_runner = None
    admin_port = None
    if settings.admin_port is not None:
        admin_runner = web.AppRunner(
            gateway.admin_app(), access_log=None, keepalive_timeout=settings.keepalive_timeout_s
        )
        await admin_runner.setup()
        admin_site = web.TCPSite(
            admin_runner, settings.admin_host or settings.host, settings.admin_port
        )
        await admin_site.start()
        admin_port = _bound_port(admin_site)
    scraper = EngineMetricsScraper(table, scrape_session, settings.engine_metrics_interval_s)
    scraper.start()
    running = RunningGateway(
        gateway, table, port, admin_port, session, scrape_session, runner, admin_runner, scraper
    )
    running.upstream = upstream
    return running


def _bound_port(site: web.TCPSite) -> int:
    server = site._server  # aiohttp keeps the listening server private
    sockets: list[socket.socket] = list(getattr(server, "sockets", None) or ())
    return int(sockets[0].getsockname()[1])
