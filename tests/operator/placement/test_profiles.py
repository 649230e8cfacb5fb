"""Accelerator profile files: what a platform team writes, and the clear error for each
mistake (the operator refuses to start on a bad file rather than misplace pods)."""

from __future__ import annotations

from typing import Any

import pytest

from hedge_operator.placement.profiles import (
    ANY_NVIDIA_GPU,
    ProfileError,
    matches,
    parse_profile,
    parse_profiles,
    profile_json,
    resolve,
    tolerates,
)

GOOD: dict[str, Any] = {
    "resource": "amd.com/gpu",
    "nodeSelector": {"amd.com/gpu.product-name": "AMD_Instinct_MI300X_OAM"},
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {"key": "node.kubernetes.io/instance-type", "operator": "In",
                         "values": ["a", "b"]},
                        {"key": "gpu-mem", "operator": "Gt", "values": ["100000"]},
                    ]
                }
            ]
        }
    },
    "tolerations": [{"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "runtimeClassName": "amd",
    "image": "rocm/vllm:x",
    "env": [{"name": "HIP_FORCE_DEV_KERNARG", "value": "1"}],
    "gpuMemory": "192Gi",
    "description": "MI300X",
    "docs": ["https://example.com"],
}  # fmt: skip


def test_a_profile_round_trips_through_its_file_form() -> None:
    profile = parse_profile("mi300x", GOOD)
    assert parse_profiles({"acceleratorProfiles": {"mi300x": profile_json(profile)}}, "f") == {
        "mi300x": profile
    }
    assert profile.selector_text() == (
        "amd.com/gpu.product-name=AMD_Instinct_MI300X_OAM,"
        "node.kubernetes.io/instance-type in (a,b),gpu-mem > 100000"
    )


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"resources": "x"}, "unknown field(s) resources"),
        ({"resource": "gpu"}, "is not an extended resource name"),
        ({"resource": "kubernetes.io/gpu"}, "is not an extended resource"),
        ({"nodeSelector": {"k": 1}}, "is not a label value (quote numbers)"),
        ({"nodeSelector": {"bad key!": "v"}}, "is not a label key"),
        ({"tolerations": [{"key": "k", "operator": "Equals"}]}, "is not Equal or Exists"),
        ({"tolerations": [{"key": "k", "effect": "NoScheduling"}]}, "effect 'NoScheduling'"),
        ({"tolerations": [{"operator": "Equal"}]}, "without a key needs operator Exists"),
        (
            {"tolerations": [{"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5}]},
            "applies only to effect NoExecute",
        ),
        ({"nodeAffinity": {"required": {}}}, "expected requiredDuringScheduling"),
        (
            {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}
                }
            },
            "nodeSelectorTerms is empty",
        ),
        (
            {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "k", "operator": "Like", "values": ["v"]}
                                ]
                            }
                        ]
                    }
                }
            },
            "operator 'Like' is not one of In",
        ),
        ({"env": [{"name": "X", "valueFrom": {}}]}, "expected name and value"),
        ({"env": [{"name": "X", "value": 1}]}, "the value must be a string"),
        ({"gpuMemory": "lots"}, "is not a quantity"),
        ({"runtimeClassName": "Bad_Name"}, "is not a DNS subdomain name"),
        ({"image": ""}, "expected a non-empty string"),
    ],
)
def test_a_bad_profile_is_refused_naming_profile_and_field(
    change: dict[str, Any], says: str
) -> None:
    with pytest.raises(ProfileError, match="accelerator profile 'p'") as err:
        parse_profiles({"acceleratorProfiles": {"p": {**GOOD, **change}}}, "profiles.yaml")
    assert says in str(err.value)
    assert str(err.value).startswith("profiles.yaml: ")


def test_a_bad_name_or_document_is_refused() -> None:
    with pytest.raises(ProfileError, match="must be a DNS label"):
        parse_profiles({"Not_A_Label": GOOD}, "f")
    with pytest.raises(ProfileError, match="expected a mapping of profile name"):
        parse_profiles(["x"], "f")
    assert parse_profiles({"acceleratorProfiles": None}, "f") == {}


def test_resolve_names_a_profile_or_the_default() -> None:
    p = parse_profile("p", GOOD)
    assert resolve("p", {"p": p}) is p
    assert resolve(None, {"p": p}) is ANY_NVIDIA_GPU
    assert resolve(None, {"p": p}, default="p") is p
    assert resolve("missing", {"p": p}) is None


def test_matches_and_tolerates_follow_the_scheduler() -> None:
    p = parse_profile("p", GOOD)
    node = {
        "amd.com/gpu.product-name": "AMD_Instinct_MI300X_OAM",
        "node.kubernetes.io/instance-type": "b",
        "gpu-mem": "196608",
    }
    assert matches(p, node)
    assert not matches(p, {**node, "gpu-mem": "1"})
    assert not matches(p, {**node, "node.kubernetes.io/instance-type": "c"})
    assert not matches(p, {k: v for k, v in node.items() if k != "amd.com/gpu.product-name"})
    assert tolerates(
        p.tolerations, {"key": "amd.com/gpu", "value": "present", "effect": "NoSchedule"}
    )
    assert not tolerates(p.tolerations, {"key": "sku", "value": "gpu", "effect": "NoSchedule"})
    assert tolerates(p.tolerations, {"key": "sku", "value": "gpu", "effect": "PreferNoSchedule"})
    assert tolerates([{"operator": "Exists"}], {"key": "any", "effect": "NoExecute"})
    assert tolerates(
        [{"key": "sku", "operator": "Equal", "value": "gpu"}],
        {"key": "sku", "value": "gpu", "effect": "NoSchedule"},
    )
