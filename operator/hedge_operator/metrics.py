"""Prometheus metrics of the operator (served by `hedge operator --metrics-port`)."""

from __future__ import annotations

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
