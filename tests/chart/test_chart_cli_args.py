"""The args the chart gives each container are ones the real `hedge` CLI accepts, with the
meaning the chart intends: parsed by the same argparse parsers the image runs."""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

import pytest

from hedge_core.cli import build_parser
from tests.chart.chart_support import CHART, CI_VALUES, Render, containers, one


def parse(args: list[str]) -> argparse.Namespace:
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return build_parser(args).parse_args(args)
    except SystemExit:
        pytest.fail(f"hedge rejects the chart's args {args}: {stderr.getvalue().strip()}")


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_gateway_accepts_the_chart_args(render: Render, values: Path) -> None:
    manifests = render(values)
    (container,) = containers(one(manifests, "Deployment", "hedge-gateway"))
    args = parse(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert args.host == "0.0.0.0"  # reachable through the pod IP, not only loopback
    assert args.port == ports["http"]
    assert args.admin_port == ports["admin"]
    assert args.routes is None, "in a cluster, routes come from ModelDeployments"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "admin"  # /healthz and /readyz live there
    # SIGTERM: unready and serving for the drain delay, then draining; then the kubelet kills.
    grace = one(manifests, "Deployment", "hedge-gateway")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"
    ]
    assert grace > args.drain_delay + args.drain_timeout


def test_gateway_namespaces_and_client_keys(render: Render) -> None:
    manifests = render(CHART / "ci" / "namespaced-values.yaml")
    (container,) = containers(one(manifests, "Deployment", "hedge-gateway"))
    args = parse(container["args"])
    assert args.namespace == ["team-a", "team-b"]
    assert args.api_keys_secret == "hedge-system/hedge-api-keys"

    (default,) = containers(one(render(), "Deployment", "hedge-gateway"))
    assert parse(default["args"]).namespace is None  # all namespaces


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_operator_accepts_the_chart_args(render: Render, values: Path) -> None:
    manifests = render(values)
    (container,) = containers(one(manifests, "Deployment", "hedge-operator"))
    args = parse(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert args.metrics_port == ports["metrics"]
    assert args.health_port == ports["health"]
    peering = [a for a in container["args"] if a.startswith("--peering")]
    assert bool(peering) == (args.peering is not None)
