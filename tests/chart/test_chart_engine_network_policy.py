"""The chart tells the operator which pods its engine NetworkPolicies admit: this release's
gateway and operator pods, by the labels those pods really carry (issue 16, M-11)."""

from __future__ import annotations

from hedge_core.cli import build_parser
from hedge_operator import main
from tests.chart.chart_support import CHART, Render, containers, one
from tests.chart.test_chart_rbac import OPERATOR, Request, allowed


def operator_config(render: Render, *set_values: str) -> tuple[object, list[dict[str, object]]]:
    manifests = render(CHART / "ci" / "default-values.yaml", set_values=set_values)
    (container,) = containers(one(manifests, "Deployment", "hedge-operator"))
    args = build_parser(container["args"]).parse_args(container["args"])
    return main.build_config(args).network_policy, manifests


def pod_labels(manifests: list[dict[str, object]], name: str) -> dict[str, str]:
    deployment = one(manifests, "Deployment", name)
    return dict(deployment["spec"]["template"]["metadata"]["labels"])  # type: ignore[index]


def test_engine_policies_admit_this_releases_gateways_and_operator(render: Render) -> None:
    policy, manifests = operator_config(render)
    assert policy is not None, "on by default"
    assert policy.gateway_namespace == "hedge-system"  # type: ignore[attr-defined]
    assert policy.operator_namespace == "hedge-system"  # type: ignore[attr-defined]
    gateway = pod_labels(manifests, "hedge-gateway")
    operator = pod_labels(manifests, "hedge-operator")
    wanted_gw = dict(policy.gateway_pod_labels)  # type: ignore[attr-defined]
    wanted_op = dict(policy.operator_pod_labels)  # type: ignore[attr-defined]
    assert wanted_gw.items() <= gateway.items() and len(wanted_gw) >= 3
    assert wanted_op.items() <= operator.items() and len(wanted_op) >= 3
    assert not wanted_gw.items() <= operator.items()  # the operator is no gateway
    for verb in ("get", "list", "watch", "create", "patch", "delete"):
        req = Request(verb, "networking.k8s.io", "networkpolicies", "some-team")
        assert allowed(manifests, OPERATOR, req)


def test_engine_policies_can_be_turned_off(render: Render) -> None:
    policy, _ = operator_config(render, "networkPolicy.engines=false")
    assert policy is None
