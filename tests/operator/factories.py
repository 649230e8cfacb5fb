"""Builders of ModelDeployment bodies and children for the operator's unit tests."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from hedge_core.api import API_VERSION, KIND, ModelDeployment

QUICKSTART_SPEC: dict[str, Any] = {
    "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "name": "llama-3-8b"},
    "resources": {"gpus": 1, "gpuType": "nvidia-a100-80gb"},
}


def spec_with(**changes: Any) -> dict[str, Any]:
    """The quickstart spec with top-level blocks merged in (a dict merges one level deep)."""
    spec = copy.deepcopy(QUICKSTART_SPEC)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def body(
    spec: dict[str, Any] | None = None,
    *,
    name: str = "llama",
    namespace: str = "team-a",
    uid: str = "uid-1",
    generation: int = 1,
    status: dict[str, Any] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "generation": generation},
        "spec": copy.deepcopy(spec if spec is not None else QUICKSTART_SPEC),
    }
    if status is not None:
        out["status"] = status
    return out


def model(spec: dict[str, Any] | None = None, **kwargs: Any) -> ModelDeployment:
    return ModelDeployment.from_body(body(spec, **kwargs))


def deployment_body(
    name: str,
    revision: str,
    *,
    spec_replicas: int = 1,
    replicas: int | None = None,
    ready: int = 0,
    available: int | None = None,
    generation: int = 1,
    observed_generation: int | None = None,
    owner_uid: str = "uid-1",
    created: str = "2026-01-01T00:00:00Z",
    md: str = "llama",
) -> dict[str, Any]:
    """A Deployment as the API server reports it (status included)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "generation": generation,
            "creationTimestamp": created,
            "labels": {
                "app.kubernetes.io/managed-by": "hedge-operator",
                "hedge.dev/model-deployment": md,
                "hedge.dev/component": "engine",
                "hedge.dev/revision": revision,
            },
            "ownerReferences": [{"uid": owner_uid, "kind": "ModelDeployment", "name": md}],
        },
        "spec": {"replicas": spec_replicas},
        "status": {
            "observedGeneration": generation
            if observed_generation is None
            else observed_generation,
            "replicas": spec_replicas if replicas is None else replicas,
            "readyReplicas": ready,
            "availableReplicas": ready if available is None else available,
            "updatedReplicas": spec_replicas if replicas is None else replicas,
        },
    }


def pod_body(
    name: str,
    revision: str,
    *,
    ready: bool = False,
    waiting: str | None = None,
    unschedulable: str | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": []}
    if unschedulable is not None:
        status["phase"] = "Pending"
        status["conditions"].append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": unschedulable,
            }
        )
    else:
        status["phase"] = "Running"
        status["conditions"].append({"type": "Ready", "status": "True" if ready else "False"})
        state: dict[str, Any] = (
            {"waiting": {"reason": waiting, "message": f"{waiting} details"}}
            if waiting
            else {"running": {}}
        )
        status["containerStatuses"] = [
            {
                "name": "engine",
                "ready": ready,
                "restartCount": 3 if waiting else 0,
                "state": state,
            }
        ]
        if waiting == "CrashLoopBackOff":
            status["containerStatuses"][0]["lastState"] = {
                "terminated": {"exitCode": 1, "reason": "Error"}
            }
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "team-a",
        "labels": {
            "hedge.dev/model-deployment": "llama",
            "hedge.dev/component": "engine",
            "hedge.dev/revision": revision,
        },
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "status": status}


def as_served(manifest: Mapping[str, Any], *, ready: int | None = None) -> dict[str, Any]:
    """What the API server returns after applying `manifest`: defaults added, quantities in
    canonical form, a status for Deployments (`ready` pods ready, default: all)."""
    obj = copy.deepcopy(dict(manifest))
    meta = obj["metadata"]
    meta.setdefault("uid", f"uid-{meta['name']}")
    meta.setdefault("resourceVersion", "1")
    meta.setdefault("generation", 1)
    meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
    meta["managedFields"] = [{"manager": "hedge-operator", "operation": "Apply"}]
    kind = obj["kind"]
    if kind == "Deployment":
        spec = obj["spec"]
        spec.setdefault(
            "strategy",
            {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
            },
        )
        pod = spec["template"]["spec"]
        pod.setdefault("restartPolicy", "Always")
        pod.setdefault("dnsPolicy", "ClusterFirst")
        for c in pod["containers"] + pod.get("initContainers", []):
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in c:
                    c[probe]["httpGet"].setdefault("scheme", "HTTP")
                    c[probe].setdefault("successThreshold", 1)
        replicas = spec["replicas"]
        n = replicas if ready is None else ready
        obj["status"] = {
            "observedGeneration": 1,
            "replicas": replicas,
            "readyReplicas": n,
            "availableReplicas": n,
            "updatedReplicas": replicas,
        }
    elif kind == "Service":
        obj["spec"].setdefault("clusterIP", "10.96.0.10")  # "None" (headless) stays
        obj["spec"]["sessionAffinity"] = "None"
    elif kind == "PersistentVolumeClaim":
        obj["spec"]["volumeMode"] = "Filesystem"
        obj["status"] = {"phase": "Bound"}
    return obj
