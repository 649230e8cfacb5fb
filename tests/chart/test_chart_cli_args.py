"""The args the chart gives each container are ones the real `hedge` CLI accepts, with the
meaning the chart intends: parsed by the same argparse parsers the image runs."""

from __future__ import annotations

import argparse
import contextlib
import io
import ipaddress
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


def test_the_gateway_egress_values_become_its_policy(render: Render, tmp_path: Path) -> None:
    """`gateway.egress` and `gateway.fallbackLimits` reach the gateway's flags, with the
    meaning the values file gives them (issue 16, High-1 and Medium-10)."""
    from hedge_serving.gateway.cli import settings_from_args

    values = tmp_path / "egress.yaml"
    values.write_text(
        "gateway:\n"
        "  replicaCount: 4\n"
        "  egress:\n"
        "    allowedHosts: ['*.openai.azure.com', 'team-a=llm.team-a.example']\n"
        "    allowInsecureHTTP: [llm-proxy.platform.svc]\n"
        "    allowedCIDRs: [10.40.0.0/16]\n"
        "    clusterCIDRs: [34.118.224.0/20]\n"
        "  fallbackLimits: {maxN: 2, maxTokens: 1000}\n"
    )
    (container,) = containers(one(render(values), "Deployment", "hedge-gateway"))
    proxy = settings_from_args(parse(container["args"])).proxy
    egress = proxy.egress
    assert egress.url_refused("https://x.openai.azure.com", "team-b") is None
    assert egress.url_refused("https://api.openai.com/v1", "team-b") is not None
    assert egress.url_refused("https://llm.team-a.example/v1", "team-a") is None
    assert egress.url_refused("https://llm.team-a.example/v1", "team-b") is not None
    assert egress.url_refused("http://llm-proxy.platform.svc/v1", "team-b") is None
    # the ranges are checked on the addresses connected to
    assert egress.address_refused(ipaddress.ip_address("10.40.1.1")) is None
    assert egress.address_refused(ipaddress.ip_address("10.41.1.1")) is not None
    assert egress.address_refused(ipaddress.ip_address("34.118.224.9")) is not None
    assert (proxy.fallback_limits.max_n, proxy.fallback_limits.max_tokens) == (2, 1000)
    assert proxy.fallback_budget_share == 0.25  # 1 / replicaCount by default


def test_accelerator_profile_values_reach_the_operator(render: Render, tmp_path: Path) -> None:
    """`operator.acceleratorProfiles` becomes a ConfigMap mounted where the operator's
    `--accelerator-profiles` flag reads it: the operator, given that file, resolves the
    profile as the values say, and a change of the values restarts the operator pod."""
    import yaml

    from hedge_operator.main import build_config

    values = tmp_path / "values.yaml"
    values.write_text(
        "operator:\n"
        "  defaultAcceleratorProfile: mi300x-pool\n"
        "  acceleratorProfiles:\n"
        "    mi300x-pool:\n"
        "      resource: amd.com/gpu\n"
        "      nodeSelector: {pool.example.com/name: mi300x}\n"
        "      tolerations: [{key: amd.com/gpu, operator: Exists, effect: NoSchedule}]\n"
        "      image: rocm/vllm:custom\n"
    )
    manifests = render(values)
    deployment = one(manifests, "Deployment", "hedge-operator")
    (container,) = containers(deployment)
    args = parse(container["args"])
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "accelerator-profiles"]
    (path,) = args.accelerator_profiles
    assert str(path).startswith(mount["mountPath"] + "/")
    volume = next(
        v
        for v in deployment["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "accelerator-profiles"
    )
    config_map = one(manifests, "ConfigMap", volume["configMap"]["name"])
    local = tmp_path / "mounted" / path.name
    local.parent.mkdir()
    local.write_text(config_map["data"][path.name])
    args.accelerator_profiles = [local]
    config = build_config(args)
    profile = config.accelerator_profiles["mi300x-pool"]
    assert (profile.resource, profile.image) == ("amd.com/gpu", "rocm/vllm:custom")
    assert config.default_accelerator_profile == "mi300x-pool"
    assert "nvidia-l4" in config.accelerator_profiles  # merged over the catalog

    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    checksum = annotations["hedge.dev/accelerator-profiles-checksum"]
    values.write_text(values.read_text().replace("rocm/vllm:custom", "rocm/vllm:other"))
    changed = one(render(values), "Deployment", "hedge-operator")
    assert (
        changed["spec"]["template"]["metadata"]["annotations"][
            "hedge.dev/accelerator-profiles-checksum"
        ]
        != checksum
    )
    assert yaml.safe_load(config_map["data"][path.name])["acceleratorProfiles"]

    (plain,) = containers(one(render(), "Deployment", "hedge-operator"))
    assert parse(plain["args"]).accelerator_profiles == []
