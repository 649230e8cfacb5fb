"""Prometheus metrics of the operator (served by `hedge operator --metrics-port`)."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "hedge_operator_reconciles_total",
    "ModelDeployment reconciles, by what triggered them and how they ended.",
    ["trigger", "result"],
)
RECONCILE_ERRORS = Counter(
    "hedge_operator_reconcile_errors_total",
    "Reconciles that failed or found a problem, by reason.",
    ["reason"],
)
RECONCILE_DURATION = Histogram(
    "hedge_operator_reconcile_duration_seconds",
    "Time spent in one reconcile (planning, writes, status).",
    ["trigger"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILE_WRITES = Histogram(
    "hedge_operator_reconcile_api_requests",
    "API requests made by one reconcile (0 when nothing changed).",
    ["trigger"],
    buckets=(0, 1, 2, 3, 4, 6, 8, 12, 16),
)
API_REQUESTS = Counter(
    "hedge_operator_api_requests_total",
    "Requests to the Kubernetes API made by the operator's own client (watches excluded).",
    ["verb", "resource", "code"],
)
GATEWAYS = Gauge(
    "hedge_operator_gateways",
    "Gateway replicas whose /metrics the last scrape read or failed to read.",
    ["result"],
)
DESIRED_REPLICAS = Gauge(
    "hedge_operator_desired_replicas",
    "Engine replicas the autoscaler asks for, per ModelDeployment.",
    ["namespace", "model_deployment"],
)
READY_REPLICAS = Gauge(
    "hedge_operator_ready_replicas",
    "Ready engine pods of a ModelDeployment with spec.autoscaling (beside desired replicas).",
    ["namespace", "model_deployment"],
)
DEMAND = Gauge(
    "hedge_operator_demand",
    "Requests in flight for the model, summed over the gateways and averaged over the stable "
    "window: what the autoscaler divides by targetRequests.",
    ["namespace", "model_deployment"],
)
DEMAND_IN_FLIGHT = Gauge(
    "hedge_operator_demand_in_flight",
    "Requests in flight for the model at the last scrape, summed over the gateways, by state "
    "(self_hosted, held, fallback).",
    ["namespace", "model_deployment", "state"],
)
AUTOSCALE_DECISIONS = Counter(
    "hedge_operator_autoscale_decisions_total",
    "Autoscaler decisions, by reason (ScaleUp, PanicScaleUp, ScaleDown, ScaleToZero, "
    "WakeFromZero, Steady, ScaleDownDelayed, PodsStarting, NoMetrics).",
    ["reason"],
)

FALLBACK_TOKENS = Gauge(
    "hedge_operator_fallback_tokens",
    "Fallback tokens spent in the current budget window, summed over the gateways.",
    ["namespace", "model_deployment", "window"],
)
FALLBACK_BUDGET_EXHAUSTED = Gauge(
    "hedge_operator_fallback_budget_exhausted",
    "1 while the model's fallback budget is spent (no spilling until the window turns).",
    ["namespace", "model_deployment"],
)

_PER_MODEL = (DESIRED_REPLICAS, READY_REPLICAS, DEMAND, FALLBACK_BUDGET_EXHAUSTED)


def forget_model(namespace: str, name: str) -> None:
    """Drop a deleted ModelDeployment's series."""
    for gauge in _PER_MODEL:
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)
    for state in ("self_hosted", "held", "fallback"):
        with contextlib.suppress(KeyError):
            DEMAND_IN_FLIGHT.remove(namespace, name, state)
    for window in ("minute", "day"):
        with contextlib.suppress(KeyError):
            FALLBACK_TOKENS.remove(namespace, name, window)
