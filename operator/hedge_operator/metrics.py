"""Does I/O: the operator's Prometheus metrics (served by `hedge operator --metrics-port`)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

from hedge_core.contracts import DEMAND_STATES

if TYPE_CHECKING:  # the rollout modules import this one
    from hedge_operator.dataplane.signals import RevisionStats
    from hedge_operator.rollout.machine import Decision

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
CRD_CURRENT = Gauge(
    "hedge_operator_crd_current",
    "1 when the installed ModelDeployment CRD is the one this operator was built for.",
)
STANDBY = Gauge(
    "hedge_operator_standby",
    "1 while this replica is a peering standby (it writes nothing), 0 while it is active.",
)
STANDBY_REFUSED = Counter(
    "hedge_operator_standby_writes_refused_total",
    "Writes this replica refused to make because it was a peering standby.",
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
    for state in DEMAND_STATES:
        with contextlib.suppress(KeyError):
            DEMAND_IN_FLIGHT.remove(namespace, name, state)
    for window in ("minute", "day"):
        with contextlib.suppress(KeyError):
            FALLBACK_TOKENS.remove(namespace, name, window)


# ------------------------------------------------------------------------------ rollouts
# Per ModelDeployment and revision, from each reconcile's rollout decision: the pods each
# revision is given, the canary's step and weight, and the analysis window's numbers (what
# the gateways measured since the step began). A revision's series go when it has no pods
# and no window any more, and all of a ModelDeployment's when it is deleted.

_MD_REVISION = ["namespace", "model_deployment", "revision"]
ROLLOUT_PODS = Gauge(
    "hedge_operator_rollout_pods",
    "Engine pods the rollout gives each revision.",
    _MD_REVISION,
)
ROLLOUT_WEIGHT = Gauge(
    "hedge_operator_rollout_canary_weight",
    "Percent of the traffic the gateways send to the canary revision.",
    _MD_REVISION,
)
ROLLOUT_STEP = Gauge(
    "hedge_operator_rollout_step",
    "Canary step (1-based; 0 while the first step's pods start).",
    _MD_REVISION,
)
WINDOW_REQUESTS = Gauge(
    "hedge_operator_rollout_window_requests",
    "Requests each revision served since the canary step began (all gateways).",
    _MD_REVISION,
)
WINDOW_ERROR_RATIO = Gauge(
    "hedge_operator_rollout_window_error_ratio",
    "Engine errors per request of each revision since the canary step began.",
    _MD_REVISION,
)
WINDOW_TTFT = Gauge(
    "hedge_operator_rollout_window_ttft_seconds",
    "Mean time to first token of each revision since the canary step began.",
    _MD_REVISION,
)
WINDOW_ITL = Gauge(
    "hedge_operator_rollout_window_itl_seconds",
    "Mean inter-token latency of each revision since the canary step began.",
    _MD_REVISION,
)
ROLLOUT_EVENTS = Counter(
    "hedge_operator_rollout_events_total",
    "Rollout transitions, by Event reason (RolloutStarted, RolloutStep, RolloutPromoted, "
    "RolloutAborted, ...).",
    ["reason"],
)
_PER_REVISION = (
    ROLLOUT_PODS,
    ROLLOUT_WEIGHT,
    ROLLOUT_STEP,
    WINDOW_REQUESTS,
    WINDOW_ERROR_RATIO,
    WINDOW_TTFT,
    WINDOW_ITL,
)
_rollout_series: dict[tuple[str, str], set[tuple[Gauge, str]]] = {}


def record_rollout(
    namespace: str, name: str, decision: Decision, windows: Mapping[str, RevisionStats]
) -> None:
    """The gauges of one ModelDeployment after a rollout decision."""
    now: dict[tuple[Gauge, str], float] = {}
    for revision, pods in decision.replicas.items():
        now[(ROLLOUT_PODS, revision)] = pods
    canary = decision.state.canary
    if canary is not None and decision.weight is not None:
        now[(ROLLOUT_WEIGHT, canary)] = decision.weight
        now[(ROLLOUT_STEP, canary)] = decision.state.step
    for revision, stats in windows.items():
        now[(WINDOW_REQUESTS, revision)] = stats.requests
        for gauge, value in (
            (WINDOW_ERROR_RATIO, stats.error_rate),
            (WINDOW_TTFT, stats.ttft_mean),
            (WINDOW_ITL, stats.itl_mean),
        ):
            if value is not None:
                now[(gauge, revision)] = value
    for (gauge, revision), value in now.items():
        gauge.labels(namespace, name, revision).set(value)
    before = _rollout_series.get((namespace, name), set())
    for gauge, revision in before - set(now):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name, revision)
    _rollout_series[(namespace, name)] = set(now)
    for event in decision.events:
        ROLLOUT_EVENTS.labels(event.reason).inc()


def forget_rollout(namespace: str, name: str) -> None:
    """A deleted ModelDeployment's series go with it."""
    for gauge, revision in _rollout_series.pop((namespace, name), set()):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name, revision)
