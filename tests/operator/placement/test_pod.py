"""Engine pods placed by accelerator profile and spec.engine.pod: the merge and its precedence."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest

from hedge_core.api import SpecError
from hedge_operator.config import OperatorConfig
from hedge_operator.placement.pod import INVALID_POD_SETTINGS
from hedge_operator.placement.profiles import parse_profile
from hedge_operator.provisioning.builders import build_engine_deployment, revision_of
from hedge_operator.provisioning.validation import validate
from tests.operator.factories import model, spec_with


def _spec(**changes: Any) -> dict[str, Any]:
    spec = spec_with(**changes)
    spec["resources"] = {k: v for k, v in spec["resources"].items() if v is not None}
    return spec


@pytest.mark.parametrize(
    ("changes", "revision"),
    [
        ({}, "d031a8ee0f"),
        ({"resources": {"gpus": 0, "gpuType": None}}, "54d57e81c8"),
        ({"resources": {"gpus": 2, "gpuType": None}}, "b32a7d9a01"),
        ({"resources": {"gpus": 1, "gpuType": "nvidia-l4"}}, "598332e8e0"),
        (
            {
                "resources": {"gpus": 8, "gpuType": "nvidia-h100-80gb"},
                "engine": {
                    "securityProfile": "Restricted",
                    "env": [{"name": "A", "value": "b"}],
                    "podAnnotations": {"x": "y"},
                },
            },
            "3c1b0efa66",
        ),
    ],
)
def test_an_upgrade_to_profiles_keeps_every_revision(
    changes: dict[str, Any], revision: str
) -> None:
    """The revisions these specs had before accelerator profiles and pod settings existed
    (computed by the previous release): an upgrade restarts no engine pod."""
    assert revision_of(model(_spec(**changes)), OperatorConfig()) == revision


AMD = parse_profile(
    "amd-test",
    {
        "resource": "amd.com/gpu",
        "nodeSelector": {"amd.com/gpu.product-name": "AMD_Instinct_MI300X_OAM"},
        "tolerations": [{"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "image": "rocm/vllm:test",
        "env": [{"name": "VLLM_ROCM_USE_AITER", "value": "1"}, {"name": "A", "value": "profile"}],
        "runtimeClassName": "amd",
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
                ]
            }
        },
    },
)
GAUDI = parse_profile("gaudi-test", {"resource": "habana.ai/gaudi"})
CONFIG = OperatorConfig().with_profiles({"amd-test": AMD, "gaudi-test": GAUDI})


def _pod(spec: dict[str, Any], config: OperatorConfig = CONFIG) -> dict[str, Any]:
    return build_engine_deployment(model(spec), config)["spec"]["template"]


def _engine(template: dict[str, Any]) -> dict[str, Any]:
    (container,) = template["spec"]["containers"]
    assert container["name"] == "engine"
    return dict(container)


def test_a_profile_sets_resource_image_env_runtime_and_placement() -> None:
    template = _pod(_spec(resources={"gpus": 2, "gpuType": "amd-test"}))
    pod, engine = template["spec"], _engine(template)
    assert engine["image"] == "rocm/vllm:test"
    assert engine["resources"]["requests"]["amd.com/gpu"] == "2"
    assert engine["resources"]["limits"]["amd.com/gpu"] == "2"
    assert "nvidia.com/gpu" not in engine["resources"]["requests"]
    env = {e["name"]: e.get("value") for e in engine["env"]}
    assert env["VLLM_ROCM_USE_AITER"] == "1"
    assert pod["runtimeClassName"] == "amd"
    assert pod["nodeSelector"] == {"amd.com/gpu.product-name": "AMD_Instinct_MI300X_OAM"}
    assert pod["tolerations"] == [
        {"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]


def test_the_spec_wins_over_the_profile_where_documented() -> None:
    template = _pod(
        _spec(
            resources={"gpus": 1, "gpuType": "amd-test"},
            engine={
                "image": "registry.example.com/vllm-rocm:patched",
                "env": [{"name": "A", "value": "spec"}],
                "pod": {"runtimeClassName": "kata-amd"},
            },
        )
    )
    engine = _engine(template)
    assert engine["image"] == "registry.example.com/vllm-rocm:patched"
    assert [e["value"] for e in engine["env"] if e["name"] == "A"] == ["spec"]
    assert template["spec"]["runtimeClassName"] == "kata-amd"


def test_required_node_affinity_is_the_profile_and_the_spec() -> None:
    spec_affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["x"]}]}
                ]
            },
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 10,
                    "preference": {
                        "matchExpressions": [{"key": "spot", "operator": "DoesNotExist"}]
                    },
                }
            ],
        },
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []},
    }
    template = _pod(
        _spec(
            resources={"gpus": 1, "gpuType": "amd-test"},
            engine={"pod": {"affinity": spec_affinity}},
        )
    )
    affinity = template["spec"]["affinity"]
    terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    # (zone a or zone b) and pool x
    assert [[e["key"] + "=" + e["values"][0] for e in t["matchExpressions"]] for t in terms] == [
        ["zone=a", "pool=x"],
        ["zone=b", "pool=x"],
    ]
    assert (
        affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"]
        == 10
    )
    assert "podAntiAffinity" in affinity


def test_every_pod_setting_reaches_the_pod() -> None:
    pod_settings = {
        "nodeSelector": {"topology.kubernetes.io/zone": "us-east-1a"},
        "tolerations": [
            {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        ],
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
            }
        ],
        "priorityClassName": "inference-high",
        "imagePullSecrets": [{"name": "registry-creds"}],
        "serviceAccountName": "vllm-bucket-reader",
        "runtimeClassName": "nvidia",
        "securityContext": {"fsGroupChangePolicy": "OnRootMismatch"},
        "containerSecurityContext": {"readOnlyRootFilesystem": False},
        "volumes": [{"name": "chat-templates", "configMap": {"name": "templates"}}],
        "volumeMounts": [{"name": "chat-templates", "mountPath": "/templates", "readOnly": True}],
        "extraResources": {"vpc.amazonaws.com/efa": 1},
        "labels": {"team": "search"},
        "annotations": {"prometheus.io/scrape": "true"},
    }
    template = _pod(
        _spec(resources={"gpus": 1, "gpuType": "nvidia-l4"}, engine={"pod": pod_settings})
    )
    pod, engine = template["spec"], _engine(template)
    assert pod["nodeSelector"] == {
        "nvidia.com/gpu.product": "NVIDIA-L4",
        "topology.kubernetes.io/zone": "us-east-1a",
    }
    # the profile's toleration once, then the spec's
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
    ]
    assert pod["topologySpreadConstraints"][0]["maxSkew"] == 1
    assert pod["priorityClassName"] == "inference-high"
    assert pod["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert pod["serviceAccountName"] == "vllm-bucket-reader"
    assert pod["automountServiceAccountToken"] is False
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["securityContext"] == {"fsGroupChangePolicy": "OnRootMismatch"}
    assert engine["securityContext"] == {"readOnlyRootFilesystem": False}
    assert {"name": "chat-templates", "configMap": {"name": "templates"}} in pod["volumes"]
    assert {"name": "chat-templates", "mountPath": "/templates", "readOnly": True} in engine[
        "volumeMounts"
    ]
    assert engine["resources"]["requests"]["vpc.amazonaws.com/efa"] == "1"
    assert engine["resources"]["limits"]["vpc.amazonaws.com/efa"] == "1"
    labels = template["metadata"]["labels"]
    assert labels["team"] == "search" and labels["hedge.dev/component"] == "engine"
    assert template["metadata"]["annotations"] == {"prometheus.io/scrape": "true"}
    # the operator's own parts are untouched
    assert engine["command"] == ["vllm", "serve"]
    assert [p["containerPort"] for p in engine["ports"]] == [8000]
    assert engine["readinessProbe"]["httpGet"]["path"] == "/health"


def test_a_pod_setting_is_a_new_revision() -> None:
    base = _spec(resources={"gpus": 1, "gpuType": "nvidia-l4"})
    changed = _spec(
        resources={"gpus": 1, "gpuType": "nvidia-l4"},
        engine={"pod": {"priorityClassName": "inference-high"}},
    )
    assert revision_of(model(base), CONFIG) != revision_of(model(changed), CONFIG)
    # and a change of the profile itself (a platform team's new image) is one too
    other = CONFIG.with_profiles({"amd-test": replace(AMD, image="rocm/vllm:test2")})
    amd = model(_spec(resources={"gpus": 1, "gpuType": "amd-test"}))
    assert revision_of(amd, CONFIG) != revision_of(amd, other)


def test_restricted_keeps_its_fields_over_the_spec_context() -> None:
    template = _pod(
        _spec(
            resources={"gpus": 1, "gpuType": "nvidia-l4"},
            engine={
                "securityProfile": "Restricted",
                "pod": {"securityContext": {"supplementalGroups": [2000]}},
            },
        )
    )
    context = template["spec"]["securityContext"]
    assert context["supplementalGroups"] == [2000] and context["runAsNonRoot"] is True


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        (
            _spec(
                resources={"gpus": 1, "gpuType": "nvidia-l4"},
                engine={
                    "pod": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}}
                },
            ),
            "contradicts accelerator profile 'nvidia-l4'",
        ),
        (
            _spec(
                resources={"gpus": 1, "gpuType": "gaudi-test"},
                engine={"pod": {"extraResources": {"habana.ai/gaudi": 4}}},
            ),
            "may not request habana.ai/gaudi",
        ),
        (
            _spec(
                resources={"gpus": 1, "gpuType": "nvidia-l4"},
                engine={
                    "securityProfile": "Restricted",
                    "pod": {"securityContext": {"runAsUser": 0}},
                },
            ),
            "spec.engine.pod.securityContext.runAsUser is 0 but securityProfile Restricted "
            "sets 1000",
        ),
        (
            _spec(
                resources={"gpus": 1, "gpuType": "nvidia-l4"},
                engine={
                    "securityProfile": "Restricted",
                    "pod": {"containerSecurityContext": {"allowPrivilegeEscalation": True}},
                },
            ),
            "containerSecurityContext.allowPrivilegeEscalation is True",
        ),
    ],
)
def test_settings_that_fight_the_profile_are_refused(spec: dict[str, Any], says: str) -> None:
    problem = validate(model(spec), CONFIG, {})
    assert problem is not None
    assert problem.reason == INVALID_POD_SETTINGS
    assert says in problem.message


def test_the_crd_refuses_settings_that_fight_hedge() -> None:
    """What needs no profile to judge is refused at `kubectl apply` (the CEL twins)."""
    for pod_settings, says in (
        ({"labels": {"hedge.dev/revision": "x"}}, "are set by the operator"),
        ({"extraResources": {"nvidia.com/gpu": 8}}, "only extended resources other than the GPU"),
        ({"extraResources": {"cpu": "8"}}, "only extended resources other than the GPU"),
        ({"volumes": [{"name": "dshm", "emptyDir": {}}]}, "are the operator's volume names"),
    ):
        with pytest.raises(SpecError, match=re.escape(says)):
            model(_spec(engine={"pod": pod_settings}))
