"""Pure: accelerator profiles, the operator-level answer to "how does a pod find and ask
for this kind of accelerator on this platform": the extended resource it requests, the node
labels (selector or node affinity) that find the nodes, the taints it tolerates, and the
runtime class, engine image and environment the accelerator needs.

`spec.resources.gpuType` names a profile. The shipped catalog (`placement.catalog`) covers
the NVIDIA GPU operator, GKE, EKS (Karpenter and managed node groups), AKS and AMD; a
platform team replaces or extends it with a YAML file (`hedge operator
--accelerator-profiles FILE`, the chart's `operator.acceleratorProfiles`), parsed here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hedge_core.api.constants import DNS_LABEL, ENV_NAME, QUANTITY_PATTERN

NVIDIA_GPU = "nvidia.com/gpu"
AMD_GPU = "amd.com/gpu"

#: The toleration of the taint NVIDIA's GPU operator, GKE and most GPU node pools put on
#: GPU nodes (`nvidia.com/gpu=<anything>:NoSchedule`).
NVIDIA_TOLERATION: Mapping[str, str] = {
    "key": NVIDIA_GPU,
    "operator": "Exists",
    "effect": "NoSchedule",
}

#: An extended resource name: `<domain>/<name>` (kubernetes.io/ and requests.* are the
#: cluster's own, never an accelerator).
RESOURCE_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+[a-z]{2,}/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
#: A label key: an optional DNS-subdomain prefix and a name of up to 63 characters.
LABEL_KEY = (
    r"^(([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]*[a-z0-9])?/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"
SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


class ProfileError(ValueError):
    """An accelerator profile (or profiles file) that cannot be used; the message names the
    profile and the field."""


@dataclass(frozen=True)
class AcceleratorProfile:
    """One kind of accelerator on one kind of platform. The Kubernetes-shaped parts
    (`node_affinity`, `tolerations`) are kept as the JSON the pod spec takes."""

    name: str
    #: The extended resource each GPU is requested as (`nvidia.com/gpu`, `amd.com/gpu`, …).
    resource: str = NVIDIA_GPU
    #: Node labels every node of this kind carries (ANDed).
    node_selector: Mapping[str, str] = field(default_factory=dict)
    #: A Kubernetes NodeAffinity (`requiredDuringSchedulingIgnoredDuringExecution`,
    #: `preferredDuringSchedulingIgnoredDuringExecution`), for what a selector cannot say
    #: ("any of these instance types"); None: the selector alone.
    node_affinity: Mapping[str, Any] | None = None
    tolerations: tuple[Mapping[str, Any], ...] = ()
    runtime_class_name: str | None = None
    #: The engine image for this accelerator (e.g. the ROCm build of the pinned vLLM);
    #: None: spec.engine.image. Used only while spec.engine.image is the default.
    image: str | None = None
    #: Environment of the engine container (name, value), before spec.engine.env.
    env: tuple[tuple[str, str], ...] = ()
    #: Memory of one device (a quantity such as 80Gi), for the docs and sizing checks.
    gpu_memory: str | None = None
    #: Who documents the node shape (the docs' table): e.g. "GKE", "NVIDIA GPU operator".
    platform: str = ""
    description: str = ""
    #: Where the platform documents the labels and taints this profile relies on.
    docs: tuple[str, ...] = ()

    def required_terms(self) -> list[Mapping[str, Any]]:
        """The node affinity's required nodeSelectorTerms (ORed), [] without any."""
        required = (self.node_affinity or {}).get("requiredDuringSchedulingIgnoredDuringExecution")
        return list((required or {}).get("nodeSelectorTerms") or [])

    def selector_text(self) -> str:
        """What finds the nodes, as kubectl's selector syntax: `k=v,k2=v2`, then each
        required node-affinity term (ORed terms joined by ` or `)."""
        parts = [f"{k}={v}" for k, v in sorted(self.node_selector.items())]
        terms = [_term_text(t) for t in self.required_terms()]
        terms = [t for t in terms if t]
        if terms:
            parts.append(terms[0] if len(terms) == 1 else "(" + " or ".join(terms) + ")")
        return ",".join(parts) if parts else "any node"


def _term_text(term: Mapping[str, Any]) -> str:
    out = []
    for expr in term.get("matchExpressions") or []:
        key, op, values = expr.get("key", ""), expr.get("operator", ""), expr.get("values") or []
        if op == "Exists":
            out.append(str(key))
        elif op == "DoesNotExist":
            out.append(f"!{key}")
        elif op in ("Gt", "Lt"):
            out.append(f"{key} {'>' if op == 'Gt' else '<'} {values[0] if values else ''}")
        else:
            out.append(f"{key} {op.lower()} ({','.join(str(v) for v in values)})")
    return ",".join(out)


