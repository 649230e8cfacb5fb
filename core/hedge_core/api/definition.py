"""The CustomResourceDefinition of ModelDeployment, assembled from the typed API
(`python -m hedge_core.api` prints it; scripts/generate-crds writes crds/)."""

from __future__ import annotations

from typing import Any

import yaml

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

PRINTER_COLUMNS = [
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


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition of ModelDeployment."""
    root = {
        "type": "object",
        "description": "ModelDeployment serves an open-weight LLM with vLLM on this cluster's "
        "GPUs and tells the Hedge gateway how to route and fall back for it.",
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "APIVersion of this representation of the object.",
            },
            "kind": {"type": "string", "description": "Kind of the object (ModelDeployment)."},
            # The API server forbids anything but the type on metadata (even a description).
            "metadata": {"type": "object"},
            "spec": {
                "description": ModelDeploymentSpec.__doc__,
                **object_schema(ModelDeploymentSpec),
            },
            "status": {
                "description": ModelDeploymentStatus.__doc__,
                **object_schema(ModelDeploymentStatus),
            },
        },
        "required": ["spec"],
        "x-kubernetes-validations": [{"rule": r.rule, "message": r.message} for r in ROOT_RULES],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/part-of": "hedge"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


CRD_HEADER = "# Generated from hedge_core.api by scripts/generate-crds; do not edit by hand.\n"


def crd_yaml() -> str:
    return CRD_HEADER + yaml.safe_dump(crd(), sort_keys=False, width=100, allow_unicode=True)
