"""The CustomResourceDefinitions of ModelDeployment and ClientPolicy, assembled from the
typed API (`python -m hedge_core.api` prints ModelDeployment's; scripts/generate-crds writes
every file of `CRD_FILES` into crds/)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import yaml

from hedge_core.api.clientpolicy import (
    CLIENT_POLICY_KIND,
    CLIENT_POLICY_PLURAL,
    CLIENT_POLICY_SHORT_NAMES,
    CLIENT_POLICY_SINGULAR,
    ClientPolicySpec,
    ClientPolicyStatus,
)
from hedge_core.api.constants import (
    CATEGORIES,
    CRD_NAME,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
)
from hedge_core.api.resource import ROOT_RULES
from hedge_core.api.schema import object_schema
from hedge_core.api.spec import ModelDeploymentSpec
from hedge_core.api.status import ModelDeploymentStatus

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {
        "name": "Model",
        "type": "string",
        "jsonPath": ".status.servedModel",
        "description": "Served model name",
    },
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        "description": "Ready condition",
    },
    {
        "name": "Replicas",
        "type": "integer",
        "jsonPath": ".status.replicas",
        "description": "Engine pods, all revisions",
    },
    {
        "name": "Desired",
        "type": "integer",
        "jsonPath": ".status.autoscaling.desiredReplicas",
        "description": "Replicas the autoscaler asks for",
    },
    {
        "name": "Revision",
        "type": "string",
        "jsonPath": ".status.revision",
        "description": "Current revision (pod template hash)",
    },
    {
        "name": "Step",
        "type": "integer",
        "jsonPath": ".status.rollout.step",
        "description": "Canary step",
    },
    {
        "name": "Weight",
        "type": "integer",
        "jsonPath": ".status.rollout.canaryWeight",
        "description": "Percent of traffic on the canary revision",
    },
    {
        "name": "Fallback",
        "type": "string",
        "jsonPath": ".status.fallback",
        "description": "Fallback providers",
    },
    {
        "name": "Age",
        "type": "date",
        "jsonPath": ".metadata.creationTimestamp",
    },
    {
        "name": "Available",
        "type": "integer",
        "jsonPath": ".status.readyReplicas",
        "description": "Ready engine pods",
        "priority": 1,
    },
    {
        "name": "Reason",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
        "description": "Why Ready is what it is",
        "priority": 1,
    },
]


def _crd(
    *,
    kind: str,
    plural: str,
    singular: str,
    short_names: tuple[str, ...],
    description: str,
    spec: type,
    status: type,
    root_rules: tuple[Any, ...],
    subresources: Mapping[str, Any],
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    """A namespaced CRD of the hedge.dev group from its spec and status dataclasses."""
    root: dict[str, Any] = {
        "type": "object",
        "description": description,
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "APIVersion of this representation of the object.",
            },
            "kind": {"type": "string", "description": f"Kind of the object ({kind})."},
            # The API server forbids anything but the type on metadata (even a description).
            "metadata": {"type": "object"},
            "spec": {"description": spec.__doc__, **object_schema(spec)},
            "status": {"description": status.__doc__, **object_schema(status)},
        },
        "required": ["spec"],
    }
    if root_rules:
        root["x-kubernetes-validations"] = [
            {"rule": r.rule, "message": r.message} for r in root_rules
        ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "hedge"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": list(short_names),
                "categories": list(CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": dict(subresources),
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition of ModelDeployment."""
    out = _crd(
        kind=KIND,
        plural=PLURAL,
        singular=SINGULAR,
        short_names=SHORT_NAMES,
        description="ModelDeployment serves an open-weight LLM with vLLM on this cluster's "
        "GPUs and tells the Hedge gateway how to route and fall back for it.",
        spec=ModelDeploymentSpec,
        status=ModelDeploymentStatus,
        root_rules=ROOT_RULES,
        subresources={
            "status": {},
            "scale": {
                "specReplicasPath": ".spec.replicas",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector",
            },
        },
        columns=PRINTER_COLUMNS,
    )
    assert out["metadata"]["name"] == CRD_NAME
    return out


CLIENT_POLICY_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {
        "name": "Priority",
        "type": "string",
        "jsonPath": ".spec.priority",
        "description": "Whose requests wait and are shed first",
    },
    {
        "name": "Weight",
        "type": "integer",
        "jsonPath": ".spec.weight",
        "description": "Fair-share weight",
    },
    {
        "name": "Keys",
        "type": "integer",
        "jsonPath": ".status.keys",
        "description": "Client-key entries found in the Secrets",
    },
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        "description": "Ready condition",
    },
    {
        "name": "Age",
        "type": "date",
        "jsonPath": ".metadata.creationTimestamp",
    },
    {
        "name": "Reason",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
        "description": "Why Ready is what it is",
        "priority": 1,
    },
]


def client_policy_crd() -> dict[str, Any]:
    """The CustomResourceDefinition of ClientPolicy."""
    return _crd(
        kind=CLIENT_POLICY_KIND,
        plural=CLIENT_POLICY_PLURAL,
        singular=CLIENT_POLICY_SINGULAR,
        short_names=CLIENT_POLICY_SHORT_NAMES,
        description="ClientPolicy makes its namespace a tenant of the Hedge gateway: the "
        "client API keys (from labelled Secrets in the namespace) that act for it, and the "
        "limits, priority and share of its requests.",
        spec=ClientPolicySpec,
        status=ClientPolicyStatus,
        root_rules=(),
        subresources={"status": {}},
        columns=CLIENT_POLICY_PRINTER_COLUMNS,
    )


CRD_HEADER = "# Generated from hedge_core.api by scripts/generate-crds; do not edit by hand.\n"


def _yaml(definition: Mapping[str, Any]) -> str:
    return CRD_HEADER + yaml.safe_dump(
        dict(definition), sort_keys=False, width=100, allow_unicode=True
    )


def crd_yaml() -> str:
    return _yaml(crd())


def client_policy_crd_yaml() -> str:
    return _yaml(client_policy_crd())


#: Every CRD file in crds/ and what writes it (scripts/generate-crds; a test holds the
#: committed files to these).
CRD_FILES: dict[str, Callable[[], str]] = {
    f"{GROUP}_{PLURAL}.yaml": crd_yaml,
    f"{GROUP}_{CLIENT_POLICY_PLURAL}.yaml": client_policy_crd_yaml,
}
