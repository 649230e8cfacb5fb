"""The Grafana dashboard asks only for series Hedge exports, and covers autoscaling and
tenants' usage."""

from __future__ import annotations

import json
import re
from typing import Any

from prometheus_client import REGISTRY

from hedge_core.contracts import TENANT_RATE_LIMITED, TENANT_REQUESTS, TENANT_TOKENS
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
        for target in panel.get("targets", [])
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


def _panel(doc: dict[str, Any], title: str) -> dict[str, Any]:
    (panel,) = [p for p in doc["panels"] if p["title"] == title]
    return panel


def test_the_tenants_row_reads_the_tenant_series() -> None:
    doc = json.loads(DASHBOARD.read_text())
    row = _panel(doc, "Tenants")
    assert row["type"] == "row"
    below = [p for p in doc["panels"] if p["gridPos"]["y"] > row["gridPos"]["y"]]
    assert {p["title"] for p in below} == {
        "Tokens per second by tenant",
        "Requests per second by tenant",
        "429s per second by tenant",
        "Tokens per tenant over the range",
    }
    sel = 'namespace=~"$namespace", tenant=~"$tenant"'
    tokens = _panel(doc, "Tokens per second by tenant")["targets"]
    assert [(t["expr"], t["legendFormat"]) for t in tokens] == [
        (
            f'sum by (tenant) (rate({TENANT_TOKENS}{{{sel}, served_by="self-hosted"}}'
            "[$__rate_interval]))",
            "{{tenant}} self-hosted",
        ),
        (
            f'sum by (tenant) (rate({TENANT_TOKENS}{{{sel}, served_by!~"self-hosted|gateway"}}'
            "[$__rate_interval]))",
            "{{tenant}} fallback",
        ),
    ]
    (requests,) = _panel(doc, "Requests per second by tenant")["targets"]
    assert requests["expr"] == (
        f"sum by (tenant, served_by) (rate({TENANT_REQUESTS}{{{sel}}}[$__rate_interval]))"
    )
    (limited,) = _panel(doc, "429s per second by tenant")["targets"]
    assert limited["expr"] == (
        f"sum by (tenant) (rate({TENANT_RATE_LIMITED}{{{sel}}}[$__rate_interval]))"
    )
    table = _panel(doc, "Tokens per tenant over the range")
    (total,) = table["targets"]
    assert table["type"] == "table"
    assert (total["instant"], total["format"]) == (True, "table")
    assert total["expr"] == (
        f'sum by (tenant, served_by) (increase({TENANT_TOKENS}{{{sel}, served_by!="gateway"}}'
        "[$__range]))"
    )
    (tenant,) = [v for v in doc["templating"]["list"] if v["name"] == "tenant"]
    assert tenant["query"] == (
        f'label_values({TENANT_REQUESTS}{{namespace=~"$namespace"}}, tenant)'
    )
