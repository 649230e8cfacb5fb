"""Pure: where an engine pod goes and what it carries, from its accelerator profile and
spec.engine.pod, merged with what the operator sets. The precedence (docs/placement.md):

- nodeSelector: the profile's labels, then the spec's (a key the profile sets may not be
  given another value); required node affinity: the profile's terms ANDed with the spec's;
  preferred terms, pod (anti-)affinity and topology spread: the spec's, as given.
- tolerations: the profile's, then the spec's (duplicates once).
- runtimeClassName: the spec's, else the profile's. Image: spec.engine.image unless it is
  the default, then the profile's. Env: the profile's, then spec.engine.env (which wins).
- securityContext: the spec's, then securityProfile Restricted's fields (a conflicting
  value is refused rather than overridden silently).
- labels and annotations: added; Hedge's own labels cannot be set (the CRD's rules).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from hedge_core.api import ModelDeployment
from hedge_core.api.constants import DEFAULT_ENGINE_IMAGE
from hedge_operator.placement.profiles import AcceleratorProfile

REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"
PREFERRED = "preferredDuringSchedulingIgnoredDuringExecution"
INVALID_POD_SETTINGS = "InvalidPodSettings"


def engine_image(md: ModelDeployment, profile: AcceleratorProfile | None) -> str:
    """spec.engine.image, or the profile's image while the spec keeps the default."""
    image = md.spec.engine.image
    if profile is not None and profile.image and image == DEFAULT_ENGINE_IMAGE:
        return profile.image
    return image


def profile_env(md: ModelDeployment, profile: AcceleratorProfile | None) -> list[dict[str, Any]]:
    """The profile's environment, less what spec.engine.env sets itself."""
    if profile is None:
        return []
    own = {v.name for v in md.spec.engine.env}
    return [{"name": k, "value": v} for k, v in profile.env if k not in own]