#: When spec.resources.gpuType is unset: any NVIDIA GPU (the operator's behaviour before
#: profiles; `hedge operator --default-accelerator-profile` names another).
ANY_NVIDIA_GPU = AcceleratorProfile(
    name="",
    tolerations=(dict(NVIDIA_TOLERATION),),
    platform="any",
    description="any NVIDIA GPU (spec.resources.gpuType unset)",
)


def resolve(
    gpu_type: str | None,
    profiles: Mapping[str, AcceleratorProfile],
    default: str | None = None,
) -> AcceleratorProfile | None:
    """The profile an engine pod of `gpu_type` uses: the named one, else the default
    profile, else any NVIDIA GPU. None: the named profile (or default) is unknown
    (validation reports UnknownGPUType before anything is built)."""
    name = gpu_type or default
    if name is None:
        return ANY_NVIDIA_GPU
    return profiles.get(name)


# --------------------------------------------------------------------------- the file

_FIELDS = {
    "resource",
    "nodeSelector",
    "nodeAffinity",
    "tolerations",
    "runtimeClassName",
    "image",
    "env",
    "gpuMemory",
    "platform",
    "description",
    "docs",
}
_TOLERATION_FIELDS = {"key", "operator", "value", "effect", "tolerationSeconds"}


def parse_profile(name: str, data: Any) -> AcceleratorProfile:
    """One profile from its camelCase YAML form; raises ProfileError naming the field."""
    where = f"accelerator profile {name!r}"
    if not isinstance(name, str) or not re.search(DNS_LABEL, name) or len(name) > 63:
        raise ProfileError(f"{where}: the name must be a DNS label (a-z, 0-9, '-'; 63 at most)")
    if not isinstance(data, Mapping):
        raise ProfileError(f"{where}: expected a mapping of fields")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ProfileError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}")
    resource = data.get("resource", NVIDIA_GPU)
    if not isinstance(resource, str) or not re.search(RESOURCE_NAME, resource):
        raise ProfileError(
            f"{where}: resource {resource!r} is not an extended resource name such as "
            "nvidia.com/gpu or amd.com/gpu"
        )
    if resource.startswith(("kubernetes.io/", "requests.")):
        raise ProfileError(f"{where}: resource {resource!r} is not an extended resource")
    return AcceleratorProfile(
        name=name,
        resource=resource,
        node_selector=_labels(f"{where}: nodeSelector", data.get("nodeSelector") or {}),
        node_affinity=_node_affinity(f"{where}: nodeAffinity", data.get("nodeAffinity")),
        tolerations=tuple(
            _toleration(f"{where}: tolerations[{i}]", t)
            for i, t in enumerate(_list(f"{where}: tolerations", data.get("tolerations") or []))
        ),
        runtime_class_name=_optional_name(
            f"{where}: runtimeClassName", data.get("runtimeClassName")
        ),
        image=_optional_text(f"{where}: image", data.get("image")),
        env=_env(f"{where}: env", data.get("env") or []),
        gpu_memory=_quantity(f"{where}: gpuMemory", data.get("gpuMemory")),
        platform=_optional_text(f"{where}: platform", data.get("platform")) or "",
        description=_optional_text(f"{where}: description", data.get("description")) or "",
        docs=tuple(
            _text(f"{where}: docs[{i}]", d)
            for i, d in enumerate(_list(f"{where}: docs", data.get("docs") or []))
        ),
    )


def parse_profiles(data: Any, source: str) -> dict[str, AcceleratorProfile]:
    """A profiles document: `{acceleratorProfiles: {name: profile, ...}}` (or the mapping
    itself). `source` names the file in errors."""
    if isinstance(data, Mapping) and "acceleratorProfiles" in data:
        data = data["acceleratorProfiles"]
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ProfileError(f"{source}: expected a mapping of profile name -> profile")
    out: dict[str, AcceleratorProfile] = {}
    for name, body in data.items():
        try:
            out[str(name)] = parse_profile(name, body)
        except ProfileError as err:
            raise ProfileError(f"{source}: {err}") from None
    return out


