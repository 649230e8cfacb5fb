"""The Grafana dashboard asks only for series Hedge exports, and covers autoscaling."""

from __future__ import annotations

import json
import re

from prometheus_client import REGISTRY

from hedge_operator import metrics as operator_metrics
from hedge_serving.gateway.metrics import GatewayMetrics
from hedge_serving.gateway.routing import RouteSpec, RoutingTable
from tests.chart.chart_support import CHART

DASHBOARD = CHART / "dashboards" / "hedge.json"


def exported() -> set[str]:
    """Every sample name the gateway and the operator can expose."""
    table = RoutingTable()
    table.replace([RouteSpec("m", ("http://127.0.0.1:9",), deployment=("ns", "md"))])
    gateway = GatewayMetrics(table)
    names = {m.name for m in gateway.registry.collect()}
    assert operator_metrics.DESIRED_REPLICAS  # registered on the default registry
    names |= {m.name for m in REGISTRY.collect()}
    # Sample names add _total, _bucket, _sum and _count to family names.
    return names | {f"{n}_{s}" for n in names for s in ("total", "bucket", "sum", "count")}


def test_every_panel_query_names_an_exported_series() -> None:
    doc = json.loads(DASHBOARD.read_text())
    known = exported()
    used = {
        name
        for panel in doc["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b(hedge_[a-z_]+)\b", target["expr"])
    }
    assert used - known == set()
    titles = {p["title"] for p in doc["panels"]}
    assert {
        "Replicas: desired and ready",
        "Demand",
        "Share served by the fallback",
        "Fallback budget",
    } <= titles
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
