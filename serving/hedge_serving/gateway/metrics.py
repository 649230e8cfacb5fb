"""Prometheus metrics of the gateway, on a registry of its own.

Label values are bounded: `model` is a routed model name (or `_unknown`), `served_by` is
`self-hosted`, a provider label or `gateway` (answered by the gateway itself), `status`
an HTTP status, `backend` a backend URL currently in the routing table (series of removed
backends disappear because they are read from the table at scrape time), `reason` one of
`Unavailable`, `Overloaded`, `Error`.

Per-backend gauges cost nothing per request: a collector reads the live counters when
Prometheus scrapes. Labelled children of the counters and histograms are cached, so the
request path does a dict lookup and an increment; when a model leaves the routing table its
series (and cache entries) are removed, so memory follows the table, not its history.

Demand per ModelDeployment (`hedge_gateway_demand_in_flight{namespace,model_deployment,state}`,
`hedge_gateway_demand_arrivals_total{namespace,model_deployment}`, the series the operator's
autoscaler sums over the gateway replicas, docs/contracts.md) is read at scrape time from the
routing table's `Demand` objects, which the request path bumps as plain integers.

Per revision (`hedge_gateway_revision_requests_total{namespace,model_deployment,revision,
outcome}`, `..._revision_ttft_seconds`, `..._revision_itl_seconds`), the numbers the rollout
analysis judges, are read the same way from the table's `RevisionCounters`.

Time to first token and the inter-token gap are observed for every request that reached
a model, streamed or not (the gateway reads every generation as a stream); the gap is the
request's mean time between upstream reads after the first, one observation per request.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from hedge_core.contracts import (
    DEMAND_ARRIVALS,
    DEMAND_IN_FLIGHT,
    DEMAND_STATES,
    FALLBACK_TOKENS,
    GATEWAY_SERIES,
    OUTCOMES,
    REVISION_ITL,
    REVISION_REQUESTS,
    REVISION_TTFT,
    TENANT_RATE_LIMITED,
    TENANT_REQUESTS,
    TENANT_TOKENS,
)
from hedge_core.contracts import SERVED_BY_GATEWAY as SERVED_BY_GATEWAY
from hedge_core.contracts import SERVED_BY_SELF as SERVED_BY_SELF
from hedge_serving.gateway.routing import RoutingTable

UNKNOWN_MODEL = "_unknown"

_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 5.0)


class _TableCollector(Collector):
    def __init__(self, table: RoutingTable) -> None:
        self._table = table

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            "hedge_gateway_backend_in_flight",
            "Requests the gateway has outstanding on each self-hosted backend.",
            labels=["model", "backend"],
        )
        ready = GaugeMetricFamily(
            "hedge_gateway_backends",
            "Self-hosted backends per model, by whether their circuit lets traffic through.",
            labels=["model", "state"],
        )
        circuit = GaugeMetricFamily(
            "hedge_gateway_circuit_state",
            "Circuit breaker state per backend: 0 closed, 1 half-open, 2 open.",
            labels=["backend"],
        )
        for route in self._table.all_routes():
            available = 0
            for b in route.backends:
                in_flight.add_metric([route.label, b.url], b.outstanding)
                available += b.breaker.available()
            ready.add_metric([route.label, "available"], available)
            ready.add_metric([route.label, "unavailable"], len(route.backends) - available)
        for b in self._table.backends():
            circuit.add_metric([b.url], int(b.breaker.state))
        yield in_flight
        yield ready
        yield circuit


class _DemandCollector(Collector):
    """The demand contract series, from the table's live `Demand` objects."""

    def __init__(self, table: RoutingTable) -> None:
        self._table = table

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            DEMAND_IN_FLIGHT,
            "Requests in flight per ModelDeployment: served self-hosted, held while no engine "
            "pod is ready, or served by a fallback provider.",
            labels=list(GATEWAY_SERIES[DEMAND_IN_FLIGHT]),
        )
        arrivals = CounterMetricFamily(
            DEMAND_ARRIVALS,
            "Requests that arrived per ModelDeployment.",
            labels=list(GATEWAY_SERIES[DEMAND_ARRIVALS]),
        )
        tokens = CounterMetricFamily(
            FALLBACK_TOKENS,
            "Tokens (prompt + completion) the fallback providers reported, per ModelDeployment.",
            labels=list(GATEWAY_SERIES[FALLBACK_TOKENS]),
        )
        for demand in self._table.demands():
            ns, name = demand.key
            for state, value in zip(DEMAND_STATES, demand.in_flight, strict=True):
                in_flight.add_metric([ns, name, state], value)
            arrivals.add_metric([ns, name], demand.arrivals)
            for provider, value in demand.fallback_tokens.items():
                tokens.add_metric([ns, name, provider], value)
        yield in_flight
        yield arrivals
        yield tokens