def profile_json(profile: AcceleratorProfile) -> dict[str, Any]:
    """The camelCase form `parse_profile` reads (what `hedge operator --print-profiles`
    and the docs show)."""
    out: dict[str, Any] = {"resource": profile.resource}
    if profile.node_selector:
        out["nodeSelector"] = dict(profile.node_selector)
    if profile.node_affinity:
        out["nodeAffinity"] = _copy(profile.node_affinity)
    if profile.tolerations:
        out["tolerations"] = [dict(t) for t in profile.tolerations]
    if profile.runtime_class_name:
        out["runtimeClassName"] = profile.runtime_class_name
    if profile.image:
        out["image"] = profile.image
    if profile.env:
        out["env"] = [{"name": k, "value": v} for k, v in profile.env]
    if profile.gpu_memory:
        out["gpuMemory"] = profile.gpu_memory
    for key, value in (("platform", profile.platform), ("description", profile.description)):
        if value:
            out[key] = value
    if profile.docs:
        out["docs"] = list(profile.docs)
    return out


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_copy(v) for v in value]
    return value


def _list(where: str, value: Any) -> Sequence[Any]:
    if not isinstance(value, list):
        raise ProfileError(f"{where}: expected a list")
    return value


def _text(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ProfileError(f"{where}: expected a non-empty string")
    return value


def _optional_text(where: str, value: Any) -> str | None:
    return None if value is None else _text(where, value)


def _optional_name(where: str, value: Any) -> str | None:
    if value is None:
        return None
    text = _text(where, value)
    if not re.search(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", text) or len(text) > 253:
        raise ProfileError(f"{where}: {text!r} is not a DNS subdomain name")
    return text


def _quantity(where: str, value: Any) -> str | None:
    if value is None:
        return None
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not re.search(QUANTITY_PATTERN, text):
        raise ProfileError(f"{where}: {value!r} is not a quantity such as 80Gi")
    return text


def _labels(where: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ProfileError(f"{where}: expected a mapping of label -> value")
    out: dict[str, str] = {}
    for key, label in value.items():
        if not isinstance(key, str) or not re.search(LABEL_KEY, key):
            raise ProfileError(f"{where}: {key!r} is not a label key")
        if not isinstance(label, str) or not re.search(LABEL_VALUE, label):
            raise ProfileError(f"{where}: {key}: {label!r} is not a label value (quote numbers)")
        out[key] = label
    return out


def _expression(where: str, expr: Any) -> dict[str, Any]:
    if not isinstance(expr, Mapping) or set(expr) - {"key", "operator", "values"}:
        raise ProfileError(f"{where}: expected key, operator and values")
    key, op, values = expr.get("key"), expr.get("operator"), expr.get("values")
    if not isinstance(key, str) or not re.search(LABEL_KEY, key):
        raise ProfileError(f"{where}: {key!r} is not a label key")
    if op not in SELECTOR_OPERATORS:
        raise ProfileError(
            f"{where}: operator {op!r} is not one of {', '.join(SELECTOR_OPERATORS)}"
        )
    out: dict[str, Any] = {"key": key, "operator": op}
    if op in ("Exists", "DoesNotExist"):
        if values:
            raise ProfileError(f"{where}: operator {op} takes no values")
        return out
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise ProfileError(f"{where}: operator {op} needs a list of string values")
    if op in ("Gt", "Lt") and (len(values) != 1 or not values[0].isdigit()):
        raise ProfileError(f"{where}: operator {op} needs exactly one integer value (as a string)")
    out["values"] = list(values)
    return out


def _term(where: str, term: Any) -> dict[str, Any]:
    if not isinstance(term, Mapping) or set(term) - {"matchExpressions"}:
        raise ProfileError(f"{where}: a term has matchExpressions (matchFields is not supported)")
    exprs = _list(f"{where}.matchExpressions", term.get("matchExpressions") or [])
    if not exprs:
        raise ProfileError(f"{where}: a term needs at least one match expression")
    return {
        "matchExpressions": [
            _expression(f"{where}.matchExpressions[{i}]", e) for i, e in enumerate(exprs)
        ]
    }


def _node_affinity(where: str, value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    required_key = "requiredDuringSchedulingIgnoredDuringExecution"
    preferred_key = "preferredDuringSchedulingIgnoredDuringExecution"
    if not isinstance(value, Mapping) or set(value) - {required_key, preferred_key}:
        raise ProfileError(f"{where}: expected {required_key} and/or {preferred_key}")
    out: dict[str, Any] = {}
    if value.get(required_key) is not None:
        required = value[required_key]
        if not isinstance(required, Mapping) or set(required) != {"nodeSelectorTerms"}:
            raise ProfileError(f"{where}.{required_key}: expected nodeSelectorTerms")
        terms = _list(f"{where}.{required_key}.nodeSelectorTerms", required["nodeSelectorTerms"])
        if not terms:
            raise ProfileError(f"{where}.{required_key}: nodeSelectorTerms is empty")
        out[required_key] = {
            "nodeSelectorTerms": [
                _term(f"{where}.{required_key}.nodeSelectorTerms[{i}]", t)
                for i, t in enumerate(terms)
            ]
        }
    if value.get(preferred_key) is not None:
        preferred = []
        for i, p in enumerate(_list(f"{where}.{preferred_key}", value[preferred_key])):
            w = f"{where}.{preferred_key}[{i}]"
            if not isinstance(p, Mapping) or set(p) != {"weight", "preference"}:
                raise ProfileError(f"{w}: expected weight and preference")
            weight = p["weight"]
            if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 100:
                raise ProfileError(f"{w}.weight: expected an integer from 1 to 100")
            preferred.append(
                {"weight": weight, "preference": _term(f"{w}.preference", p["preference"])}
            )
        out[preferred_key] = preferred
    return out or None


def _toleration(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ProfileError(f"{where}: expected a toleration (key, operator, value, effect)")
    unknown = sorted(set(value) - _TOLERATION_FIELDS)
    if unknown:
        raise ProfileError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}")
    op = value.get("operator", "Equal")
    if op not in ("Equal", "Exists"):
        raise ProfileError(f"{where}: operator {op!r} is not Equal or Exists")
    key = value.get("key")
    if key is not None and (not isinstance(key, str) or not re.search(LABEL_KEY, key)):
        raise ProfileError(f"{where}: {key!r} is not a taint key")
    if key is None and op != "Exists":
        raise ProfileError(f"{where}: a toleration without a key needs operator Exists")
    effect = value.get("effect")
    if effect is not None and effect not in TAINT_EFFECTS:
        raise ProfileError(f"{where}: effect {effect!r} is not one of {', '.join(TAINT_EFFECTS)}")
    taint_value = value.get("value")
    if op == "Exists" and taint_value:
        raise ProfileError(f"{where}: operator Exists takes no value")
    if taint_value is not None and not isinstance(taint_value, str):
        raise ProfileError(f"{where}: value must be a string")
    seconds = value.get("tolerationSeconds")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int)):
        raise ProfileError(f"{where}: tolerationSeconds must be an integer")
    if seconds is not None and effect != "NoExecute":
        raise ProfileError(f"{where}: tolerationSeconds applies only to effect NoExecute")
    return {
        k: value[k]
        for k in ("key", "operator", "value", "effect", "tolerationSeconds")
        if k in value and value[k] is not None
    }


def _env(where: str, value: Any) -> tuple[tuple[str, str], ...]:
    out = []
    for i, var in enumerate(_list(where, value)):
        if not isinstance(var, Mapping) or set(var) != {"name", "value"}:
            raise ProfileError(f"{where}[{i}]: expected name and value (a literal, never a secret)")
        name, text = var["name"], var["value"]
        if not isinstance(name, str) or not re.search(ENV_NAME, name):
            raise ProfileError(f"{where}[{i}]: {name!r} is not an environment variable name")
        if not isinstance(text, str):
            raise ProfileError(f"{where}[{i}]: {name}: the value must be a string (quote numbers)")
        out.append((name, text))
    return tuple(out)


def tolerates(tolerations: Sequence[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    """Whether the tolerations let a pod onto a node with `taint` (the scheduler's rule;
    PreferNoSchedule never keeps a pod off)."""
    if taint.get("effect") == "PreferNoSchedule":
        return True
    for t in tolerations:
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        if t.get("key") is None and t.get("operator") == "Exists":
            return True
        if t.get("key") != taint.get("key"):
            continue
        if t.get("operator") == "Exists" or (t.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def matches(profile: AcceleratorProfile, labels: Mapping[str, str]) -> bool:
    """Whether a node with `labels` satisfies the profile's selector and required affinity."""
    if any(labels.get(k) != v for k, v in profile.node_selector.items()):
        return False
    terms = profile.required_terms()
    return not terms or any(_term_matches(t, labels) for t in terms)


def _term_matches(term: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    for expr in term.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], list(expr.get("values") or [])
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
        if op in ("Gt", "Lt"):
            if not present or not labels[key].lstrip("-").isdigit():
                return False
            node, bound = int(labels[key]), int(values[0])
            if (op == "Gt" and not node > bound) or (op == "Lt" and not node < bound):
                return False
    return True