def _and_terms(
    profile_terms: list[Mapping[str, Any]], spec_terms: list[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Terms are ORed and the expressions inside one ANDed: (a or b) and (c or d) is
    a&c or a&d or b&c or b&d."""
    if not profile_terms or not spec_terms:
        return [copy.deepcopy(dict(t)) for t in (profile_terms or spec_terms)]
    out = []
    for p in profile_terms:
        for s in spec_terms:
            term = {
                "matchExpressions": [
                    *copy.deepcopy(list(p.get("matchExpressions") or [])),
                    *copy.deepcopy(list(s.get("matchExpressions") or [])),
                ]
            }
            fields = [*(p.get("matchFields") or []), *(s.get("matchFields") or [])]
            if fields:
                term["matchFields"] = copy.deepcopy(fields)
            out.append(term)
    return out


def affinity(md: ModelDeployment, profile: AcceleratorProfile | None) -> dict[str, Any] | None:
    """The pod's affinity: the spec's, its node affinity merged with the profile's."""
    spec_affinity = copy.deepcopy(dict(md.spec.engine.pod.affinity or {}))
    spec_node = dict(spec_affinity.pop("nodeAffinity", None) or {})
    prof_node = dict(profile.node_affinity or {}) if profile is not None else {}
    node: dict[str, Any] = {}
    terms = _and_terms(
        list((prof_node.get(REQUIRED) or {}).get("nodeSelectorTerms") or []),
        list((spec_node.get(REQUIRED) or {}).get("nodeSelectorTerms") or []),
    )
    if terms:
        node[REQUIRED] = {"nodeSelectorTerms": terms}
    preferred = [*copy.deepcopy(prof_node.get(PREFERRED) or []), *(spec_node.get(PREFERRED) or [])]
    if preferred:
        node[PREFERRED] = preferred
    if node:
        spec_affinity["nodeAffinity"] = node
    return spec_affinity or None


def tolerations(md: ModelDeployment, profile: AcceleratorProfile | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [dict(t) for t in (profile.tolerations if profile else ())]
    for t in md.spec.engine.pod.tolerations:
        item: dict[str, Any] = {"operator": t.operator}
        if t.key is not None:
            item = {"key": t.key, **item}
        for key, value in (
            ("value", t.value),
            ("effect", t.effect),
            ("tolerationSeconds", t.toleration_seconds),
        ):
            if value is not None:
                item[key] = value
        if item not in out:
            out.append(item)
    return out


def place(
    pod_spec: dict[str, Any], md: ModelDeployment, profile: AcceleratorProfile | None
) -> None:
    """Node selector, affinity, tolerations and runtime class onto the pod spec (only the
    keys that have something, so a pod without settings keeps its template)."""
    selector = {**(profile.node_selector if profile else {}), **md.spec.engine.pod.node_selector}
    if selector:
        pod_spec["nodeSelector"] = dict(sorted(selector.items()))
    merged = affinity(md, profile)
    if merged:
        pod_spec["affinity"] = merged
    tols = tolerations(md, profile)
    if tols:
        pod_spec["tolerations"] = tols
    runtime = md.spec.engine.pod.runtime_class_name or (
        profile.runtime_class_name if profile else None
    )
    if runtime:
        pod_spec["runtimeClassName"] = runtime


def apply_pod_settings(
    pod_spec: dict[str, Any], container: dict[str, Any], md: ModelDeployment
) -> None:
    """spec.engine.pod's identity, policy and volume settings (placement is `place`)."""
    pod = md.spec.engine.pod
    if pod.topology_spread_constraints:
        pod_spec["topologySpreadConstraints"] = copy.deepcopy(pod.topology_spread_constraints)
    if pod.priority_class_name:
        pod_spec["priorityClassName"] = pod.priority_class_name
    if pod.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s.name} for s in pod.image_pull_secrets]
    if pod.service_account_name:
        pod_spec["serviceAccountName"] = pod.service_account_name
    if pod.security_context:
        pod_spec["securityContext"] = copy.deepcopy(pod.security_context)
    if pod.container_security_context:
        container["securityContext"] = copy.deepcopy(pod.container_security_context)
    if pod.volume_mounts:
        for m in pod.volume_mounts:
            mount: dict[str, Any] = {"name": m.name, "mountPath": m.mount_path}
            if m.read_only:
                mount["readOnly"] = True
            if m.sub_path:
                mount["subPath"] = m.sub_path
            container["volumeMounts"].append(mount)
    if pod.extra_resources:
        for name, quantity in sorted(pod.extra_resources.items()):
            container["resources"]["requests"][name] = str(quantity)
            container["resources"]["limits"][name] = str(quantity)


def extra_volumes(md: ModelDeployment) -> list[dict[str, Any]]:
    return copy.deepcopy(list(md.spec.engine.pod.volumes))


def pod_metadata(md: ModelDeployment, labels: dict[str, str]) -> dict[str, Any]:
    """The template's metadata: spec labels under Hedge's, annotations merged."""
    pod = md.spec.engine.pod
    metadata: dict[str, Any] = {"labels": {**pod.labels, **labels}}
    annotations = {**md.spec.engine.pod_annotations, **pod.annotations}
    if annotations:
        metadata["annotations"] = dict(sorted(annotations.items()))
    return metadata


def _conflicts(
    given: Mapping[str, Any] | None, pinned: Mapping[str, Any], where: str
) -> str | None:
    for key, value in sorted((given or {}).items()):
        if key in pinned and pinned[key] != value:
            return (
                f"{where}.{key} is {value!r} but securityProfile Restricted sets "
                f"{pinned[key]!r}; remove it or set securityProfile Unset"
            )
    return None


def pod_settings_problem(
    md: ModelDeployment,
    profile: AcceleratorProfile | None,
    restricted_pod: Mapping[str, Any],
    restricted_container: Mapping[str, Any],
) -> str | None:
    """Why spec.engine.pod cannot be merged with the profile and the operator's settings
    (None: it can). What the CRD's rules cannot see: the profile and the security profile."""
    pod = md.spec.engine.pod
    if profile is not None and md.spec.resources.gpus > 0:
        for key, value in sorted(pod.node_selector.items()):
            if key in profile.node_selector and profile.node_selector[key] != value:
                return (
                    f"spec.engine.pod.nodeSelector {key}={value} contradicts accelerator "
                    f"profile {profile.name or '(default)'!r}, which selects "
                    f"{key}={profile.node_selector[key]}; choose another gpuType instead"
                )
        if profile.resource in pod.extra_resources:
            return (
                f"spec.engine.pod.extraResources may not request {profile.resource}: it is "
                f"the GPU of accelerator profile {profile.name or '(default)'!r}, set by "
                "spec.resources.gpus"
            )
    if md.spec.engine.security_profile == "Restricted":
        return _conflicts(
            pod.security_context, restricted_pod, "spec.engine.pod.securityContext"
        ) or _conflicts(
            pod.container_security_context,
            restricted_container,
            "spec.engine.pod.containerSecurityContext",
        )
    return None
