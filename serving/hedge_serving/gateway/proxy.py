"""Serving one routed request: self-hosted backends first, then the fallback providers.

    pick a backend (balancer) ──► send the client's request (chat and completions: always
        │                          as a stream, re-assembled for clients that did not ask)
        │  connection error, 5xx, a stall (no first token in time, silence between tokens),
        │  a cut stream, or an engine error event: breaker failure, retry on another
        │  backend while nothing has reached the client
        │  a client error (4xx, or an error event naming one): straight back to the client,
        │  breaker untouched, no fallback
        ▼
    no ready backend and no fallback taking it (a model scaling from zero) ──► held until
        │  the routing table shows a ready backend (woken by table updates, no polling), up
        │  to the route's hold time; then 503 with Retry-After
        ▼
    no ready backend (Unavailable) / all queues full (Overloaded) / all attempts failed
    (Error) ──► providers in `spec.fallback` order that serve the endpoint, translated by
        │        their wire format
        ▼
    nothing could serve ──► 503 with Retry-After (naming the endpoint if no provider has it)

Streams are relayed one upstream read at a time: the response is started only once the
first event is in hand (so a failure before it is still retried), and a stream that breaks
or stalls afterwards ends with an OpenAI error event. Every request keeps a record of its
time to first token and the gaps between reads (`RequestState`), whether the client
streamed or not, for the metrics the autoscaler and rollout analysis read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from hedge_core.api import Priority
from hedge_serving.gateway.admission import Quotas
from hedge_serving.gateway.attempts import (
    UNJUDGED,
    Health,
    Step,
    StreamBroke,
    classify,
)
from hedge_serving.gateway.balancer import stable_hash
from hedge_serving.gateway.egress import EgressPolicy
from hedge_serving.gateway.endpoints import MODE, Endpoint, Mode
from hedge_serving.gateway.errors import (
    BackendFailure,
    FallbackBudgetExhausted,
    GatewayError,
    NoCapacity,
    RateLimited,
    UpstreamFailed,
    UpstreamTimeout,
    error_event,
)
from hedge_serving.gateway.fairness import Action, when_full
from hedge_serving.gateway.fallback_limits import FallbackLimits, admit_fallback
from hedge_serving.gateway.keys import KeyStore
from hedge_serving.gateway.metrics import SERVED_BY_SELF, GatewayMetrics
from hedge_serving.gateway.providers import MissingKey, Provider, make_provider
from hedge_serving.gateway.providers.base import PassthroughRelay, StreamRelay
from hedge_serving.gateway.revisions import SUCCESS, Split
from hedge_serving.gateway.routing import (
    Backend,
    Demand,
    DemandState,
    FallbackReason,
    ProviderSpec,
    Route,
    RoutingTable,
)
from hedge_serving.gateway.streams import (
    EngineError,
    IncompleteStream,
    Reassembler,
    can_reassemble,
    classify_error,
    error_event_of,
    last_event_end,
    streamed_body,
)
from hedge_serving.gateway.tenants import ANONYMOUS, Identity
from hedge_serving.gateway.upstream import Answer, ResponseTooLarge, Upstream, UpstreamStalled
from hedge_serving.gateway.usage import (
    MeteredRelay,
    answer_tokens,
    estimate_answer_tokens,
    estimate_prompt_tokens,
)

log = logging.getLogger("hedge.gateway")

HEADER_SERVED_BY = "x-hedge-served-by"
HEADER_FALLBACK_REASON = "x-hedge-fallback-reason"

_SELF_HEADERS = {HEADER_SERVED_BY: SERVED_BY_SELF}
_JSON = "application/json"
# A provider answering these cannot serve this request but the next provider may.
_PROVIDER_NEXT_STATUSES = frozenset({401, 403, 404, 408, 409, 429})
_CLIENT_GONE = 499  # nginx's convention, for metrics only
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
# Endpoints whose streams report usage when asked (`stream_options.include_usage`).
_USAGE_ENDPOINTS = (Endpoint.CHAT, Endpoint.COMPLETIONS)
_MAX_ERROR_BYTES = 1024 * 1024


class Balancer(Protocol):
    def pick(
        self, candidates: list[Backend], affinity_key: int | None = None
    ) -> Backend | None: ...


@dataclass(frozen=True, slots=True)
class ProxySettings:
    max_attempts: int = 3  # self-hosted backends tried per request
    connect_timeout_s: float = 2.0  # self-hosted; a pod that does not accept is skipped
    provider_connect_timeout_s: float = 10.0
    retry_after_s: int = 2
    affinity_prefix_chars: int = 256
    # A hung engine: no first token within base + per 1k prompt tokens (estimated from the
    # body's size) + per request queued on the backend, or no bytes for `idle_timeout_s`.
    first_token_timeout_s: float = 10.0
    first_token_timeout_per_1k_tokens_s: float = 1.0
    first_token_timeout_per_queued_s: float = 1.0
    idle_timeout_s: float = 15.0
    # Endpoints that answer in one piece (pooling, tokenizer): the whole answer's head.
    response_head_timeout_s: float = 30.0
    max_response_bytes: int = 64 * 1024 * 1024  # one answer held in memory
    # Where provider calls may go (see `egress`): the public providers only, by default.
    egress: EgressPolicy = field(default_factory=EgressPolicy)
    fallback_limits: FallbackLimits = field(default_factory=FallbackLimits)
    # What this gateway may spend of a budget on its own count (1 / gateway replicas).
    fallback_budget_share: float = 1.0

    def first_token_limit(self, body_bytes: int, queued: float) -> float:
        tokens_k = body_bytes / 4000  # ~4 bytes of JSON per prompt token, rounding up
        return (
            self.first_token_timeout_s
            + self.first_token_timeout_per_1k_tokens_s * tokens_k
            + self.first_token_timeout_per_queued_s * queued
        )

    def head_limit(self, body_bytes: int) -> float:
        return self.response_head_timeout_s + self.first_token_timeout_per_1k_tokens_s * (
            body_bytes / 4000
        )


class RequestState:
    """What a request has done so far: read by metrics, the timeout handler and the demand
    counts the autoscaler reads (`arrive`, `move`, `leave`)."""

    __slots__ = (
        "backend",
        "demand",
        "demand_state",
        "fallback_reason",
        "first_token_at",
        "gap_max",
        "gap_sum",
        "headers",
        "identity",
        "last_read_at",
        "metered",
        "model",
        "priority",
        "reads",
        "response",
        "served_by",
        "started",
        "status",
        "tokens",
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
        self.backend: str | None = None  # the last self-hosted backend tried
        self.first_token_at: float | None = None  # perf_counter() of the first event read
        self.last_read_at = 0.0
        self.reads = 0  # upstream reads after the first event (about one per token)
        self.gap_sum = 0.0
        self.gap_max = 0.0
        self.demand: Demand | None = None
        self.demand_state = DemandState.SELF_HOSTED
        self.identity: Identity = ANONYMOUS  # who sent it (its ClientPolicy's tenant, if any)
        # For the answer, whoever serves it (x-ratelimit-*); replaced, never changed in place.
        self.headers: Mapping[str, str] = _NO_HEADERS
        self.metered = False  # count the tokens the answer uses (`tokens`)
        self.tokens: int | None = None  # tokens used, reported or estimated (when metered)
        self.priority = Priority.STANDARD  # its ClientPolicy's, maybe lowered by a header

    def arrive(self, demand: Demand) -> None:
        """The request is for `demand`'s ModelDeployment: one arrival, in flight self-hosted."""
        self.demand = demand
        demand.arrivals += 1
        demand.in_flight[DemandState.SELF_HOSTED] += 1

    def move(self, to: DemandState) -> None:
        demand = self.demand
        if demand is not None and to != self.demand_state:
            demand.in_flight[self.demand_state] -= 1
            demand.in_flight[to] += 1
            self.demand_state = to

    def leave(self) -> None:
        demand = self.demand
        if demand is not None:
            demand.in_flight[self.demand_state] -= 1
            self.demand = None

    def token(self) -> None:
        """One upstream read of a stream: the first is the first token, the rest are gaps."""
        now = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = now
        else:
            gap = now - self.last_read_at
            self.reads += 1
            self.gap_sum += gap
            if gap > self.gap_max:
                self.gap_max = gap
        self.last_read_at = now

    def restart(self) -> None:
        """A new attempt: timings of a failed one do not count."""
        self.first_token_at = None
        self.reads = 0
        self.gap_sum = self.gap_max = 0.0

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started

    @property
    def mean_gap(self) -> float | None:
        return self.gap_sum / self.reads if self.reads else None


