"""The names both sides agree on (`hedge_core.contracts`) are the names actually written:
the gateway's registry exports every declared series with the declared labels, the
simulator writes vLLM's gauges under the declared names, and the model-name ownership
order is total, stable and compares whole seconds."""

from __future__ import annotations

import ast
import itertools
import random
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hedge_core import contracts
from hedge_core.contracts import (
    DEMAND_ARRIVALS,
    DEMAND_IN_FLIGHT,
    DEMAND_STATES,
    ENGINE_KV_CACHE,
    ENGINE_PREFIXES,
    ENGINE_RUNNING,
    ENGINE_WAITING,
    FALLBACK_TOKENS,
    GATEWAY_PREFIXES,
    GATEWAY_SERIES,
    OUTCOMES,
    REVISION_ITL,
    REVISION_REQUESTS,
    REVISION_TTFT,
    SERVED_BY_GATEWAY,
    SERVED_BY_SELF,
    TENANT_RATE_LIMITED,
    TENANT_REQUESTS,
    TENANT_SERIES,
    created_seconds,
    ownership_key,
)
from hedge_serving.gateway.engine_metrics import parse_waiting
from hedge_serving.gateway.metrics import GatewayMetrics
from hedge_serving.gateway.revisions import CLIENT_ERROR, ERROR, SUCCESS
from hedge_serving.gateway.routing import DemandState, RouteSpec, RoutingTable
from hedge_serving.simulator.metrics import SimulatorMetrics

_HISTOGRAMS = {REVISION_TTFT, REVISION_ITL}


def _gateway_page() -> str:
    """A real gateway registry's exposition, with every contract series populated."""
    table = RoutingTable()
    table.replace(
        [
            RouteSpec(
                "m",
                ("http://10.0.0.1:8000",),
                deployment=("team", "md"),
                revisions=("r1",),
                stable="r1",
            )
        ]
    )
    metrics = GatewayMetrics(table)
    (demand,) = table.demands()
    demand.arrivals += 3
    demand.in_flight[DemandState.HELD] += 1
    demand.fallback_tokens["openai"] = 12
    (counters,) = table.revision_counters()
    counters.outcomes[SUCCESS] += 1
    counters.ttft.observe(0.1)
    counters.itl.observe(0.01)
    metrics.tenant_done("team/team", "ci", "m", "self-hosted", 40)
    metrics.tenant_done("team/team", "ci", "m", "gateway", None, rate_limited=True)
    return generate_latest(metrics.registry).decode()


def _samples(text: str) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(dict(sample.labels))
    return out


def test_the_gateway_exports_every_contract_series_with_its_labels() -> None:
    samples = _samples(_gateway_page())
    for name, labels in GATEWAY_SERIES.items():
        names = [f"{name}_count", f"{name}_sum"] if name in _HISTOGRAMS else [name]
        for sample_name in names:
            assert sample_name in samples, sample_name
            for sample_labels in samples[sample_name]:
                assert set(sample_labels) == set(labels), (sample_name, sample_labels)
        if name in _HISTOGRAMS:
            for sample_labels in samples[f"{name}_bucket"]:
                assert set(sample_labels) == {*labels, "le"}


def test_label_values_are_the_declared_ones() -> None:
    samples = _samples(_gateway_page())
    assert [s["state"] for s in samples[DEMAND_IN_FLIGHT]] == list(DEMAND_STATES)
    assert [s["outcome"] for s in samples[REVISION_REQUESTS]] == list(OUTCOMES)
    assert (OUTCOMES[SUCCESS], OUTCOMES[CLIENT_ERROR], OUTCOMES[ERROR]) == (
        "success",
        "client_error",
        "error",
    )
    assert [DEMAND_STATES[s] for s in DemandState] == ["self_hosted", "held", "fallback"]
    assert samples[DEMAND_ARRIVALS] == [{"namespace": "team", "model_deployment": "md"}]
    assert samples[FALLBACK_TOKENS] == [
        {"namespace": "team", "model_deployment": "md", "provider": "openai"}
    ]
    tenant = {"tenant": "team/team", "key": "ci", "model": "m"}
    assert [s["served_by"] for s in samples[TENANT_REQUESTS]] == [SERVED_BY_SELF, SERVED_BY_GATEWAY]
    assert samples[TENANT_RATE_LIMITED] == [tenant]
    assert set(TENANT_SERIES) <= set(GATEWAY_SERIES)


def test_the_gateway_prefixes_select_exactly_the_contract_series() -> None:
    page = _gateway_page()
    selected = {
        line.split("{", 1)[0].split(" ", 1)[0]
        for line in page.splitlines()
        if line.startswith(GATEWAY_PREFIXES)
    }
    expected = {n for n in GATEWAY_SERIES if n not in _HISTOGRAMS} | {
        f"{n}_{suffix}" for n in _HISTOGRAMS for suffix in ("bucket", "sum", "count")
    }
    assert selected == expected


def test_the_simulator_writes_the_vllm_gauges_both_sides_read() -> None:
    sim = SimulatorMetrics("m", running=lambda: 2.0, waiting=lambda: 3.0, cache_usage=lambda: 0.5)
    text = generate_latest(sim.registry).decode()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[ENGINE_RUNNING] == 2.0
    assert samples[ENGINE_WAITING] == 3.0
    assert samples[ENGINE_KV_CACHE] == 0.5
    assert ENGINE_PREFIXES == (ENGINE_RUNNING, ENGINE_WAITING, ENGINE_KV_CACHE)
    assert parse_waiting(text) == 3.0


def test_created_seconds_are_whole_and_default_to_zero() -> None:
    assert created_seconds("2026-01-02T03:04:05Z") == 1767323045
    assert created_seconds("2026-01-02T03:04:05.999Z") == 1767323045
    assert created_seconds("2026-01-02T04:04:05+01:00") == 1767323045
    assert created_seconds(None) == 0
    assert created_seconds("yesterday") == 0
    assert created_seconds(1767323045) == 0  # not an API time


def test_ownership_orders_by_whole_seconds_then_namespace_then_name() -> None:
    a = ownership_key(created_seconds("2026-01-02T03:04:05.9Z"), "b", "x")
    b = ownership_key(created_seconds("2026-01-02T03:04:05.1Z"), "a", "y")
    c = ownership_key(created_seconds("2026-01-02T03:04:06Z"), "a", "a")
    assert sorted([a, b, c]) == [b, a, c]  # same second: namespace decides
    assert ownership_key(5, "n", "a") < ownership_key(5, "n", "b")
    assert ownership_key(5.0, "n", "a") == ownership_key(5, "n", "a")


def test_ownership_order_is_total_and_stable() -> None:
    times = [0, 1767323045, 1767323046]
    keys = [
        ownership_key(t, ns, name)
        for t, ns, name in itertools.product(times, ["", "a", "b"], ["m", "n"])
    ]
    assert len(set(keys)) == len(keys)  # distinct (namespace, name): distinct keys
    for a, b in itertools.combinations(keys, 2):
        assert (a < b) != (b < a)
    rng = random.Random(15)
    first = sorted(keys)
    for _ in range(20):
        shuffled = keys[:]
        rng.shuffle(shuffled)
        assert sorted(shuffled) == first


def test_contracts_import_only_the_standard_library_and_the_api() -> None:
    tree = ast.parse(Path(contracts.__file__).read_text())
    imported = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported <= {"__future__", "typing", "hedge_core.api"}
    assert (contracts.__doc__ or "").startswith("Pure")