class _RevisionCollector(Collector):
    """The per-revision contract series the rollout analysis reads, from the table's live
    `RevisionCounters` (bumped per self-hosted attempt on the request path)."""

    def __init__(self, table: RoutingTable) -> None:
        self._table = table

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            REVISION_REQUESTS,
            "Self-hosted attempts per revision by outcome (error: an engine fault, counted "
            "even when a retry then saved the request).",
            labels=list(GATEWAY_SERIES[REVISION_REQUESTS]),
        )
        ttft = HistogramMetricFamily(
            REVISION_TTFT,
            "Time from sending a request to a revision's pod to its first token.",
            labels=list(GATEWAY_SERIES[REVISION_TTFT]),
        )
        itl = HistogramMetricFamily(
            REVISION_ITL,
            "Each request's mean gap between tokens, per revision.",
            labels=list(GATEWAY_SERIES[REVISION_ITL]),
        )
        for counters in self._table.revision_counters():
            key = list(counters.key)
            for outcome, value in zip(OUTCOMES, counters.outcomes, strict=True):
                requests.add_metric([*key, outcome], value)
            for family, buckets in ((ttft, counters.ttft), (itl, counters.itl)):
                family.add_metric(key, buckets.cumulative(), buckets.total)
        yield requests
        yield ttft
        yield itl