def _text_parts(value: Any, out: list[str], budget: int) -> int:
    """Append the text of a prompt-like value (str, content parts, messages) to `out`."""
    if budget <= 0:
        return budget
    if type(value) is str:
        out.append(value)
        return budget - len(value)
    if type(value) is list:
        for item in value:
            budget = _text_parts(item, out, budget)
            if budget <= 0:
                break
        return budget
    if type(value) is dict:
        for key in ("content", "text", "input"):
            if key in value:
                return _text_parts(value[key], out, budget)
    return budget


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
    elif endpoint is Endpoint.MESSAGES or endpoint is Endpoint.RESPONSES:
        # Anthropic-style: system, then messages; Responses: instructions, then input.
        out: list[str] = []
        budget = chars
        for key in ("system", "instructions", "messages", "input"):
            if key in payload:
                budget = _text_parts(payload[key], out, budget)
        text = "".join(out)[:chars]
    return stable_hash(text) if text else None


class Proxy:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        upstream: Upstream,
        balancer: Balancer,
        metrics: GatewayMetrics,
        keys: KeyStore,
        settings: ProxySettings | None = None,
        provider_factory: Callable[[ProviderSpec, KeyStore], Provider] = make_provider,
        table: RoutingTable | None = None,
    ) -> None:
        self._session = session
        self._table = table  # held requests wait on its updates
        self._upstream = upstream
        self._balancer = balancer
        self._metrics = metrics
        self._keys = keys
        self.settings = settings or ProxySettings()
        self._provider_factory = provider_factory
        self._providers: dict[ProviderSpec, Provider] = {}
        self.quotas: Quotas | None = None  # tenants' limits (start_gateway sets it)

    def prune_providers(self, specs: Iterable[ProviderSpec]) -> None:
        """Forget providers no route lists any more (the routing table changed)."""
        keep = set(specs)
        for spec in [s for s in self._providers if s not in keep]:
            del self._providers[spec]

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
        if not route.backends and options.hold_s > 0:
            # Scaling from zero (or every pod restarting): wait unless the fallback takes it.
            spills = bool(_spill_to(route, state)) and options.fallback_on_unavailable
            if not spills or self._budget_spent(route) is not None:
                held = await self._hold(route, state)
                if held is None and not spills:
                    raise self._no_capacity(
                        route,
                        state,
                        f"no engine pod became ready within {options.hold_s:g}s (it may be "
                        "starting from zero)",
                    )
                # Still nothing with a fallback: it spills if the budget's window has turned
                # meanwhile, else 429 (below).
                route = held or route
                candidates = [b for b in route.backends if b.breaker.available()]
        if not candidates:
            reason = FallbackReason.UNAVAILABLE
        elif (
            # Only then can being full change anything: otherwise it queues at the pods.
            (
                state.priority is Priority.SHEDDABLE
                or (route.fallback and options.fallback_on_overload)
            )
            and all(b.queue_estimate() > options.max_queue_depth for b in candidates)
        ):
            reason = self._when_full(route, state)
        failures: list[str] = []
        if reason is None:
            key = (
                affinity_key(endpoint, payload, self.settings.affinity_prefix_chars)
                if len(candidates) > 1 and self.settings.affinity_prefix_chars > 0
                else None
            )
            split = route.split
            for attempt in range(self.settings.max_attempts):
                pool = candidates
                if split is not None:
                    pool = _split_pool(split, candidates, attempt)
                backend = self._balancer.pick(pool, key)
                if backend is None:
                    break
                if attempt:
                    self._metrics.retry(route.label)
                    state.restart()
                try:
                    return await self._self_hosted(
                        request, backend, endpoint, body, payload, stream, state
                    )
                except BackendFailure as exc:
                    failures.append(f"{backend.url}: {exc.reason}")
                    candidates = [
                        b for b in candidates if b is not backend and b.breaker.available()
                    ]
            reason = FallbackReason.ERROR if route.backends else FallbackReason.UNAVAILABLE
        skipped: list[str] = []
        if _spill_to(route, state) and options.falls_back_on(reason):
            budget = route.demand.budget
            share = self.settings.fallback_budget_share
            if await budget.admit_after_reservations(time.time(), share) is not None:
                if failures:
                    log.warning("model %s: %s", route.model, "; ".join(failures))
                raise self._budget_error(route)
            refused: list[str] = []
            response = await self._fallback(
                request, route, endpoint, payload, stream, state, reason, skipped, refused,
                len(body),
            )  # fmt: skip
            if response is not None:
                return response
            detail = "no self-hosted backend could serve it and every fallback provider failed"
            if refused and len(skipped) + len(refused) == len(route.fallback):
                detail = (
                    "no self-hosted backend could serve it and the gateway's egress policy "
                    f"does not allow its fallback provider(s) ({'; '.join(refused + skipped)})"
                )
            elif len(skipped) == len(route.fallback):
                detail = (
                    "no self-hosted backend could serve it and no fallback provider serves "
                    f"{endpoint.value} ({'; '.join(skipped)})"
                )
        else:
            detail = {
                FallbackReason.UNAVAILABLE: "no ready self-hosted backend",
                FallbackReason.OVERLOADED: "every self-hosted backend is full",
                FallbackReason.ERROR: "every self-hosted attempt failed",
            }[reason]
        if failures:
            log.warning("model %s: %s (%s)", route.model, detail, "; ".join(failures))
        raise self._no_capacity(route, state, detail)

    def _when_full(self, route: Route, state: RequestState) -> FallbackReason | None:
        """Every self-hosted backend is over its queue limit: by the request's priority,
        spill (OVERLOADED), queue at the pods (None) or refuse a sheddable one (429). A spent
        budget: the request queues at the pods rather than being refused."""
        tenant = state.identity.tenant
        action = when_full(
            state.priority,
            fallback_allowed=tenant is None or tenant.fallback_allowed,
            has_fallback=bool(route.fallback) and route.options.fallback_on_overload,
            budget_open=self._budget_spent(route) is None,
            can_hold=False,  # holding for capacity in fair order: not applied yet
        )
        if action is Action.SPILL:
            return FallbackReason.OVERLOADED
        if action is Action.REFUSE:
            self._metrics.shed(route.label, state.priority.value)
            raise RateLimited(
                f"model {route.model!r} is at capacity and this request is {state.priority.value}"
                ": sheddable requests are refused first while every self-hosted backend is full",
                code="capacity_shed",
                headers={**state.headers, "Retry-After": str(self.settings.retry_after_s)},
            )
        return None

    def _no_capacity(self, route: Route, state: RequestState, detail: str) -> GatewayError:
        """The error for a request nothing could serve: a 503, or a 429 for a tenant whose
        ClientPolicy keeps it off the route's fallback providers (its SDK backs off; never
        the paid provider)."""
        message = f"model {route.model!r} cannot be served right now: {detail}"
        retry = str(self.settings.retry_after_s)
        tenant = state.identity.tenant
        if route.fallback and tenant is not None and not tenant.fallback_allowed:
            return RateLimited(
                f"{message}, and the ClientPolicy {tenant.label} does not allow the fallback "
                "providers",
                code="fallback_not_allowed",
                headers={**state.headers, "Retry-After": retry},
            )
        return NoCapacity(message, headers={"Retry-After": retry})

    def _budget_spent(self, route: Route) -> tuple[float, str] | None:
        return route.demand.budget.blocked(time.time(), self.settings.fallback_budget_share)

    def _budget_error(self, route: Route) -> FallbackBudgetExhausted:
        blocked = self._budget_spent(route)
        wait, why = blocked if blocked is not None else (1.0, "spent")
        ns, name = route.deployment
        owner = f"{ns}/{name}" if ns else name
        return FallbackBudgetExhausted(
            f"model {route.model!r} cannot be served right now: no self-hosted capacity, and "
            f"the fallback budget of {owner} is {why}; retry in {math.ceil(wait)}s",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )

    async def _hold(self, route: Route, state: RequestState) -> Route | None:
        """Wait for the route to get a ready backend, up to its hold time; the route as it
        is then, or None. Woken by routing-table updates only."""
        table = self._table
        if table is None:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + route.options.hold_s
        state.move(DemandState.HELD)
        try:
            while True:
                current = table.current(route)  # the same ModelDeployment, never another's
                if current is None:
                    return None
                if any(b.breaker.available() for b in current.backends):
                    return current
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                try:
                    await asyncio.wait_for(asyncio.shield(table.changed()), remaining)
                except TimeoutError:
                    return None
        finally:
            state.move(DemandState.SELF_HOSTED)

    # -- self-hosted ------------------------------------------------------------------------

    async def _self_hosted(
        self,
        request: web.BaseRequest,
        backend: Backend,
        endpoint: Endpoint,
        body: bytes,
        payload: dict[str, Any],
        stream: bool,
        state: RequestState,
    ) -> web.StreamResponse:
        s = self.settings
        mode = MODE[endpoint]
        reassemble = mode is Mode.GENERATE and not stream and can_reassemble(payload)
        upstream_stream = stream and mode is not Mode.UNARY
        first_s: float | None = None
        idle_s: float | None = None
        asked_usage = False  # the gateway asked the engine for a stream's usage
        if reassemble:
            body = streamed_body(body, payload)
            upstream_stream = True
        elif state.metered and upstream_stream and endpoint in _USAGE_ENDPOINTS:
            options = payload.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage") is True):
                # The tenant's tokens are counted from the usage the stream ends with: ask
                # vLLM for it, and take that chunk out before the client sees it.
                asked_usage = True
                opts = {**(options if isinstance(options, dict) else {}), "include_usage": True}
                body = json.dumps({**payload, "stream_options": opts}).encode()
        if upstream_stream:
            first_s = s.first_token_limit(len(body), backend.queue_estimate())
            idle_s = s.idle_timeout_s
        elif mode is Mode.UNARY:
            first_s = idle_s = s.head_limit(len(body))
        # else: a plain non-streamed generation; only the request timeout bounds it.
        probe = backend.breaker.acquire()
        judged = UNJUDGED  # until the attempt ends with a status or an exception
        backend.outstanding += 1
        state.backend = backend.url
        started = time.perf_counter()
        up: Answer | None = None
        try:
            try:
                up = await self._upstream.post(backend.url, endpoint.value, body, first_s, idle_s)
                status = up.status
                if status >= 300:
                    err = classify_error(status, await up.read(_MAX_ERROR_BYTES))
                    judged = classify(status)
                    if judged[0].step is Step.PASS:
                        return self._client_error(err, state)
                    raise BackendFailure(f"HTTP {status}", status)
                state.served_by = SERVED_BY_SELF
                if upstream_stream and up.content_type.startswith("text/event-stream"):
                    if reassemble:
                        answer = await self._reassembled(up, endpoint, state)
                        judged = classify(status)
                        return answer
                    relay: StreamRelay = PassthroughRelay(endpoint)
                    meter = MeteredRelay(relay, asked_usage) if state.metered else None
                    try:
                        response = await self._relay(
                            request, up.readany, meter or relay, state, _SELF_HEADERS,
                            classify=True,
                        )  # fmt: skip
                    finally:
                        if meter is not None:
                            state.tokens = meter.charge(estimate_prompt_tokens(len(body)))
                    judged = classify(StreamBroke() if state.upstream_broke else status)
                    return response
                try:
                    data = await up.read(s.max_response_bytes)
                except ResponseTooLarge as exc:
                    judged = classify(exc, whole_answer=True)
                    raise UpstreamFailed(f"the model's answer is too large: {exc}") from None
                judged = classify(status)
                state.status = status
                if state.metered:
                    state.tokens = answer_tokens(data) or (
                        estimate_prompt_tokens(len(body)) + estimate_answer_tokens(data)
                    )
                return web.Response(
                    status=status,
                    body=data,
                    headers={
                        "Content-Type": up.content_type,
                        HEADER_SERVED_BY: SERVED_BY_SELF,
                        **state.headers,
                    },
                )
            except EngineError as err:  # an error event before anything reached the client
                judged = classify(err)
                if judged[0].step is Step.PASS:
                    return self._client_error(err, state)
                raise BackendFailure(f"error event: {err.message[:200]}", err.status) from None
            except UpstreamStalled as exc:
                judged = classify(exc)
                log.warning("backend %s stalled: %s", backend.url, exc)
                raise BackendFailure(f"stalled ({exc})") from None
            except (OSError, IncompleteStream, ValueError, ResponseTooLarge) as exc:
                judged = classify(exc)
                raise BackendFailure(str(exc)[:200] or type(exc).__name__) from None
        finally:
            verdict, outcome = judged
            if outcome is not None:
                _count(backend, outcome, state, started)
            backend.outstanding -= 1
            if up is not None:
                up.release()
            _tell_breaker(backend, verdict.breaker, probe)

    def _client_error(self, err: EngineError, state: RequestState) -> web.Response:
        state.served_by = SERVED_BY_SELF
        state.status = err.status
        return web.Response(
            status=err.status,
            body=err.body,
            headers={"Content-Type": _JSON, HEADER_SERVED_BY: SERVED_BY_SELF, **state.headers},
        )

    async def _reassembled(
        self, up: Answer, endpoint: Endpoint, state: RequestState
    ) -> web.Response:
        """Read the engine's stream to its end and answer as vLLM does unstreamed."""
        assembler = Reassembler(endpoint is Endpoint.CHAT, self.settings.max_response_bytes)
        readany = up.readany
        while not assembler.done:
            chunk = await readany()
            if not chunk:
                break
            state.token()
            try:
                assembler.feed(chunk)
            except ResponseTooLarge as exc:
                raise UpstreamFailed(f"the model's answer is too large: {exc}") from None
        data = assembler.result()
        if state.metered:
            state.tokens = answer_tokens(data)
        if state.first_token_at is not None:
            ttft = state.first_token_at - state.started
            self._metrics.first_token(state.model, state.served_by, ttft)
        state.status = 200
        return web.Response(
            status=200, body=data, headers={"Content-Type": _JSON, **_SELF_HEADERS, **state.headers}
        )

    async def _relay(
        self,
        request: web.BaseRequest,
        readany: Callable[[], Awaitable[bytes]],
        relay: StreamRelay,
        state: RequestState,
        headers: dict[str, str],
        classify: bool = False,
    ) -> web.StreamResponse:
        """Stream the upstream to the client through `relay`.

        A failure before the first event raises `BackendFailure`, or `EngineError` when
        `classify` is set and the first event is an error (the caller decides whose); a
        later upstream failure or stall ends the stream with an error event and sets
        `state.upstream_broke`; a client that goes away just ends the relay.
        """
        first = b""
        while not first:
            chunk = await readany()
            if not chunk:
                raise BackendFailure("stream ended before its first event")
            state.token()
            first = relay.feed(chunk)
        end = last_event_end(first[:4096]) or len(first)
        err = error_event_of(first[:end])
        if err is not None:
            if classify:
                raise err
            raise BackendFailure("stream began with an error event")
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                **headers,
                **state.headers,
            },
        )
        await response.prepare(request)
        state.response = response
        state.status = 200
        if state.first_token_at is not None:
            self._metrics.first_token(
                state.model, state.served_by, state.first_token_at - state.started
            )
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
                if chunk:
                    state.token()
                    out = relay.feed(chunk)
            except UpstreamStalled as exc:
                log.warning("upstream stream stalled after its first event: %s", exc)
                state.upstream_broke = True
                message = f"the model stopped answering: {exc}"
                await _end_stream_with(response, error_event(message, code="stream_stalled"))
                return response
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                log.warning("upstream stream broke after its first event: %s", type(exc).__name__)
                state.upstream_broke = True
                await _end_stream_with(response, error_event("the upstream stream broke"))
                return response
            if not chunk:
                break
        tail = relay.finish()
        if error_event_of(tail) is not None:
            state.upstream_broke = True
        await _end_stream_with(response, tail)
        return response

    # -- fallback ---------------------------------------------------------------------------

    @staticmethod
    def _spent(route: Route, provider: str, tokens: int) -> int:
        """What a provider spent (reported or estimated), for the tokens metric; the budget
        is charged when the request settles its reservation."""
        if tokens > 0:
            demand = route.demand
            demand.fallback_tokens[provider] = demand.fallback_tokens.get(provider, 0) + tokens
        return max(0, tokens)

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
        skipped: list[str],
        refused: list[str],
        body_bytes: int,
    ) -> web.StreamResponse | None:
        s = self.settings
        budget = route.demand.budget
        payload, need = admit_fallback(
            endpoint, payload, body_bytes, s.fallback_limits, budget.spec is not None
        )
        # Reserved at admission (no await since the budget check), settled on what the
        # providers spent, reported or estimated, however the request ends.
        reservation = budget.reserve(need)
        spent = [0]
        ticket = None
        tenant = state.identity.tenant
        if tenant is not None and tenant.fallback is not None and self.quotas is not None:
            try:  # the tenant's own ceiling on fallback tokens
                ticket = await self.quotas.admit_fallback(tenant, route.model, need)
            except RateLimited:
                budget.settle(reservation, 0, time.time())
                raise
        try:
            return await self._try_providers(
                request, route, endpoint, payload, stream, state, reason, skipped, refused,
                estimate_prompt_tokens(body_bytes), spent,
            )  # fmt: skip
        finally:
            budget.settle(reservation, spent[0], time.time())
            if state.metered:
                state.tokens = (state.tokens or 0) + spent[0]
            if ticket is not None and self.quotas is not None:
                self.quotas.settle(ticket, spent[0])

    async def _try_providers(
        self,
        request: web.BaseRequest,
        route: Route,
        endpoint: Endpoint,
        payload: dict[str, Any],
        stream: bool,
        state: RequestState,
        reason: FallbackReason,
        skipped: list[str],
        refused: list[str],
        prompt_tokens: int,
        spent: list[int],
    ) -> web.StreamResponse | None:
        s = self.settings
        stream = stream and MODE[endpoint] is not Mode.UNARY
        # Providers' generations are bounded by the request timeout only: a reasoning model
        # may think for minutes before its first visible token, streamed or not. Answers in
        # one piece (embeddings) get the response-head limit.
        read_s = s.head_limit(0) if MODE[endpoint] is Mode.UNARY else None
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=s.provider_connect_timeout_s, sock_read=read_s
        )
        options = payload.get("stream_options")
        client_usage = isinstance(options, dict) and options.get("include_usage") is True
        ask_usage = (
            stream
            and endpoint in (Endpoint.CHAT, Endpoint.COMPLETIONS)
            and not client_usage
            and (route.demand.budget.spec is not None or state.metered)
        )
        if ask_usage:
            # A budget counts the tokens a stream reports at its end: ask for them (and take
            # that chunk out again before the client sees it). Only then: an older provider
            # API (Azure before 2024-09) may refuse stream_options.
            payload = {**payload, "stream_options": {**(options or {}), "include_usage": True}}
        for spec in route.fallback:
            try:
                provider = self._provider(spec)
            except ValueError as exc:
                log.warning("model %s: fallback %s misconfigured: %s", route.model, spec.label, exc)
                skipped.append(f"{spec.label}: misconfigured")
                continue
            why = provider.unsupported(endpoint, payload)
            if why is not None:
                log.info("model %s: fallback %s skipped: %s", route.model, provider.label, why)
                skipped.append(why)
                continue
            try:
                call = provider.build(endpoint, payload, stream)
            except MissingKey as exc:
                log.warning(
                    "model %s: fallback %s has no API key (%s)", route.model, provider.label, exc
                )
                continue
            why = s.egress.url_refused(call.url, route.deployment[0])
            if why is not None:
                log.warning(
                    "model %s: fallback %s refused by the egress policy: %s",
                    route.label,
                    provider.label,
                    why,
                )
                refused.append(f"{provider.label}: {why}")
                continue
            self._metrics.fallback(route.label, provider.label, reason.value)
            headers = {HEADER_SERVED_BY: provider.label, HEADER_FALLBACK_REASON: reason.value}
            state.move(DemandState.FALLBACK)
            state.served_by = provider.label
            state.fallback_reason = reason.value
            state.restart()
            try:
                # Never follow a redirect: the key headers would go to another origin, and
                # a 302 turns the POST into a GET of whatever the Location names.
                async with self._session.post(
                    call.url,
                    data=call.body,
                    headers=call.headers,
                    timeout=timeout,
                    allow_redirects=False,
                ) as up:
                    status = up.status
                    if 300 <= status < 400:
                        log.warning(
                            "model %s: fallback %s answered HTTP %d (a redirect: not followed)",
                            route.model,
                            provider.label,
                            status,
                        )
                        continue
                    if status >= 400:
                        data = await _read_limited(up, _MAX_ERROR_BYTES)
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
                            body=provider.translate_error(endpoint, status, data),
                            headers={"Content-Type": _JSON, **headers, **state.headers},
                        )
                    if stream:
                        meter = MeteredRelay(provider.relay(endpoint, payload), ask_usage)
                        try:
                            return await self._relay(
                                request, up.content.readany, meter, state, headers
                            )
                        finally:
                            # As reported, else estimated from what was relayed (a client
                            # that left early, a provider that sends no usage).
                            spent[0] += self._spent(
                                route, provider.label, meter.charge(prompt_tokens)
                            )
                    raw = await _read_limited(up, s.max_response_bytes)
                    data = provider.translate_body(endpoint, raw)
                    tokens = answer_tokens(data) or prompt_tokens + estimate_answer_tokens(data)
                    spent[0] += self._spent(route, provider.label, tokens)
                    state.status = status
                    return web.Response(
                        status=status,
                        body=data,
                        headers={"Content-Type": _JSON, **headers, **state.headers},
                    )
            except BackendFailure as exc:
                log.warning(
                    "model %s: fallback %s failed: %s", route.model, provider.label, exc.reason
                )
            except (aiohttp.ClientError, OSError, ValueError, ResponseTooLarge) as exc:
                log.warning(
                    "model %s: fallback %s failed: %s",
                    route.model,
                    provider.label,
                    type(exc).__name__,
                )
        state.served_by = "gateway"
        state.fallback_reason = None
        return None


