"""Builders of ModelDeployment bodies and children for the operator's unit tests."""

from __future__ import annotations

import copy
from typing import Any

from hedge_operator.api import API_VERSION, KIND, ModelDeployment

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
