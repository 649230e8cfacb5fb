"""Serving one routed request: self-hosted backends first, then the fallback providers.

    pick a backend (balancer) ──► forward the client's bytes unchanged
        │  connection error, 502/503, or a first event that is an error: breaker failure,
        │  retry on another backend (nothing has reached the client yet)
        ▼
    no ready backend (Unavailable) / all queues full (Overloaded) / all attempts failed
    (Error) ──► providers in `spec.fallback` order, translated by their wire format
        ▼
    nothing could serve ──► 503 with Retry-After

Streams are relayed one upstream read at a time: the response is started only once the
first event is in hand (so a failure before it is still retried), and a stream that breaks
afterwards ends with an OpenAI error event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from hedge_serving.gateway.balancer import stable_hash
from hedge_serving.gateway.errors import (
    BackendFailure,
    GatewayError,
    NoCapacity,
    UpstreamTimeout,
    error_event,
)
from hedge_serving.gateway.keys import KeyStore
from hedge_serving.gateway.metrics import SERVED_BY_SELF, GatewayMetrics
from hedge_serving.gateway.providers import Endpoint, MissingKey, Provider, make_provider
from hedge_serving.gateway.providers.base import PassthroughRelay, StreamRelay
from hedge_serving.gateway.routing import (
    Backend,
    FallbackReason,
    ProviderSpec,
    Route,
)
from hedge_serving.gateway.upstream import UpstreamPool, UpstreamResponse

log = logging.getLogger("hedge.gateway")

HEADER_SERVED_BY = "x-hedge-served-by"
HEADER_FALLBACK_REASON = "x-hedge-fallback-reason"

_SELF_HEADERS = {HEADER_SERVED_BY: SERVED_BY_SELF}
_SELF_RETRY_STATUSES = frozenset({502, 503})
# A provider answering these cannot serve this request but the next provider may.
_PROVIDER_NEXT_STATUSES = frozenset({401, 403, 404, 408, 409, 429})
_ERROR_EVENT_PREFIX = b'data: {"error"'
_CLIENT_GONE = 499  # nginx's convention, for metrics only


class Balancer(Protocol):
    def pick(
        self, candidates: list[Backend], affinity_key: int | None = None
    ) -> Backend | None: ...


@dataclass(frozen=True, slots=True)
class ProxySettings:
    max_attempts: int = 3  # self-hosted backends tried per request
    connect_timeout_s: float = 2.0  # self-hosted; a silent pod is skipped after this
    provider_connect_timeout_s: float = 10.0
    retry_after_s: int = 2
    affinity_prefix_chars: int = 256


class RequestState:
    """What a request has done so far; read by metrics and the timeout handler."""

    __slots__ = (
        "fallback_reason",
        "model",
        "response",
        "served_by",
        "started",
        "status",
        "upstream_broke",
    )

    def __init__(self, model: str, started: float) -> None:
        self.model = model
        self.started = started
        self.served_by = "gateway"
        self.fallback_reason: str | None = None
        self.status = 0
        self.response: web.StreamResponse | None = None  # set once a stream has started
        self.upstream_broke = False  # a started stream lost its upstream


def affinity_key(endpoint: Endpoint, payload: dict[str, Any], chars: int) -> int | None:
    """Hash of the first `chars` characters of the prompt, or None if there is none."""
    text = ""
    if endpoint is Endpoint.CHAT:
        messages = payload.get("messages")
        if type(messages) is list:
            parts: list[str] = []
            size = 0
            for message in messages:
                if type(message) is not dict:
                    continue
                content = message.get("content")
                if type(content) is str:
                    parts.append(content)
                    size += len(content)
                elif type(content) is list:
                    for part in content:
                        if type(part) is dict and type(part.get("text")) is str:
                            parts.append(part["text"])
                            size += len(part["text"])
                if size >= chars:
                    break
            text = "".join(parts)[:chars]
    elif endpoint is Endpoint.COMPLETIONS:
        prompt = payload.get("prompt")
        if type(prompt) is list and prompt:
            prompt = prompt[0]
        if type(prompt) is str:
            text = prompt[:chars]
        elif type(prompt) is list:  # token ids
            text = ",".join(str(t) for t in prompt[:chars])
    return stable_hash(text) if text else None


class Proxy:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        upstream: UpstreamPool,
        balancer: Balancer,
        metrics: GatewayMetrics,
        keys: KeyStore,
        settings: ProxySettings | None = None,
        provider_factory: Callable[[ProviderSpec, KeyStore], Provider] = make_provider,
    ) -> None:
        self._session = session
        self._upstream = upstream
        self._balancer = balancer
        self._metrics = metrics
        self._keys = keys
        self.settings = settings or ProxySettings()
        self._provider_factory = provider_factory
        self._providers: dict[ProviderSpec, Provider] = {}
        self._provider_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.settings.provider_connect_timeout_s
        )

    async def serve(
        self,
        request: web.BaseRequest,
        route: Route,
        endpoint: Endpoint,
        body: bytes,
        payload: dict[str, Any],
        state: RequestState,
    ) -> web.StreamResponse:
        stream = payload.get("stream") is True
        try:
            async with asyncio.timeout(route.options.request_timeout_s):
                return await self._serve(request, route, endpoint, body, payload, stream, state)
        except TimeoutError:
            message = f"the request took longer than {route.options.request_timeout_s:g}s"
            if state.response is not None:  # a stream already started: end it with an error
                await _end_stream_with(state.response, error_event(message, code="timeout"))
                return state.response
            raise UpstreamTimeout(message) from None

    async def _serve(
        self,
        request: web.BaseRequest,
        route: Route,
        endpoint: Endpoint,
        body: bytes,
        payload: dict[str, Any],
        stream: bool,
        state: RequestState,
    ) -> web.StreamResponse:
        options = route.options
        candidates = [b for b in route.backends if b.breaker.available()]
        reason: FallbackReason | None = None
        if not candidates:
            reason = FallbackReason.UNAVAILABLE
        elif (
            route.fallback
            and options.fallback_on_overload
            and all(b.queue_estimate() > options.max_queue_depth for b in candidates)
        ):
            reason = FallbackReason.OVERLOADED
        failures: list[str] = []
        if reason is None:
            key = (
                affinity_key(endpoint, payload, self.settings.affinity_prefix_chars)
                if len(candidates) > 1 and self.settings.affinity_prefix_chars > 0
                else None
            )
            url_path = "/v1/" + endpoint.value
            for attempt in range(self.settings.max_attempts):
                backend = self._balancer.pick(candidates, key)
                if backend is None:
                    break
                if attempt:
                    self._metrics.retry(route.model)
                try:
                    return await self._self_hosted(
                        request, backend, url_path, body, payload, stream, state
                    )
                except BackendFailure as exc:
                    failures.append(f"{backend.url}: {exc.reason}")
                    candidates = [
                        b for b in candidates if b is not backend and b.breaker.available()
                    ]
            reason = FallbackReason.ERROR if route.backends else FallbackReason.UNAVAILABLE
        if route.fallback and options.falls_back_on(reason):
            response = await self._fallback(
                request, route, endpoint, payload, stream, state, reason
            )
            if response is not None:
                return response
            detail = "no self-hosted backend could serve it and every fallback provider failed"
        else:
            detail = {
                FallbackReason.UNAVAILABLE: "no ready self-hosted backend",
                FallbackReason.OVERLOADED: "every self-hosted backend is full",
                FallbackReason.ERROR: "every self-hosted attempt failed",
            }[reason]
        if failures:
            log.warning("model %s: %s (%s)", route.model, detail, "; ".join(failures))
        raise NoCapacity(
            f"model {route.model!r} cannot be served right now: {detail}",
            headers={"Retry-After": str(self.settings.retry_after_s)},
        )

    async def _self_hosted(
        self,
        request: web.BaseRequest,
        backend: Backend,
        url_path: str,
        body: bytes,
        payload: dict[str, Any],
        stream: bool,
        state: RequestState,
    ) -> web.StreamResponse:
        breaker = backend.breaker
        probe = breaker.acquire()
        verdict = False
        backend.outstanding += 1
        up: UpstreamResponse | None = None
        try:
            try:
                up = await self._upstream.post(backend.url, url_path, body)
                status = up.status
                if status in _SELF_RETRY_STATUSES:
                    raise BackendFailure(f"HTTP {status}", status)
                state.served_by = SERVED_BY_SELF
                if not stream or status != 200:
                    data = await up.read()
                    breaker.record_failure() if status >= 500 else breaker.record_success()
                    verdict = True
                    state.status = status
                    return web.Response(
                        status=status,
                        body=data,
                        headers={"Content-Type": up.content_type, HEADER_SERVED_BY: SERVED_BY_SELF},
                    )
                response = await self._relay(
                    request, up.readany, PassthroughRelay(), state, _SELF_HEADERS
                )
                breaker.record_failure() if state.upstream_broke else breaker.record_success()
                verdict = True
                return response
            except BackendFailure:
                breaker.record_failure()
                verdict = True
                raise
            except (OSError, TimeoutError) as exc:
                breaker.record_failure()
                verdict = True
                raise BackendFailure(type(exc).__name__) from None
        finally:
            backend.outstanding -= 1
            if up is not None:
                up.release()
            if not verdict:
                breaker.release(probe)

    async def _relay(
        self,
        request: web.BaseRequest,
        readany: Callable[[], Awaitable[bytes]],
        relay: StreamRelay,
        state: RequestState,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        """Stream `up` to the client through `relay`.

        A failure before the first event raises `BackendFailure` (the caller moves on); a
        later upstream failure ends the stream with an error event and sets
        `state.upstream_broke`; a client that goes away just ends the relay.
        """
        first = b""
        while not first:
            chunk = await readany()
            if not chunk:
                raise BackendFailure("stream ended before its first event")
            first = relay.feed(chunk)
        if first.startswith(_ERROR_EVENT_PREFIX):
            raise BackendFailure("stream began with an error event")
        response = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **headers},
        )
        await response.prepare(request)
        state.response = response
        state.status = 200
        self._metrics.first_token(state.model, state.served_by, time.perf_counter() - state.started)
        out = first
        while True:
            if out:
                try:
                    await response.write(out)
                except (ConnectionError, aiohttp.ClientError):
                    state.status = _CLIENT_GONE
                    return response
            try:
                chunk = await readany()
            except (aiohttp.ClientError, OSError) as exc:
                log.warning("upstream stream broke after its first event: %s", type(exc).__name__)
                state.upstream_broke = True
                await _end_stream_with(response, error_event("the upstream stream broke"))
                return response
            if not chunk:
                break
            out = relay.feed(chunk)
        tail = relay.finish()
        if tail.startswith(_ERROR_EVENT_PREFIX):
            state.upstream_broke = True
        await _end_stream_with(response, tail)
        return response

    def _provider(self, spec: ProviderSpec) -> Provider:
        provider = self._providers.get(spec)
        if provider is None:
            provider = self._providers[spec] = self._provider_factory(spec, self._keys)
        return provider

    async def _fallback(
        self,
        request: web.BaseRequest,
        route: Route,
        endpoint: Endpoint,
        payload: dict[str, Any],
        stream: bool,
        state: RequestState,
        reason: FallbackReason,
    ) -> web.StreamResponse | None:
        for spec in route.fallback:
            try:
                provider = self._provider(spec)
            except ValueError as exc:
                log.warning("model %s: fallback %s misconfigured: %s", route.model, spec.label, exc)
                continue
            why = provider.unsupported(endpoint, payload)
            if why is not None:
                log.info("model %s: fallback %s skipped: %s", route.model, provider.label, why)
                continue
            try:
                call = provider.build(endpoint, payload, stream)
            except MissingKey as exc:
                log.warning(
                    "model %s: fallback %s has no API key (%s)", route.model, provider.label, exc
                )
                continue
            self._metrics.fallback(route.model, provider.label, reason.value)
            headers = {HEADER_SERVED_BY: provider.label, HEADER_FALLBACK_REASON: reason.value}
            state.served_by = provider.label
            state.fallback_reason = reason.value
            try:
                async with self._session.post(
                    call.url, data=call.body, headers=call.headers, timeout=self._provider_timeout
                ) as up:
                    status = up.status
                    if status >= 400:
                        data = await up.read()
                        if status >= 500 or status in _PROVIDER_NEXT_STATUSES:
                            # The body is not passed on: it may describe our credentials.
                            log.warning(
                                "model %s: fallback %s answered HTTP %d",
                                route.model,
                                provider.label,
                                status,
                            )
                            continue
                        state.status = status
                        return web.Response(
                            status=status,
                            body=provider.translate_error(status, data),
                            headers={"Content-Type": "application/json", **headers},
                        )
                    if stream:
                        return await self._relay(
                            request, up.content.readany, provider.relay(payload), state, headers
                        )
                    data = provider.translate_body(await up.read())
                    state.status = status
                    return web.Response(
                        status=status,
                        body=data,
                        headers={"Content-Type": "application/json", **headers},
                    )
            except BackendFailure as exc:
                log.warning(
                    "model %s: fallback %s failed: %s", route.model, provider.label, exc.reason
                )
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                log.warning(
                    "model %s: fallback %s failed: %s",
                    route.model,
                    provider.label,
                    type(exc).__name__,
                )
        state.served_by = "gateway"
        state.fallback_reason = None
        return None


async def _end_stream_with(response: web.StreamResponse, data: bytes) -> None:
    try:
        if data:
            await response.write(data)
        await response.write_eof()
    except (ConnectionError, RuntimeError):
        pass  # the client is gone


__all__ = [
    "HEADER_FALLBACK_REASON",
    "HEADER_SERVED_BY",
    "GatewayError",
    "Proxy",
    "ProxySettings",
    "RequestState",
    "affinity_key",
]
