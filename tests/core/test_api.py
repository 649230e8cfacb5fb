"""The typed API and the CRD generated from it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hedge_core import api
from hedge_core.api import (
    EngineSpec,
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    SpecError,
    crd,
    crd_yaml,
    parse,
)
from tests.core.cel_cases import CASES
from tests.operator.factories import body, model, spec_with

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "hedge.dev_modeldeployments.yaml"


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{name}")
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")


def root_schema() -> dict[str, Any]:
    schema: dict[str, Any] = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_committed_crd_matches_the_api() -> None:
    assert CRD_FILE.read_text() == crd_yaml(), (
        "crds/ drifted from hedge_core.api: run scripts/generate-crds"
    )


def test_every_field_has_a_description() -> None:
    missing = []
    for path, schema in walk(root_schema()):
        for name, sub in (schema.get("properties") or {}).items():
            if not str(sub.get("description", "")).strip():
                missing.append(f"{path}.{name}")
    # The API server refuses anything but `type: object` on the root's metadata.
    assert missing == [".metadata"]


#: Kubernetes' own objects passed through to the engine pods as given (the API server
#: checks them when the operator applies the Deployment): the only fields that keep
#: unknown fields.
PASS_THROUGH = {
    ".spec.engine.pod.affinity",
    ".spec.engine.pod.topologySpreadConstraints[]",
    ".spec.engine.pod.securityContext",
    ".spec.engine.pod.containerSecurityContext",
    ".spec.engine.pod.volumes[]",
}


def test_schema_is_structural() -> None:
    kept = set()
    for path, schema in walk(root_schema()):
        if "x-kubernetes-preserve-unknown-fields" in schema:
            kept.add(path)
        if schema.get("x-kubernetes-int-or-string"):
            assert schema["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        else:
            assert schema.get("type") in {
                "object",
                "array",
                "string",
                "integer",
                "number",
                "boolean",
            }, path
        if schema.get("type") == "array":
            assert "maxItems" in schema, f"{path}: CEL cost estimation needs maxItems"
    assert kept == PASS_THROUGH


def test_strings_under_cel_rules_are_bounded() -> None:
    # The API server rejects CEL rules whose estimated cost is unbounded.
    for path, schema in walk(root_schema()):
        if schema.get("x-kubernetes-validations") and schema.get("type") == "string":
            assert "maxLength" in schema, path


def test_names_subresources_and_printer_columns() -> None:
    spec = crd()["spec"]
    assert spec["group"] == "hedge.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "ModelDeployment"
    assert spec["names"]["shortNames"] == ["md"]
    assert "hedge" in spec["names"]["categories"]
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == [
        "Model", "Ready", "Replicas", "Desired", "Revision", "Step", "Weight", "Fallback", "Age",
    ]  # fmt: skip
    ready = next(c for c in version["additionalPrinterColumns"] if c["name"] == "Ready")
    assert ready["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'


def test_status_conditions_are_a_map_keyed_by_type() -> None:
    conditions = root_schema()["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert set(item["required"]) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }


def test_crd_defaults_are_what_the_parser_fills_in() -> None:
    spec_schema = root_schema()["properties"]["spec"]["properties"]
    parsed = parse(ModelDeploymentSpec, {"model": {"source": "hf://org/name"}})

    # Empty lists and maps are left out of the CRD's defaults (absent means empty).
    def pruned(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: pruned(v) for k, v in value.items() if pruned(v) not in ([], {})}
        return value

    def non_empty(obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = pruned(api.to_json(obj))
        return out

    assert spec_schema["engine"]["default"] == non_empty(parsed.engine)
    assert spec_schema["resources"]["default"] == non_empty(parsed.resources)
    assert spec_schema["serving"]["default"] == non_empty(parsed.serving)
    assert spec_schema["rollout"]["default"] == non_empty(parsed.rollout)
    assert spec_schema["rollout"]["default"]["maxSurge"] == "0"
    assert spec_schema["replicas"]["default"] == parsed.replicas == 1
    assert parsed.engine.image == api.DEFAULT_ENGINE_IMAGE
    assert ":" in parsed.engine.image and not parsed.engine.image.endswith(":latest")
    assert parsed.resources.gpus == 1 and parsed.resources.gpu_type is None
    assert parsed.rollout.strategy == "RollingUpdate"
    assert parsed.cache is None and parsed.fallback is None and parsed.autoscaling is None


def test_quantities_accept_yaml_integers() -> None:
    md = model(spec_with(resources={"cpu": 8, "memory": "64Gi"}))
    assert md.spec.resources.cpu == "8"
    assert md.spec.resources.memory == "64Gi"
    with pytest.raises(SpecError, match="not a quantity"):
        model(spec_with(resources={"memory": "lots"}))


def test_served_model_defaults_to_the_object_name() -> None:
    assert model({"model": {"source": "hf://a/b"}}, name="chat").served_model == "chat"
    assert model(spec_with(model={"name": "llama-3-8b"})).served_model == "llama-3-8b"


# Each case breaks one rule; the message is the CEL rule's message, so `kubectl apply`
# and the operator say the same thing.
INVALID = [
    ({"model": {"source": "ftp://x/y"}}, "source must start with hf://, s3://, gs:// or pvc://"),
    ({"model": {"source": "hf://a/b/c"}}, "hf:// sources look like hf://org/name"),
    ({"model": {"source": "s3://B/x"}}, "s3:// and gs:// sources look like s3://bucket/path"),
    ({"model": {"source": "pvc://Claim/x"}}, "pvc:// sources look like pvc://claim/path"),
    ({"model": {"source": "pvc://claim/../etc"}}, "source must not contain '..'"),
    (
        {"model": {"source": "s3://bucket/m", "revision": "main"}},
        "model.revision is only supported for hf:// sources",
    ),
    (
        {"model": {"source": "pvc://c/m", "credentialsSecretRef": {"name": "s"}}},
        "model.credentialsSecretRef does not apply to pvc:// sources",
    ),
    ({"engine": {"env": [{"name": "A"}]}}, "env: set exactly one of value and secretKeyRef"),
    (
        {
            "engine": {
                "env": [{"name": "A", "value": "1", "secretKeyRef": {"name": "s", "key": "k"}}]
            }
        },
        "env: set exactly one of value and secretKeyRef",
    ),
    (
        {"resources": {"gpus": 0, "gpuType": "nvidia-l4"}},
        "resources.gpuType needs resources.gpus > 0",
    ),
    (
        {"cache": {"existingClaim": "c", "storageClassName": "fast"}},
        "cache.existingClaim and cache.storageClassName are mutually exclusive",
    ),
    (
        {"autoscaling": {"minReplicas": 3, "maxReplicas": 2}},
        "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
    ),
    (
        {
            "fallback": {
                "providers": [
                    {
                        "type": "AzureOpenAI",
                        "model": "m",
                        "apiKeySecretRef": {"name": "a", "key": "k"},
                    }
                ]
            }
        },
        "AzureOpenAI providers need baseURL and apiVersion",
    ),
    (
        {"fallback": {"providers": [{"type": "OpenAICompatible", "model": "m"}]}},
        "OpenAICompatible providers need baseURL",
    ),
    (
        {"fallback": {"providers": [{"type": "OpenAI", "model": "m"}]}},
        "OpenAI, AzureOpenAI and Anthropic providers need apiKeySecretRef",
    ),
    (
        {
            "fallback": {
                "providers": [
                    {
                        "type": "Anthropic",
                        "model": "m",
                        "apiVersion": "1",
                        "apiKeySecretRef": {"name": "a", "key": "k"},
                    }
                ]
            }
        },
        "apiVersion and deployment apply to AzureOpenAI providers only",
    ),
    (
        {
            "fallback": {
                "onUnavailable": False,
                "onOverload": False,
                "onError": False,
                "providers": [{"type": "OpenAICompatible", "model": "m", "baseURL": "http://x"}],
            }
        },
        "fallback needs at least one of onUnavailable, onOverload and onError",
    ),
    (
        {"rollout": {"strategy": "RollingUpdate", "steps": [{"weight": 10}]}},
        "rollout.steps apply to the Canary strategy only",
    ),
    ({"rollout": {"strategy": "Canary"}}, "the Canary strategy needs at least one step"),
    (
        {"rollout": {"strategy": "Canary", "steps": [{"weight": 50}, {"weight": 10}]}},
        "rollout.steps must not decrease in weight",
    ),
    (
        {"autoscaling": {"maxReplicas": 2, "stableWindowSeconds": 10, "panicWindowSeconds": 20}},
        "autoscaling.panicWindowSeconds must not exceed autoscaling.stableWindowSeconds",
    ),
    (
        {"serving": {"requestTimeoutSeconds": 60, "coldStartHoldSeconds": 90}},
        "serving.coldStartHoldSeconds must not exceed serving.requestTimeoutSeconds",
    ),
    (
        {"serving": {"allowFrom": [{}]}},
        "serving.allowFrom: give namespaceLabels, podLabels or both",
    ),
    (
        {
            "fallback": {
                "providers": [{"type": "OpenAICompatible", "model": "m", "baseURL": "http://x"}],
                "budget": {},
            }
        },
        "fallback.budget needs tokensPerMinute or tokensPerDay",
    ),
    (
        {"rollout": {"maxSurge": 0, "maxUnavailable": "0%"}},
        "rollout.maxSurge and rollout.maxUnavailable must not both be 0",
    ),
    (
        {"rollout": {"analysis": {"maxErrorRatePercent": 30, "tripwireErrorRatePercent": 10}}},
        "rollout.analysis.tripwireErrorRatePercent must be at least maxErrorRatePercent",
    ),
    (
        {"engine": {"tensorParallelSize": 3}, "resources": {"gpus": 4}},
        "engine.tensorParallelSize * engine.pipelineParallelSize must equal resources.gpus",
    ),
    (
        {"engine": {"pipelineParallelSize": 3}, "resources": {"gpus": 4}},
        "resources.gpus must be a multiple of engine.pipelineParallelSize",
    ),
]
# The pod settings' rules, from the CEL table the e2e test also runs.
INVALID += [(c.change, c.message) for c in CASES if c.path.startswith("spec.engine.pod")]


@pytest.mark.parametrize(("change", "message"), INVALID, ids=[m for _, m in INVALID])
def test_invalid_spec_is_refused_with_the_rule_message(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(SpecError) as info:
        model(spec_with(**change))
    assert message in str(info.value)


def all_rules() -> Iterator[api.Rule]:
    seen: set[type] = set()

    def visit(cls: type) -> Iterator[api.Rule]:
        if cls in seen:
            return
        seen.add(cls)
        yield from getattr(cls, "__rules__", ())
        hints = api._hints(cls)
        for f in dataclasses.fields(cls):
            yield from f.metadata["rules"]
            tp, _ = api._unwrap_optional(hints[f.name])
            for candidate in (tp, *getattr(tp, "__args__", ())):
                if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
                    yield from visit(candidate)

    yield from visit(ModelDeploymentSpec)


def test_every_checked_rule_has_a_failing_case() -> None:
    tested = {message for _, message in INVALID}
    untested = [
        r.message
        for r in all_rules()
        if r.check is not None and not any(r.message.endswith(t) or t in r.message for t in tested)
    ]
    assert untested == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"replicas": -1}, "spec.replicas: must be at least 0"),
        ({"replicas": "3"}, "spec.replicas: must be an integer"),
        ({"engine": {"dtype": "int3"}}, "'int3' is not one of auto"),
        ({"engine": {"gpuMemoryUtilization": 0}}, "must be greater than 0"),
        ({"engine": {"gpuMemoryUtilization": 1.5}}, "must be at most 1"),
        ({"resources": {"gpus": 17}}, "spec.resources.gpus: must be at most 16"),
        ({"resources": {"gpuType": "A100"}}, "spec.resources.gpuType: 'A100' does not match"),
        (
            {
                "adapters": [
                    {"name": "a", "source": "hf://x/y"},
                    {"name": "a", "source": "hf://z/w"},
                ]
            },
            "spec.adapters[1].name: duplicate value 'a'",
        ),
        ({"fallback": {"providers": []}}, "must have at least 1 item"),
        ({"autoscaling": {"maxReplicas": 2, "targetRequests": 0}}, "must be at least 1"),
        ({"rollout": {"maxSurge": "25"}}, None),
        ({"rollout": {"maxSurge": "x%"}}, "is not a number of pods or a percentage"),
        ({"rollout": {"maxUnavailable": True}}, "must be a number of pods or a percentage"),
        ({"rollout": {"analysis": {"maxErrorRatePercent": 101}}}, "must be at most 100"),
    ],
)
def test_schema_bounds_are_enforced_in_python(spec: dict[str, Any], message: str | None) -> None:
    if message is None:  # a valid spelling
        model(spec_with(**spec))
        return
    with pytest.raises(SpecError) as info:
        model(spec_with(**spec))
    assert message in str(info.value)


def test_rollout_and_autoscaling_defaults() -> None:
    md = model(spec_with(autoscaling={"maxReplicas": 4}, rollout={"maxSurge": 2}))
    assert md.spec.autoscaling is not None
    assert (md.spec.autoscaling.min_replicas, md.spec.autoscaling.target_requests) == (1, 16)
    assert md.spec.autoscaling.stable_window_seconds == 60
    assert md.spec.autoscaling.panic_window == 6
    small = model(spec_with(autoscaling={"maxReplicas": 2, "stableWindowSeconds": 5}))
    assert small.spec.autoscaling is not None and small.spec.autoscaling.panic_window == 1
    # GPU-friendly: a rollout needs no free GPU unless maxSurge says so.
    assert md.spec.rollout.max_surge == "2"
    assert model(spec_with()).spec.rollout.max_surge == "0"
    assert model(spec_with()).spec.rollout.max_unavailable == "1"
    assert model(spec_with()).spec.rollout.analysis.min_requests == 20
    assert model(spec_with()).spec.serving.hold_seconds == 120
    # A short request timeout shortens the default hold rather than being refused.
    short = model(spec_with(serving={"requestTimeoutSeconds": 30})).spec.serving
    assert (short.cold_start_hold_seconds, short.hold_seconds) == (None, 30)


def test_missing_fields_are_required() -> None:
    with pytest.raises(SpecError, match=r"spec\.model: is required"):
        ModelDeployment.from_body(body({}))
    with pytest.raises(SpecError, match=r"spec\.model\.source: is required"):
        ModelDeployment.from_body(body({"model": {"name": "x"}}))


def test_root_rules_name_and_adapter_names() -> None:
    with pytest.raises(SpecError, match="DNS-1035 label of at most 52"):
        model(name="x" * 53)
    with pytest.raises(SpecError, match="DNS-1035"):
        model(name="9lives")
    with pytest.raises(SpecError, match="adapter names must differ from the served model name"):
        model(spec_with(adapters=[{"name": "llama-3-8b", "source": "hf://a/b"}]))
    with pytest.raises(SpecError, match="adapter names must differ"):
        model(
            {"model": {"source": "hf://a/b"}, "adapters": [{"name": "m", "source": "hf://c/d"}]},
            name="m",
        )


def test_examples_are_valid() -> None:
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert {p.name for p in examples} >= {
        "quickstart.yaml",
        "fallback.yaml",
        "lora.yaml",
        "cache.yaml",
    }
    for path in examples:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ModelDeployment":
                md = ModelDeployment.from_body(
                    {**doc, "metadata": {**doc["metadata"], "namespace": "ns"}}
                )
                assert md.name == doc["metadata"]["name"]


def test_quickstart_example_is_one_a100() -> None:
    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    md = ModelDeployment.from_body(doc)
    assert md.spec.resources.gpus == 1
    assert md.spec.resources.gpu_type == "nvidia-a100-80gb"
    assert md.spec.model.name


def test_status_schema_has_the_gitops_fields() -> None:
    props = root_schema()["properties"]["status"]["properties"]
    assert {
        "observedGeneration",
        "replicas",
        "readyReplicas",
        "conditions",
        "servedModel",
        "url",
        "selector",
        "revision",
        "fallback",
    } <= set(props)
    assert parse(ModelDeploymentStatus, {}).conditions == []
    assert EngineSpec().pipeline_parallel_size == 1