def _spill_to(route: Route, state: RequestState) -> tuple[ProviderSpec, ...]:
    """The fallback providers this request may spill to: none for a tenant whose
    ClientPolicy does not allow the fallback."""
    tenant = state.identity.tenant
    if tenant is not None and not tenant.fallback_allowed:
        return ()
    return route.fallback


def _count(backend: Backend, outcome: int, state: RequestState, started: float) -> None:
    """One attempt in its revision's counters, with its timings when it succeeded."""
    counters = backend.counters
    if counters is not None:
        # Per attempt, a retried failure included: the analysis judges the revision, not
        # whether the client was saved.
        counters.outcomes[outcome] += 1
        if outcome == SUCCESS and state.first_token_at is not None:
            counters.ttft.observe(state.first_token_at - started)
            if state.reads:
                counters.itl.observe(state.gap_sum / state.reads)


def _tell_breaker(backend: Backend, health: Health, probe: bool) -> None:
    breaker = backend.breaker
    if health is Health.SUCCESS or (health is Health.ALIVE and probe):
        breaker.record_success()
    elif health is Health.FAILURE:
        breaker.record_failure()
    else:
        breaker.release(probe)


def _split_pool(split: Split, candidates: list[Backend], attempt: int) -> list[Backend]:
    """The backends one attempt may go to while a canary runs: the first attempt goes to the
    canary's backends or the others as the split says (to either side when the other has
    none available); a retry goes to a revision other than the canary whenever one can
    take it, so a failing canary costs its clients nothing."""
    canary = split.canary
    others = [b for b in candidates if b.revision != canary]
    if attempt:
        return others or candidates
    if not others or len(others) == len(candidates):
        return candidates
    if split.to_canary():
        return [b for b in candidates if b.revision == canary]
    return others


async def _read_limited(up: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or `ResponseTooLarge` past `limit` bytes (never more in memory)."""
    if up.content_length is not None and up.content_length > limit:
        raise ResponseTooLarge(limit)
    parts: list[bytes] = []
    size = 0
    async for chunk in up.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise ResponseTooLarge(limit)
        parts.append(chunk)
    return b"".join(parts)


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