class GatewayMetrics:
    def __init__(self, table: RoutingTable, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._requests = Counter(
            "hedge_gateway_requests",
            "Requests answered, by model, who served them and HTTP status.",
            ["model", "served_by", "status"],
            registry=r,
        )
        self._duration = Histogram(
            "hedge_gateway_request_duration_seconds",
            "Time from receiving a request to the end of its response.",
            ["model", "served_by"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._ttft = Histogram(
            "hedge_gateway_time_to_first_token_seconds",
            "Time from receiving the request to the model's first token (every generation).",
            ["model", "served_by"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self._itl = Histogram(
            "hedge_gateway_inter_token_latency_seconds",
            "Mean time between the model's tokens, one observation per request.",
            ["model", "served_by"],
            buckets=_ITL_BUCKETS,
            registry=r,
        )
        self._fallbacks = Counter(
            "hedge_gateway_fallbacks",
            "Requests sent to a fallback provider, by reason.",
            ["model", "provider", "reason"],
            registry=r,
        )
        self._retries = Counter(
            "hedge_gateway_retries",
            "Self-hosted attempts retried on another backend before the first byte.",
            ["model"],
            registry=r,
        )
        # Per tenant (a ClientPolicy, `<namespace>/<policy>`) and key (the name its policy
        # gives it, never the key): few of each, so the series stay bounded.
        self._tenant_requests = Counter(
            TENANT_REQUESTS,
            "Requests of ClientPolicy tenants, by key, model and who served them "
            "(served_by=gateway: refused, e.g. over a limit).",
            list(GATEWAY_SERIES[TENANT_REQUESTS]),
            registry=r,
        )
        self._tenant_tokens = Counter(
            TENANT_TOKENS,
            "Tokens (prompt + completion, reported by the engine or provider, else "
            "estimated) used by ClientPolicy tenants' requests.",
            list(GATEWAY_SERIES[TENANT_TOKENS]),
            registry=r,
        )
        self._tenant_limited = Counter(
            TENANT_RATE_LIMITED,
            "Requests refused with 429 by a limit of their ClientPolicy.",
            list(GATEWAY_SERIES[TENANT_RATE_LIMITED]),
            registry=r,
        )
        self._shed = Counter(
            "hedge_gateway_shed",
            "Requests refused (429 capacity_shed) because every self-hosted backend was full, "
            "by the request's priority.",
            ["model", "priority"],
            registry=r,
        )
        r.register(_TableCollector(table))
        r.register(_DemandCollector(table))
        r.register(_RevisionCollector(table))
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._ttft_children: dict[tuple[str, str], Histogram] = {}
        self._itl_children: dict[tuple[str, str], Histogram] = {}
        self._fallback_children: dict[tuple[str, str, str], Counter] = {}
        self._retry_children: dict[str, Counter] = {}
        self._tenant_children: dict[tuple[str, str, str, str], tuple[Counter, Counter]] = {}

    def shed(self, model: str, priority: str) -> None:
        self._shed.labels(model, priority).inc()

    def tenant_done(
        self,
        tenant: str,
        key: str,
        model: str,
        served_by: str,
        tokens: int | None,
        rate_limited: bool = False,
    ) -> None:
        """One request of a ClientPolicy's key has ended (`tokens` used, if counted)."""
        labels = (tenant, key, model, served_by)
        children = self._tenant_children.get(labels)
        if children is None:
            children = self._tenant_children[labels] = (
                self._tenant_requests.labels(*labels),
                self._tenant_tokens.labels(*labels),
            )
        children[0].inc()
        if tokens:
            children[1].inc(tokens)
        if rate_limited:
            self._tenant_limited.labels(tenant, key, model).inc()

    def request_done(
        self, model: str, served_by: str, status: int, seconds: float, gap: float | None = None
    ) -> None:
        key = (model, served_by, status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self._requests.labels(model, served_by, str(status)),
                self._duration.labels(model, served_by),
            )
        children[0].inc()
        children[1].observe(seconds)
        if gap is not None:
            hist = self._itl_children.get(key[:2])
            if hist is None:
                hist = self._itl_children[key[:2]] = self._itl.labels(model, served_by)
            hist.observe(gap)

    def first_token(self, model: str, served_by: str, seconds: float) -> None:
        key = (model, served_by)
        hist = self._ttft_children.get(key)
        if hist is None:
            hist = self._ttft_children[key] = self._ttft.labels(model, served_by)
        hist.observe(seconds)

    def fallback(self, model: str, provider: str, reason: str) -> None:
        key = (model, provider, reason)
        child = self._fallback_children.get(key)
        if child is None:
            child = self._fallback_children[key] = self._fallbacks.labels(*key)
        child.inc()

    def retry(self, model: str) -> None:
        child = self._retry_children.get(model)
        if child is None:
            child = self._retry_children[model] = self._retries.labels(model)
        child.inc()

    def prune(self, models: Iterable[str]) -> None:
        """Drop the series of models that are no longer routed."""
        keep = set(models)
        keep.add(UNKNOWN_MODEL)
        caches: list[tuple[dict[Any, Any], list[Any]]] = [
            (self._request_children, [self._requests, self._duration]),
            (self._ttft_children, [self._ttft]),
            (self._itl_children, [self._itl]),
            (self._fallback_children, [self._fallbacks]),
        ]
        for cache, families in caches:
            for key in [k for k in cache if k[0] not in keep]:
                del cache[key]
                for family in families:
                    labels = key if family is not self._duration else key[:2]
                    if family is self._requests:
                        labels = (key[0], key[1], str(key[2]))
                    # KeyError: already removed through another cached key.
                    with contextlib.suppress(KeyError):
                        family.remove(*labels)
        for model in [m for m in self._retry_children if m not in keep]:
            del self._retry_children[model]
            self._retries.remove(model)
