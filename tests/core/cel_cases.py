"""One bad-spec case per CEL rule of the CRD: the table both the unit tests (the rule's
Python check) and the e2e test (the real API server evaluating the CEL) read, so a CEL
string and its Python twin can never disagree unnoticed.

A rule is named by where it sits in the CRD's schema (`spec.model.source`,
`spec.adapters[].source`, `spec`, `` for the object) and its message. Each case changes
the valid `BASE` so that it breaks that rule and no other; the expected error is the rule's
own message. Transition rules (they compare with `oldSelf`, which only the API server sees)
have a `before`: the object is created with it, then updated with the change.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from hedge_core.api import API_VERSION, KIND, crd

#: The valid object every case starts from (as small as the API allows).
BASE_NAME = "cel-case"
BASE_SPEC: dict[str, Any] = {"model": {"source": "hf://org/model"}}
_SECRET = {"name": "s", "key": "k"}


def merge(base: Mapping[str, Any], change: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `change` merged in: objects key by key, anything else replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in change.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def manifest(spec: Mapping[str, Any], name: str = BASE_NAME) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "spec": spec}


@dataclass(frozen=True)
class CelCase:
    path: str  # where the rule sits in the CRD schema ("" for the object itself)
    message: str  # the rule's message: what kubectl and the operator both say
    change: dict[str, Any]  # merged into BASE_SPEC
    name: str = BASE_NAME
    before: dict[str, Any] | None = field(default=None)  # transition rules: merged first

    @property
    def rule(self) -> tuple[str, str]:
        return (self.path, self.message)

    @property
    def id(self) -> str:
        return f"{self.path or '<object>'}: {self.message}"

    @property
    def transition(self) -> bool:
        return self.before is not None

    def body(self) -> dict[str, Any]:
        """The object that breaks the rule (for a transition rule: the updated object)."""
        start = merge(BASE_SPEC, self.before or {})
        return manifest(merge(start, self.change), self.name)

    def before_body(self) -> dict[str, Any]:
        assert self.before is not None
        return manifest(merge(BASE_SPEC, self.before), self.name)


def _source_cases(path: str, wrap: Any) -> list[CelCase]:
    return [
        CelCase(path, "source must start with hf://, s3://, gs:// or pvc://", wrap("ftp://x/y")),
        CelCase(path, "hf:// sources look like hf://org/name", wrap("hf://a/b/c")),
        CelCase(path, "s3:// and gs:// sources look like s3://bucket/path", wrap("s3://B/x")),
        CelCase(path, "pvc:// sources look like pvc://claim/path", wrap("pvc://Claim/x")),
        CelCase(path, "source must not contain '..'", wrap("pvc://claim/../etc")),
    ]


def _openai_compatible(**extra: Any) -> dict[str, Any]:
    provider = {"type": "OpenAICompatible", "model": "m", "baseURL": "http://x"}
    return {"providers": [provider], **extra}


CASES: list[CelCase] = [
    *_source_cases("spec.model.source", lambda s: {"model": {"source": s}}),
    *_source_cases(
        "spec.adapters[].source", lambda s: {"adapters": [{"name": "adapter", "source": s}]}
    ),
    CelCase(
        "spec.model",
        "model.revision is only supported for hf:// sources",
        {"model": {"source": "s3://bucket/m", "revision": "main"}},
    ),
    CelCase(
        "spec.model",
        "model.credentialsSecretRef does not apply to pvc:// sources",
        {"model": {"source": "pvc://c/m", "credentialsSecretRef": {"name": "s"}}},
    ),
    CelCase(
        "spec.engine.env[]",
        "env: set exactly one of value and secretKeyRef",
        {"engine": {"env": [{"name": "A"}]}},
    ),
    CelCase(
        "spec.resources",
        "resources.gpuType needs resources.gpus > 0",
        {"resources": {"gpus": 0, "gpuType": "nvidia-l4"}},
    ),
    CelCase(
        "spec.cache",
        "cache.existingClaim and cache.storageClassName are mutually exclusive",
        {"cache": {"existingClaim": "c", "storageClassName": "fast"}},
    ),
    CelCase(
        "spec.cache.storageClassName",
        "cache.storageClassName is immutable",
        {"cache": {"storageClassName": "slow"}},
        name="cel-transition",
        before={"cache": {"storageClassName": "fast"}},
    ),
    CelCase(
        "spec.autoscaling",
        "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
        {"autoscaling": {"minReplicas": 3, "maxReplicas": 2}},
    ),
    CelCase(
        "spec.autoscaling",
        "autoscaling.panicWindowSeconds must not exceed autoscaling.stableWindowSeconds",
        {"autoscaling": {"maxReplicas": 2, "stableWindowSeconds": 10, "panicWindowSeconds": 20}},
    ),
    CelCase(
        "spec.serving",
        "serving.coldStartHoldSeconds must not exceed serving.requestTimeoutSeconds",
        {"serving": {"requestTimeoutSeconds": 60, "coldStartHoldSeconds": 90}},
    ),
    CelCase(
        "spec.serving.allowFrom[]",
        "serving.allowFrom: give namespaceLabels, podLabels or both",
        {"serving": {"allowFrom": [{}]}},
    ),
    CelCase(
        "spec.engine.pod.tolerations[]",
        "a toleration without a key needs operator Exists",
        {"engine": {"pod": {"tolerations": [{"operator": "Equal", "value": "x"}]}}},
    ),
    CelCase(
        "spec.engine.pod.tolerations[]",
        "a toleration with operator Exists takes no value",
        {"engine": {"pod": {"tolerations": [{"key": "k", "operator": "Exists", "value": "x"}]}}},
    ),
    CelCase(
        "spec.engine.pod.tolerations[]",
        "tolerationSeconds applies only to effect NoExecute",
        {
            "engine": {
                "pod": {
                    "tolerations": [{"key": "k", "effect": "NoSchedule", "tolerationSeconds": 30}]
                }
            }
        },
    ),
    CelCase(
        "spec.engine.pod.volumeMounts[].mountPath",
        "engine.pod.volumeMounts: /models, /dev/shm, /mnt/pvc and /var/run/secrets/hedge "
        "are mounted by the operator",
        {
            "engine": {
                "pod": {
                    "volumes": [{"name": "data", "emptyDir": {}}],
                    "volumeMounts": [{"name": "data", "mountPath": "/models/extra"}],
                }
            }
        },
    ),
    CelCase(
        "spec.engine.pod.volumeMounts[].subPath",
        "engine.pod.volumeMounts.subPath is relative and has no '..'",
        {
            "engine": {
                "pod": {
                    "volumes": [{"name": "data", "emptyDir": {}}],
                    "volumeMounts": [{"name": "data", "mountPath": "/data", "subPath": "../x"}],
                }
            }
        },
    ),
    CelCase(
        "spec.engine.pod",
        "engine.pod.labels: hedge.dev/*, app.kubernetes.io/managed-by and "
        "app.kubernetes.io/part-of are set by the operator",
        {"engine": {"pod": {"labels": {"hedge.dev/model-deployment": "other"}}}},
    ),
    CelCase(
        "spec.engine.pod",
        "engine.pod.extraResources: only extended resources other than the GPU; the GPU "
        "count is resources.gpus and its resource comes from the accelerator profile",
        {"engine": {"pod": {"extraResources": {"nvidia.com/gpu": 8}}}},
    ),
    CelCase(
        "spec.engine.pod",
        "engine.pod.volumes: dshm, models, gcs-credentials and pvc-* are the operator's "
        "volume names",
        {"engine": {"pod": {"volumes": [{"name": "models", "emptyDir": {}}]}}},
    ),
    CelCase(
        "spec.engine.pod",
        "engine.pod.volumeMounts: each mount names one of engine.pod.volumes",
        {"engine": {"pod": {"volumeMounts": [{"name": "nowhere", "mountPath": "/data"}]}}},
    ),
    CelCase(
        "spec.fallback.providers[]",
        "AzureOpenAI providers need baseURL and apiVersion",
        {
            "fallback": {
                "providers": [{"type": "AzureOpenAI", "model": "m", "apiKeySecretRef": _SECRET}]
            }
        },
    ),
    CelCase(
        "spec.fallback.providers[]",
        "OpenAICompatible providers need baseURL",
        {"fallback": {"providers": [{"type": "OpenAICompatible", "model": "m"}]}},
    ),
    CelCase(
        "spec.fallback.providers[]",
        "OpenAI, AzureOpenAI and Anthropic providers need apiKeySecretRef",
        {"fallback": {"providers": [{"type": "OpenAI", "model": "m"}]}},
    ),
    CelCase(
        "spec.fallback.providers[]",
        "apiVersion and deployment apply to AzureOpenAI providers only",
        {
            "fallback": {
                "providers": [
                    {
                        "type": "Anthropic",
                        "model": "m",
                        "apiVersion": "1",
                        "apiKeySecretRef": _SECRET,
                    }
                ]
            }
        },
    ),
    CelCase(
        "spec.fallback.budget",
        "fallback.budget needs tokensPerMinute or tokensPerDay",
        {"fallback": _openai_compatible(budget={})},
    ),
    CelCase(
        "spec.fallback",
        "fallback needs at least one of onUnavailable, onOverload and onError",
        {"fallback": _openai_compatible(onUnavailable=False, onOverload=False, onError=False)},
    ),
    CelCase(
        "spec.rollout.analysis",
        "rollout.analysis.tripwireErrorRatePercent must be at least maxErrorRatePercent",
        {"rollout": {"analysis": {"maxErrorRatePercent": 30, "tripwireErrorRatePercent": 10}}},
    ),
    CelCase(
        "spec.rollout",
        "rollout.steps apply to the Canary strategy only",
        {"rollout": {"strategy": "RollingUpdate", "steps": [{"weight": 10}]}},
    ),
    CelCase(
        "spec.rollout",
        "the Canary strategy needs at least one step",
        {"rollout": {"strategy": "Canary"}},
    ),
    CelCase(
        "spec.rollout",
        "rollout.steps must not decrease in weight",
        {"rollout": {"strategy": "Canary", "steps": [{"weight": 50}, {"weight": 10}]}},
    ),
    CelCase(
        "spec.rollout",
        "rollout.maxSurge and rollout.maxUnavailable must not both be 0",
        {"rollout": {"maxSurge": 0, "maxUnavailable": "0%"}},
    ),
    CelCase(
        "spec",
        "engine.tensorParallelSize * engine.pipelineParallelSize must equal resources.gpus",
        {"engine": {"tensorParallelSize": 3}, "resources": {"gpus": 4}},
    ),
    CelCase(
        "spec",
        "resources.gpus must be a multiple of engine.pipelineParallelSize",
        {"engine": {"pipelineParallelSize": 3}, "resources": {"gpus": 4}},
    ),
    CelCase(
        "",
        "metadata.name must be a DNS-1035 label of at most 52 characters "
        "(it names the Service and the per-revision Deployments)",
        {},
        name="x" * 53,
    ),
    CelCase(
        "",
        "adapter names must differ from the served model name",
        {"model": {"name": "served"}, "adapters": [{"name": "served", "source": "hf://a/b"}]},
    ),
]


def crd_rules() -> Iterator[tuple[str, str]]:
    """Every CEL rule of the generated CRD, as (schema path, message)."""
    root = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    def walk(schema: Mapping[str, Any], path: str) -> Iterator[tuple[str, str]]:
        for rule in schema.get("x-kubernetes-validations", ()):
            yield (path, rule["message"])
        for name, sub in (schema.get("properties") or {}).items():
            yield from walk(sub, f"{path}.{name}" if path else name)
        if "items" in schema:
            yield from walk(schema["items"], f"{path}[]")

    yield from walk(root, "")
