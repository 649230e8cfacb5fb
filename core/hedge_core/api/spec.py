"""The ModelDeployment API (hedge.dev/v1alpha1): typed spec and status, parsing, and the CRD.

The dataclasses below are the one source of truth: the CRD's structural schema (descriptions,
defaults, bounds, CEL rules) is generated from them, and `parse_spec` validates a spec in
Python with the same rules, so objects that never met the API server (unit tests, clusters
without the CRD's CEL) are judged alike. `python -m hedge_core.api` prints the CRD.
"""

# The fields of the API's dataclasses are declared with `prop(...)`, a dataclasses.field()
# wrapper carrying the CRD description and schema keywords.
# ruff: noqa: RUF009

from __future__ import annotations

import dataclasses
import datetime
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any, ClassVar, Literal, NewType, TypeVar, get_args, get_origin

import yaml


def rfc3339(seconds: float) -> str:
    """Unix seconds as the API server writes times (`2026-11-30T04:28:00Z`)."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def unix_seconds(value: Any) -> float | None:
    """An API time (RFC 3339, `Z` or an offset) as unix seconds; None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


GROUP = "hedge.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ("md",)
CATEGORIES = ("hedge",)
CRD_NAME = f"{PLURAL}.{GROUP}"

# The names the operator, the gateway and the local cluster agree on (docs/contracts.md).
FIELD_MANAGER = "hedge-operator"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
PART_OF_LABEL = "app.kubernetes.io/part-of"
MD_LABEL = "hedge.dev/model-deployment"
COMPONENT_LABEL = "hedge.dev/component"
REVISION_LABEL = "hedge.dev/revision"
ENGINE_COMPONENT = "engine"
ENGINE_PORT = 8000
PORT_NAME = "http"

# Rollout commands, as annotations on the ModelDeployment whose value names the revision
# (`hedge.dev/promote: 5d41402abc`), so plain `kubectl annotate` and GitOps can give them and
# a stale one never touches another revision. promote/abort/retry act once per value (the
# handled values are kept in status.rollout.handledCommands); add anything after a slash to
# give the same command again (`5d41402abc/2`). pause holds while it names the revision
# being rolled out; removing it resumes.
PROMOTE_ANNOTATION = f"{GROUP}/promote"
ABORT_ANNOTATION = f"{GROUP}/abort"
RETRY_ANNOTATION = f"{GROUP}/retry"
PAUSE_ANNOTATION = f"{GROUP}/pause"

#: The upstream vLLM OpenAI-server image, pinned so a restart never changes the engine.
DEFAULT_ENGINE_IMAGE = "vllm/vllm-openai:v0.32.0"

#: How long a request waits for a pod when the model is cold and no fallback takes it.
DEFAULT_COLD_START_HOLD_SECONDS = 120

#: Longest ModelDeployment name: it names the Service (a DNS-1035 label, 63 characters) and
#: the per-revision Deployments `<name>-<10-character revision>`.
MAX_NAME_LENGTH = 52

Quantity = NewType("Quantity", str)
"""A Kubernetes resource quantity (`4`, `500m`, `32Gi`); YAML integers are accepted."""

IntOrPercent = NewType("IntOrPercent", str)
"""A count of pods or a percentage of the desired replicas (`1`, `25%`), as in a Deployment's
maxSurge; YAML integers are accepted."""
INT_OR_PERCENT_PATTERN = r"^[0-9]+%?$"

QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]"
    r"|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
SERVED_NAME = r"^[A-Za-z0-9][-A-Za-z0-9._:/]*$"

# Source URI shapes, shared by the CEL rules and the Python parser (RE2 and `re` agree on
# these). CEL's matches() searches, so every pattern is anchored.
HF_SOURCE = r"^hf://[A-Za-z0-9][-A-Za-z0-9._]*(/[A-Za-z0-9][-A-Za-z0-9._]*)?$"
BUCKET_SOURCE = r"^(s3|gs)://[a-z0-9][-a-z0-9._]*[a-z0-9](/[^\s]*)?$"
PVC_SOURCE = r"^pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/[^\s]*)?$"
SOURCE_SCHEMES = ("hf", "s3", "gs", "pvc")


# --------------------------------------------------------------------------- the machinery


@dataclass(frozen=True)
class Rule:
    """A validation rule: CEL for the API server, the same predicate in Python for the operator.

    `check` is None for transition rules (they compare with `oldSelf`, which only the API
    server sees).
    """

    rule: str
    message: str
    check: Callable[[Any], bool] | None


class SpecError(ValueError):
    """A spec that does not satisfy the API; `problems` lists `(path, message)` pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__(
            "; ".join(f"{path}: {message}" if path else message for path, message in problems)
        )


def prop(
    description: str,
    *,
    default: Any = MISSING,
    default_factory: Any = MISSING,
    json_name: str | None = None,
    rules: tuple[Rule, ...] = (),
    schema_default: Any = MISSING,
    list_map_keys: tuple[str, ...] = (),
    **schema: Any,
) -> Any:
    """A dataclass field with its CRD description and schema keywords (bounds, patterns…).

    `list_map_keys` makes a list of objects a map keyed by those fields (merged by key under
    server-side apply, duplicates refused).
    """
    if list_map_keys:
        schema["x-kubernetes-list-type"] = "map"
        schema["x-kubernetes-list-map-keys"] = list(list_map_keys)
    metadata = {
        "description": description,
        "json_name": json_name,
        "rules": rules,
        "schema": schema,
        "schema_default": schema_default,
    }
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def json_name(f: dataclasses.Field[Any]) -> str:
    explicit = f.metadata.get("json_name")
    if explicit:
        return str(explicit)
    head, *rest = f.name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, globalns=vars(sys.modules[__name__]))


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_schema(tp: Any) -> dict[str, Any]:
    tp, _ = _unwrap_optional(tp)
    if tp is Quantity:
        return {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "pattern": QUANTITY_PATTERN,
        }
    if tp is IntOrPercent:
        return {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "pattern": INT_OR_PERCENT_PATTERN,
        }
    if tp is str:
        return {"type": "string"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer", "format": "int32"}
    if tp is float:
        return {"type": "number"}
    origin = get_origin(tp)
    if origin is Literal:
        return {"type": "string", "enum": list(get_args(tp))}
    if origin is list:
        (item,) = get_args(tp)
        return {"type": "array", "items": _type_schema(item)}
    if origin is dict:
        return {"type": "object", "additionalProperties": {"type": "string"}}
    if _is_dataclass_type(tp):
        return object_schema(tp)
    raise TypeError(f"no schema for {tp!r}")


def _default_json(value: Any) -> Any:
    """A default as the CRD states it. Nested objects are spelled out in full: the API
    server checks a default against the CEL rules as written, without nested defaulting."""
    if _is_dataclass_type(type(value)):
        out = {}
        for f in dataclasses.fields(value):
            v = _default_json(getattr(value, f.name))
            if v is not None and v != [] and v != {}:
                out[json_name(f)] = v
        return out
    return value


def object_schema(cls: type) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a dataclass (descriptions from field metadata)."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        schema = _type_schema(hints[f.name])
        schema = {"description": f.metadata["description"], **schema}
        extra = dict(f.metadata["schema"])
        item_schema = extra.pop("items", None)
        if item_schema:
            schema["items"].update(item_schema)
        schema.update(extra)
        if f.metadata["schema_default"] is not MISSING:
            schema["default"] = f.metadata["schema_default"]
        elif f.default is not MISSING and f.default is not None:
            schema["default"] = _default_json(f.default)
        elif _is_dataclass_type(f.default_factory):
            factory = typing.cast(Callable[[], Any], f.default_factory)
            schema["default"] = _default_json(factory())
        if f.metadata["rules"]:
            schema["x-kubernetes-validations"] = [
                {"rule": r.rule, "message": r.message} for r in f.metadata["rules"]
            ]
        if f.default is MISSING and f.default_factory is MISSING:
            required.append(json_name(f))
        properties[json_name(f)] = schema
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    rules: tuple[Rule, ...] = getattr(cls, "__rules__", ())
    if rules:
        out["x-kubernetes-validations"] = [{"rule": r.rule, "message": r.message} for r in rules]
    return out


T = TypeVar("T")


class _Parser:
    """Turns JSON-ish data into the dataclasses, applying defaults and every rule."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    def parse(self, tp: Any, value: Any, path: str, schema: Mapping[str, Any]) -> Any:
        tp, _ = _unwrap_optional(tp)
        if tp is Quantity:
            if isinstance(value, bool) or not isinstance(value, int | str):
                self.fail(path, "must be a quantity such as 4, 500m or 32Gi")
                return None
            text = str(value)
            if not re.search(QUANTITY_PATTERN, text):
                self.fail(path, f"{text!r} is not a quantity such as 4, 500m or 32Gi")
            return Quantity(text)
        if tp is IntOrPercent:
            if isinstance(value, bool) or not isinstance(value, int | str):
                self.fail(path, "must be a number of pods or a percentage such as 1 or 25%")
                return None
            text = str(value)
            if not re.search(INT_OR_PERCENT_PATTERN, text):
                self.fail(path, f"{text!r} is not a number of pods or a percentage such as 25%")
            return IntOrPercent(text)
        if tp is str or get_origin(tp) is Literal:
            if not isinstance(value, str):
                self.fail(path, "must be a string")
                return None
            if get_origin(tp) is Literal and value not in get_args(tp):
                allowed = ", ".join(get_args(tp))
                self.fail(path, f"{value!r} is not one of {allowed}")
            self._check_string(value, path, schema)
            return value
        if tp is bool:
            if not isinstance(value, bool):
                self.fail(path, "must be true or false")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(path, "must be an integer")
                return None
            self._check_number(value, path, schema)
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.fail(path, "must be a number")
                return None
            self._check_number(value, path, schema)
            return float(value)
        origin = get_origin(tp)
        if origin is list:
            return self._parse_list(tp, value, path, schema)
        if origin is dict:
            if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                self.fail(path, "must be a map of strings")
                return {}
            if "maxProperties" in schema and len(value) > schema["maxProperties"]:
                self.fail(path, f"must have at most {schema['maxProperties']} entries")
            return dict(value)
        if _is_dataclass_type(tp):
            return self.parse_object(tp, value, path)
        raise TypeError(f"cannot parse {tp!r}")  # pragma: no cover - guarded by the schema

    def _parse_list(self, tp: Any, value: Any, path: str, schema: Mapping[str, Any]) -> Any:
        if not isinstance(value, list):
            self.fail(path, "must be a list")
            return []
        (item_tp,) = get_args(tp)
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            self.fail(path, f"must have at most {schema['maxItems']} items")
        if "minItems" in schema and len(value) < schema["minItems"]:
            self.fail(path, f"must have at least {schema['minItems']} item(s)")
        item_schema = schema.get("items", {})
        items = [self.parse(item_tp, v, f"{path}[{i}]", item_schema) for i, v in enumerate(value)]
        for key in schema.get("x-kubernetes-list-map-keys", ()):
            seen: set[Any] = set()
            for i, item in enumerate(value):
                k = item.get(key) if isinstance(item, Mapping) else None
                if k in seen:
                    self.fail(f"{path}[{i}].{key}", f"duplicate value {k!r}")
                seen.add(k)
        return items

    def _check_string(self, value: str, path: str, schema: Mapping[str, Any]) -> None:
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            self.fail(path, f"must be at most {schema['maxLength']} characters")
        if "minLength" in schema and len(value) < schema["minLength"]:
            self.fail(path, f"must be at least {schema['minLength']} character(s)")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            self.fail(path, f"{value!r} does not match {schema['pattern']}")

    def _check_number(self, value: float, path: str, schema: Mapping[str, Any]) -> None:
        if "minimum" in schema:
            low = schema["minimum"]
            if value < low or (schema.get("exclusiveMinimum") and value == low):
                op = "greater than" if schema.get("exclusiveMinimum") else "at least"
                self.fail(path, f"must be {op} {low}")
        if "maximum" in schema and value > schema["maximum"]:
            self.fail(path, f"must be at most {schema['maximum']}")

    def parse_object(self, cls: type[T], value: Any, path: str) -> T | None:
        if not isinstance(value, Mapping):
            self.fail(path, "must be an object")
            return None
        before = len(self.problems)
        hints = _hints(cls)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            key = json_name(f)
            sub = f"{path}.{key}" if path else key
            if key in value and value[key] is not None:
                schema = f.metadata["schema"]
                field_start = len(self.problems)
                kwargs[f.name] = self.parse(hints[f.name], value[key], sub, schema)
                if len(self.problems) == field_start:
                    for r in f.metadata["rules"]:
                        if r.check is not None and not r.check(kwargs[f.name]):
                            self.fail(sub, r.message)
            elif f.default is not MISSING:
                kwargs[f.name] = f.default
            elif f.default_factory is not MISSING:
                kwargs[f.name] = f.default_factory()
            else:
                self.fail(sub, "is required")
        if len(self.problems) != before:
            return None
        obj = cls(**kwargs)
        for r in getattr(cls, "__rules__", ()):
            if r.check is not None and not r.check(obj):
                self.fail(path, r.message)
        return obj


def parse(cls: type[T], data: Any, path: str = "") -> T:
    """Parses `data` into `cls`, applying the CRD's defaults; raises SpecError."""
    parser = _Parser()
    obj = parser.parse_object(cls, data, path)
    if parser.problems or obj is None:
        raise SpecError(parser.problems or [(path, "invalid")])
    return obj


def to_json(obj: Any) -> Any:
    """The JSON form of a parsed object (camelCase keys, unset optional fields left out)."""
    if _is_dataclass_type(type(obj)):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is None:
                continue
            out[json_name(f)] = to_json(value)
        return out
    if isinstance(obj, list):
        return [to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    return obj


# ------------------------------------------------------------------------------ the spec


def _matches(pattern: str) -> Callable[[Any], bool]:
    return lambda value: re.search(pattern, value) is not None


def _cel_string(text: str) -> str:
    """A CEL string literal (regex backslashes must be escaped in CEL source)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _source_rules() -> tuple[Rule, ...]:
    return (
        Rule(
            "self.startsWith('hf://') || self.startsWith('s3://') || self.startsWith('gs://')"
            " || self.startsWith('pvc://')",
            "source must start with hf://, s3://, gs:// or pvc://",
            lambda s: s.startswith(("hf://", "s3://", "gs://", "pvc://")),
        ),
        Rule(
            f"!self.startsWith('hf://') || self.matches({_cel_string(HF_SOURCE)})",
            "hf:// sources look like hf://org/name",
            lambda s: not s.startswith("hf://") or _matches(HF_SOURCE)(s),
        ),
        Rule(
            f"!(self.startsWith('s3://') || self.startsWith('gs://'))"
            f" || self.matches({_cel_string(BUCKET_SOURCE)})",
            "s3:// and gs:// sources look like s3://bucket/path",
            lambda s: not s.startswith(("s3://", "gs://")) or _matches(BUCKET_SOURCE)(s),
        ),
        Rule(
            f"!self.startsWith('pvc://') || self.matches({_cel_string(PVC_SOURCE)})",
            "pvc:// sources look like pvc://claim/path",
            lambda s: not s.startswith("pvc://") or _matches(PVC_SOURCE)(s),
        ),
        Rule(
            "!self.contains('..')",
            "source must not contain '..'",
            lambda s: ".." not in s,
        ),
    )


@dataclass(frozen=True, kw_only=True)
class SecretKeyRef:
    """A key of a Secret in the ModelDeployment's namespace."""

    name: str = prop(
        "Name of the Secret, in the ModelDeployment's namespace.",
        maxLength=253,
        pattern=DNS_SUBDOMAIN,
    )
    key: str = prop("Key within the Secret.", maxLength=253, pattern=SECRET_KEY)


@dataclass(frozen=True, kw_only=True)
class CredentialsRef:
    """A Secret holding the credentials for downloading the weights."""

    name: str = prop(
        "Name of the Secret, in the ModelDeployment's namespace. Only referenced: its values "
        "never appear in arguments, environment values, logs or status.",
        maxLength=253,
        pattern=DNS_SUBDOMAIN,
    )
    key: str | None = prop(
        "For hf:// sources, the key holding the Hugging Face token (default `token`), "
        "passed to the engine as HF_TOKEN. For gs:// sources, the key holding the "
        "service-account JSON (default `key.json`). For s3:// sources the key is unused: "
        "every key of the Secret (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, "
        "AWS_ENDPOINT_URL…) becomes an environment variable of the download step.",
        default=None,
        maxLength=253,
        pattern=SECRET_KEY,
    )


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Which weights to serve and under which name."""

    source: str = prop(
        "Where the weights come from: hf://org/name (Hugging Face Hub, downloaded by the "
        "engine), s3://bucket/path or gs://bucket/path (copied into the cache by an init "
        "step), or pvc://claim/path (a PersistentVolumeClaim in this namespace, mounted "
        "read-only).",
        maxLength=512,
        rules=_source_rules(),
    )
    revision: str | None = prop(
        "Hugging Face revision (branch, tag or commit) to pin; hf:// sources only.",
        default=None,
        maxLength=128,
        pattern=r"^[-A-Za-z0-9._/]+$",
    )
    name: str | None = prop(
        "Served model name: what clients send as `model`. Defaults to the ModelDeployment's name.",
        default=None,
        maxLength=128,
        pattern=SERVED_NAME,
    )
    credentials_secret_ref: CredentialsRef | None = prop(
        "Secret with the credentials for the source (a Hugging Face token, S3 keys or a "
        "GCS service account). Optional for public models.",
        default=None,
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!has(self.revision) || self.source.startsWith('hf://')",
            "model.revision is only supported for hf:// sources",
            lambda m: m.revision is None or m.source.startswith("hf://"),
        ),
        Rule(
            "!has(self.credentialsSecretRef) || !self.source.startsWith('pvc://')",
            "model.credentialsSecretRef does not apply to pvc:// sources",
            lambda m: m.credentials_secret_ref is None or not m.source.startswith("pvc://"),
        ),
    )


@dataclass(frozen=True, kw_only=True)
class EnvVar:
    """An environment variable of the engine container."""

    name: str = prop("Variable name.", maxLength=253, pattern=ENV_NAME)
    value: str | None = prop(
        "Literal value. Never put a secret here.", default=None, maxLength=4096
    )
    secret_key_ref: SecretKeyRef | None = prop(
        "Take the value from a Secret key (by reference; the value is never copied).",
        default=None,
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "has(self.value) != has(self.secretKeyRef)",
            "env: set exactly one of value and secretKeyRef",
            lambda e: (e.value is None) != (e.secret_key_ref is None),
        ),
    )


Dtype = Literal["auto", "half", "float16", "bfloat16", "float", "float32"]
# vLLM's own spellings, so values copy straight from vLLM's documentation.
QuantizationMethod = Literal[
    "awq",
    "awq_marlin",
    "gptq",
    "gptq_marlin",
    "fp8",
    "bitsandbytes",
    "compressed-tensors",
    "gguf",
    "marlin",
    "modelopt",
    "mxfp4",
    "experts_int8",
]


@dataclass(frozen=True, kw_only=True)
class EngineSpec:
    """The vLLM engine: image and the common `vllm serve` settings."""

    image: str = prop(
        "Engine image (vLLM's OpenAI-compatible server). Pinned by default.",
        default=DEFAULT_ENGINE_IMAGE,
        maxLength=512,
        minLength=1,
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = prop(
        "When the kubelet pulls the image.", default="IfNotPresent"
    )
    max_model_len: int | None = prop(
        "Context length (--max-model-len). Defaults to the model's own.",
        default=None,
        minimum=1,
        maximum=10_000_000,
    )
    dtype: Dtype = prop("Weights and activations dtype (--dtype).", default="auto")
    quantization: QuantizationMethod | None = prop(
        "Quantization method (--quantization), in vLLM's spelling. Unset: as the checkpoint says.",
        default=None,
    )
    gpu_memory_utilization: float = prop(
        "Fraction of each GPU's memory vLLM may use (--gpu-memory-utilization).",
        default=0.9,
        minimum=0,
        exclusiveMinimum=True,
        maximum=1,
    )
    enable_prefix_caching: bool = prop(
        "Automatic prefix caching (--enable-prefix-caching / --no-enable-prefix-caching).",
        default=True,
    )
    enable_chunked_prefill: bool = prop(
        "Chunked prefill (--enable-chunked-prefill / --no-enable-chunked-prefill).",
        default=True,
    )
    tensor_parallel_size: int | None = prop(
        "Tensor parallel size (--tensor-parallel-size). Default: resources.gpus / "
        "pipelineParallelSize.",
        default=None,
        minimum=1,
        maximum=64,
    )
    pipeline_parallel_size: int = prop(
        "Pipeline parallel size (--pipeline-parallel-size).",
        default=1,
        minimum=1,
        maximum=64,
    )
    startup_timeout_seconds: int = prop(
        "How long the engine may take to download and load the weights before the "
        "startup probe gives up and the container restarts.",
        default=1800,
        minimum=60,
        maximum=86400,
    )
    extra_args: list[str] = prop(
        "More `vllm serve` arguments, appended as given. Flags the operator sets from "
        "typed fields (--served-model-name, --max-model-len, --tensor-parallel-size…) "
        "are refused with reason ConflictingArgs.",
        default_factory=list,
        maxItems=64,
        items={"maxLength": 1024},
    )
    env: list[EnvVar] = prop(
        "Extra environment variables of the engine container.",
        default_factory=list,
        maxItems=64,
        list_map_keys=("name",),
    )
    pod_annotations: dict[str, str] = prop(
        "Annotations added to the engine pods (e.g. for log shippers, or the local "
        "cluster's sim.hedge.dev/* simulator knobs).",
        default_factory=dict,
        maxProperties=64,
    )


@dataclass(frozen=True, kw_only=True)
class ResourcesSpec:
    """GPUs and the other resources of each engine pod."""

    gpus: int = prop(
        "GPUs per engine pod (nvidia.com/gpu). 0 runs the engine without GPUs.",
        default=1,
        minimum=0,
        maximum=16,
    )
    gpu_type: str | None = prop(
        "GPU type from the operator's GPU table (e.g. nvidia-a100-80gb, nvidia-h100-80gb, "
        "nvidia-l4); pods are scheduled on nodes whose nvidia.com/gpu.product label "
        "matches. Unset: any GPU.",
        default=None,
        maxLength=63,
        pattern=DNS_LABEL,
    )
    cpu: Quantity = prop("CPU request of each engine pod.", default=Quantity("4"))
    memory: Quantity = prop(
        "Memory request and limit of each engine pod (the shared memory counts against it).",
        default=Quantity("32Gi"),
    )
    shm_size: Quantity = prop(
        "Size of /dev/shm (memory-backed), used by vLLM's workers for tensor parallelism.",
        default=Quantity("8Gi"),
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.gpus > 0 || !has(self.gpuType)",
            "resources.gpuType needs resources.gpus > 0",
            lambda r: r.gpus > 0 or r.gpu_type is None,
        ),
    )


@dataclass(frozen=True, kw_only=True)
class AdapterSpec:
    """A LoRA adapter served by the same engine pods under its own model name."""

    name: str = prop(
        "Model name clients send to use this adapter.", maxLength=128, pattern=SERVED_NAME
    )
    source: str = prop(
        "Where the adapter comes from (hf://, s3://, gs:// or pvc://, as model.source).",
        maxLength=512,
        rules=_source_rules(),
    )


@dataclass(frozen=True, kw_only=True)
class CacheSpec:
    """A persistent volume for downloaded weights, so restarts do not download again."""

    size: Quantity = prop(
        "Size of the cache volume (ignored with existingClaim).", default=Quantity("100Gi")
    )
    storage_class_name: str | None = prop(
        "StorageClass of the cache volume. Unset: the cluster's default.",
        default=None,
        maxLength=253,
        pattern=DNS_SUBDOMAIN,
        rules=(Rule("self == oldSelf", "cache.storageClassName is immutable", None),),
    )
    existing_claim: str | None = prop(
        "Use this existing PersistentVolumeClaim instead of creating one.",
        default=None,
        maxLength=253,
        pattern=DNS_SUBDOMAIN,
    )
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"] = prop(
        "Access mode of the created volume. Use ReadWriteMany when replicas may land on "
        "different nodes and the storage class supports it.",
        default="ReadWriteOnce",
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!(has(self.existingClaim) && has(self.storageClassName))",
            "cache.existingClaim and cache.storageClassName are mutually exclusive",
            lambda c: not (c.existing_claim and c.storage_class_name),
        ),
    )


@dataclass(frozen=True, kw_only=True)
class AutoscalingSpec:
    """How the operator sizes the model to its demand: requests in flight, measured at the
    gateways (served, held while scaling from zero, or spilled to a fallback) and at the
    engines. With autoscaling, the operator owns the replica count (status.autoscaling);
    spec.replicas is then ignored, so a GitOps tool sees no drift."""

    min_replicas: int = prop(
        "Fewest replicas; 0 allows scaling to zero (requests are then answered by the fallback "
        "providers, or held, until a pod is ready).",
        default=1,
        minimum=0,
        maximum=512,
    )
    max_replicas: int = prop("Most replicas.", minimum=1, maximum=512)
    target_requests: int = prop(
        "Requests in flight per replica the autoscaler aims for (desired replicas = "
        "ceil(demand / targetRequests)).",
        default=16,
        minimum=1,
        maximum=100000,
    )
    stable_window_seconds: int = prop(
        "Demand is averaged over this window for ordinary decisions.",
        default=60,
        minimum=2,
        maximum=3600,
    )
    panic_window_seconds: int | None = prop(
        "A short window: when its average asks for panicThresholdPercent of the ready "
        "capacity or more, the model scales up at once and does not scale down until the "
        "stable window has passed calmly. Unset: a tenth of the stable window (at least 1).",
        default=None,
        minimum=1,
        maximum=600,
    )
    panic_threshold_percent: int = prop(
        "How far above the ready capacity the panic window's demand must be to panic.",
        default=200,
        minimum=110,
        maximum=1000,
    )
    scale_down_delay_seconds: int = prop(
        "How long load must stay low before scaling down: the highest replica count asked "
        "for in this window is kept.",
        default=300,
        minimum=0,
        maximum=86400,
    )
    scale_to_zero_after_seconds: int = prop(
        "With minReplicas 0: scale to zero after no request arrived for this long.",
        default=600,
        minimum=1,
        maximum=604800,
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.minReplicas <= self.maxReplicas",
            "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
            lambda a: a.min_replicas <= a.max_replicas,
        ),
        Rule(
            "!has(self.panicWindowSeconds) || self.panicWindowSeconds <= self.stableWindowSeconds",
            "autoscaling.panicWindowSeconds must not exceed autoscaling.stableWindowSeconds",
            lambda a: (
                a.panic_window_seconds is None or a.panic_window_seconds <= a.stable_window_seconds
            ),
        ),
    )

    @property
    def panic_window(self) -> int:
        """The panic window in effect (Knative's: a tenth of the stable window)."""
        if self.panic_window_seconds is not None:
            return self.panic_window_seconds
        return max(1, round(self.stable_window_seconds / 10))


@dataclass(frozen=True, kw_only=True)
class ServingSpec:
    """How the gateway treats requests for this model."""

    request_timeout_seconds: int = prop(
        "Whole-request timeout, self-hosted or fallback.",
        default=300,
        minimum=1,
        maximum=3600,
    )
    max_queue_depth: int = prop(
        "A backend with more waiting requests than this counts as full.",
        default=16,
        minimum=0,
        maximum=100000,
    )
    cold_start_hold_seconds: int | None = prop(
        "When no engine pod is ready (scaling from zero, restarting) and no fallback takes "
        "the request, the gateway holds it this long for a pod to become ready, then "
        "answers 503 with Retry-After. 0 answers at once. Unset: 120, or "
        "requestTimeoutSeconds when that is shorter.",
        default=None,
        minimum=0,
        maximum=3600,
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!has(self.coldStartHoldSeconds) || "
            "self.coldStartHoldSeconds <= self.requestTimeoutSeconds",
            "serving.coldStartHoldSeconds must not exceed serving.requestTimeoutSeconds",
            lambda v: (
                v.cold_start_hold_seconds is None
                or v.cold_start_hold_seconds <= v.request_timeout_seconds
            ),
        ),
    )

    @property
    def hold_seconds(self) -> int:
        """How long a request waits for a ready pod when nothing else can serve it."""
        if self.cold_start_hold_seconds is not None:
            return self.cold_start_hold_seconds
        return min(DEFAULT_COLD_START_HOLD_SECONDS, self.request_timeout_seconds)


ProviderType = Literal["OpenAI", "AzureOpenAI", "Anthropic", "OpenAICompatible"]


@dataclass(frozen=True, kw_only=True)
class FallbackProvider:
    """An external API that serves the model's traffic when self-hosting cannot."""

    type: ProviderType = prop("Provider wire format.")
    model: str = prop("Model name at the provider.", maxLength=256, minLength=1)
    base_url: str | None = prop(
        "API base URL. Required for AzureOpenAI (the resource endpoint) and OpenAICompatible.",
        default=None,
        json_name="baseURL",
        maxLength=2048,
        pattern=r"^https?://[^\s]+$",
    )
    api_key_secret_ref: SecretKeyRef | None = prop(
        "Secret key holding the API key (required except for OpenAICompatible).",
        default=None,
    )
    api_version: str | None = prop(
        "Azure OpenAI API version (AzureOpenAI only).", default=None, maxLength=64
    )
    deployment: str | None = prop(
        "Azure OpenAI deployment name (AzureOpenAI only; default: model).",
        default=None,
        maxLength=256,
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.type != 'AzureOpenAI' || (has(self.baseURL) && has(self.apiVersion))",
            "AzureOpenAI providers need baseURL and apiVersion",
            lambda p: p.type != "AzureOpenAI" or bool(p.base_url and p.api_version),
        ),
        Rule(
            "self.type != 'OpenAICompatible' || has(self.baseURL)",
            "OpenAICompatible providers need baseURL",
            lambda p: p.type != "OpenAICompatible" or bool(p.base_url),
        ),
        Rule(
            "self.type == 'OpenAICompatible' || has(self.apiKeySecretRef)",
            "OpenAI, AzureOpenAI and Anthropic providers need apiKeySecretRef",
            lambda p: p.type == "OpenAICompatible" or p.api_key_secret_ref is not None,
        ),
        Rule(
            "self.type == 'AzureOpenAI' || (!has(self.apiVersion) && !has(self.deployment))",
            "apiVersion and deployment apply to AzureOpenAI providers only",
            lambda p: p.type == "AzureOpenAI" or (p.api_version is None and p.deployment is None),
        ),
    )


@dataclass(frozen=True, kw_only=True)
class FallbackBudget:
    """A ceiling on what the fallback may spend, in tokens (prompt + completion, as the
    providers report them), summed over every gateway replica."""

    tokens_per_minute: int | None = prop(
        "Most fallback tokens in one minute.", default=None, minimum=1, format="int64"
    )
    tokens_per_day: int | None = prop(
        "Most fallback tokens in one UTC day.", default=None, minimum=1, format="int64"
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "has(self.tokensPerMinute) || has(self.tokensPerDay)",
            "fallback.budget needs tokensPerMinute or tokensPerDay",
            lambda b: b.tokens_per_minute is not None or b.tokens_per_day is not None,
        ),
    )


@dataclass(frozen=True, kw_only=True)
class FallbackSpec:
    """External providers tried in order when self-hosted serving cannot answer."""

    on_unavailable: bool = prop("Use the providers when no engine pod is ready.", default=True)
    on_overload: bool = prop("Use the providers when every engine pod is full.", default=True)
    on_error: bool = prop("Use the providers when the engine failed after retries.", default=True)
    providers: list[FallbackProvider] = prop("Providers, tried in order.", minItems=1, maxItems=8)
    budget: FallbackBudget | None = prop(
        "Spending ceiling. Once spent, requests that only the fallback could serve get 429 "
        "with Retry-After until the window turns. Unset: no ceiling.",
        default=None,
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.onUnavailable || self.onOverload || self.onError",
            "fallback needs at least one of onUnavailable, onOverload and onError",
            lambda f: f.on_unavailable or f.on_overload or f.on_error,
        ),
    )


@dataclass(frozen=True, kw_only=True)
class RolloutStep:
    """One canary step."""

    weight: int = prop("Percent of traffic on the new revision.", minimum=1, maximum=100)
    pause_seconds: int = prop(
        "How long to hold this step before judging it.", default=60, minimum=0, maximum=86400
    )


@dataclass(frozen=True, kw_only=True)
class AnalysisSpec:
    """How a canary is judged against the stable revision, from what the gateways measured
    for each revision during the step."""

    max_error_rate_percent: float = prop(
        "Most engine errors (5xx, connection failures, stalls, broken streams) per 100 "
        "requests the canary may have; client errors (4xx) do not count.",
        default=5.0,
        minimum=0,
        maximum=100,
    )
    max_ttft_ratio: float = prop(
        "Most the canary's mean time to first token may be, as a multiple of the stable "
        "revision's.",
        default=1.5,
        minimum=1,
        maximum=100,
    )
    max_itl_ratio: float = prop(
        "Most the canary's mean inter-token latency may be, as a multiple of the stable "
        "revision's.",
        default=1.5,
        minimum=1,
        maximum=100,
    )
    min_ttft_increase_milliseconds: int = prop(
        "How much the canary's mean time to first token must also exceed the stable "
        "revision's, in milliseconds, before the ratio counts: differences at the scale of "
        "scheduling noise are not judged.",
        default=10,
        minimum=0,
        maximum=600000,
    )
    min_itl_increase_milliseconds: int = prop(
        "How much the canary's mean inter-token latency must also exceed the stable "
        "revision's, in milliseconds, before the ratio counts.",
        default=2,
        minimum=0,
        maximum=60000,
    )
    min_requests: int = prop(
        "Requests the canary must have served in a step before it is judged; with fewer, "
        "the step waits.",
        default=20,
        minimum=1,
        maximum=1000000,
    )
    tripwire_error_rate_percent: float = prop(
        "An error rate at which the canary is aborted at once, not at the end of its step.",
        default=20.0,
        minimum=0,
        maximum=100,
    )
    tripwire_min_requests: int = prop(
        "Requests the canary must have served before the tripwire can fire.",
        default=10,
        minimum=1,
        maximum=1000000,
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.tripwireErrorRatePercent >= self.maxErrorRatePercent",
            "rollout.analysis.tripwireErrorRatePercent must be at least maxErrorRatePercent",
            lambda a: a.tripwire_error_rate_percent >= a.max_error_rate_percent,
        ),
    )


@dataclass(frozen=True, kw_only=True)
class RolloutSpec:
    """How a new revision (a changed pod template) replaces the running one."""

    strategy: Literal["RollingUpdate", "Canary"] = prop(
        "RollingUpdate replaces pods as new ones become ready; Canary sends each step's "
        "share of the traffic to the new revision, judges it against the stable one, and "
        "promotes or rolls back.",
        default="RollingUpdate",
    )
    steps: list[RolloutStep] = prop(
        "Canary steps, by increasing weight.", default_factory=list, maxItems=20
    )
    max_surge: IntOrPercent = prop(
        "Pods (or a percentage of the replicas, rounded up) above the desired count during a "
        "rollout: the free GPUs a rollout may use. 0 needs no free GPU: a stable pod is "
        "removed before a new one is created, and the fallback absorbs the gap.",
        default=IntOrPercent("0"),
    )
    max_unavailable: IntOrPercent = prop(
        "Pods (or a percentage of the replicas, rounded down) below the desired count during "
        "a rollout.",
        default=IntOrPercent("1"),
    )
    analysis: AnalysisSpec = prop("Canary analysis thresholds.", default_factory=AnalysisSpec)
    progress_deadline_seconds: int = prop(
        "How long a new revision's pods may take to become ready (model download and load "
        "included) before the rollout is aborted.",
        default=1800,
        minimum=60,
        maximum=86400,
    )
    gpu_wait_seconds: int = prop(
        "How long a new revision's pod may wait for a node (e.g. a free GPU) before the "
        "rollout is aborted.",
        default=300,
        minimum=0,
        maximum=86400,
    )
    paused: bool = prop(
        "Hold the rollout at its current step (GitOps-friendly; `hedge rollout pause` sets "
        "an annotation with the same effect).",
        default=False,
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.strategy == 'Canary' || !has(self.steps) || size(self.steps) == 0",
            "rollout.steps apply to the Canary strategy only",
            lambda r: r.strategy == "Canary" or not r.steps,
        ),
        Rule(
            "self.strategy != 'Canary' || (has(self.steps) && size(self.steps) > 0)",
            "the Canary strategy needs at least one step",
            lambda r: r.strategy != "Canary" or bool(r.steps),
        ),
        Rule(
            "!has(self.steps) || self.steps.map(s, s.weight).isSorted()",
            "rollout.steps must not decrease in weight",
            lambda r: [s.weight for s in r.steps] == sorted(s.weight for s in r.steps),
        ),
        Rule(
            "!(string(self.maxSurge) in ['0', '0%'] && string(self.maxUnavailable) in ['0', '0%'])",
            "rollout.maxSurge and rollout.maxUnavailable must not both be 0",
            lambda r: not (r.max_surge in ("0", "0%") and r.max_unavailable in ("0", "0%")),
        ),
    )


def _gpus_or_one(spec: ModelDeploymentSpec) -> int:
    return spec.resources.gpus or 1


@dataclass(frozen=True, kw_only=True)
class ModelDeploymentSpec:
    """A model served by vLLM on this cluster's GPUs, with gateway behaviour and fallback."""

    model: ModelSpec = prop("The model: weights, revision, served name, credentials.")
    engine: EngineSpec = prop("The vLLM engine and its settings.", default_factory=EngineSpec)
    resources: ResourcesSpec = prop(
        "GPUs, CPU and memory of each engine pod.", default_factory=ResourcesSpec
    )
    replicas: int = prop(
        "Engine pods (the scale subresource sets this; `kubectl scale md/x --replicas=3`).",
        default=1,
        minimum=0,
        maximum=512,
    )
    adapters: list[AdapterSpec] = prop(
        "LoRA adapters served by the same pods, each under its own model name.",
        default_factory=list,
        maxItems=32,
        list_map_keys=("name",),
    )
    cache: CacheSpec | None = prop(
        "Persistent cache for the weights. Unset: an emptyDir (downloaded on every start).",
        default=None,
    )
    autoscaling: AutoscalingSpec | None = prop(
        "Autoscaling bounds. Unset: replicas is fixed.", default=None
    )
    serving: ServingSpec = prop("Gateway behaviour for this model.", default_factory=ServingSpec)
    fallback: FallbackSpec | None = prop(
        "External providers used when self-hosted serving cannot answer.", default=None
    )
    rollout: RolloutSpec = prop("How spec changes roll out.", default_factory=RolloutSpec)

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!has(self.engine.tensorParallelSize) || self.engine.tensorParallelSize"
            " * self.engine.pipelineParallelSize"
            " == (self.resources.gpus == 0 ? 1 : self.resources.gpus)",
            "engine.tensorParallelSize * engine.pipelineParallelSize must equal resources.gpus",
            lambda s: (
                s.engine.tensor_parallel_size is None
                or s.engine.tensor_parallel_size * s.engine.pipeline_parallel_size
                == _gpus_or_one(s)
            ),
        ),
        Rule(
            "(self.resources.gpus == 0 ? 1 : self.resources.gpus)"
            " % self.engine.pipelineParallelSize == 0",
            "resources.gpus must be a multiple of engine.pipelineParallelSize",
            lambda s: _gpus_or_one(s) % s.engine.pipeline_parallel_size == 0,
        ),
    )


# Rules on the whole object: only these may read metadata.name.
ROOT_RULES: tuple[Rule, ...] = (
    Rule(
        f"size(self.metadata.name) <= {MAX_NAME_LENGTH}"
        " && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
        f"metadata.name must be a DNS-1035 label of at most {MAX_NAME_LENGTH} characters "
        "(it names the Service and the per-revision Deployments)",
        None,  # checked by `check_name`
    ),
    Rule(
        "!has(self.spec.adapters) || self.spec.adapters.all(a, a.name !="
        " (has(self.spec.model.name) ? self.spec.model.name : self.metadata.name))",
        "adapter names must differ from the served model name",
        None,  # checked by ModelDeployment.from_body
    ),
)


def check_name(name: str) -> str | None:
    """The root rule on metadata.name, in Python; returns the message when it fails."""
    if len(name) > MAX_NAME_LENGTH or not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name):
        return ROOT_RULES[0].message
    return None


# ----------------------------------------------------------------------------- the status


@dataclass(frozen=True, kw_only=True)
class Condition:
    """One aspect of the ModelDeployment's state."""

    type: str = prop(
        "Condition type: Ready, Progressing, Degraded, and kstatus' Reconciling and Stalled "
        "(what Flux and Helm read).",
        maxLength=64,
    )
    status: Literal["True", "False", "Unknown"] = prop("True, False or Unknown.")
    reason: str = prop("One CamelCase word saying why.", maxLength=128)
    message: str = prop("Details for humans.", maxLength=4096)
    last_transition_time: str = prop("When status last changed.", format="date-time", maxLength=64)
    observed_generation: int = prop(
        "metadata.generation this condition was computed from.",
        minimum=0,
        format="int64",
    )


@dataclass(frozen=True, kw_only=True)
class AutoscalingStatus:
    """The autoscaler's last decision."""

    desired_replicas: int | None = prop(
        "Replicas the autoscaler asks for (the engine Deployments follow it).", default=None
    )
    demand: float | None = prop(
        "Requests in flight, averaged over the stable window, summed over the gateways.",
        default=None,
    )
    reason: str | None = prop(
        "Why, in one word (ScaleUp, PanicScaleUp, ScaleDown, ScaleToZero, WakeFromZero, "
        "Steady, ScaleDownDelayed, PodsStarting, NoMetrics).",
        default=None,
        maxLength=64,
    )
    message: str | None = prop("The decision with its numbers.", default=None, maxLength=1024)
    last_scale_time: str | None = prop(
        "When the replica count last changed.", default=None, format="date-time", maxLength=64
    )
    last_request_time: str | None = prop(
        "When a request for the model last arrived (scale to zero counts from here).",
        default=None,
        format="date-time",
        maxLength=64,
    )


@dataclass(frozen=True, kw_only=True)
class FallbackBudgetStatus:
    """What the fallback spent in the current windows, summed over the gateways."""

    minute_start: str | None = prop(
        "Start of the current minute window.", default=None, format="date-time", maxLength=64
    )
    minute_tokens: int | None = prop("Tokens spent in it.", default=None, minimum=0, format="int64")
    day_start: str | None = prop(
        "Start of the current UTC day.", default=None, format="date-time", maxLength=64
    )
    day_tokens: int | None = prop("Tokens spent in it.", default=None, minimum=0, format="int64")
    exhausted_until: str | None = prop(
        "Set while a budget is spent: when the window turns and spilling resumes.",
        default=None,
        format="date-time",
        maxLength=64,
    )


@dataclass(frozen=True, kw_only=True)
class RevisionMetrics:
    """What the gateways measured for one revision during a canary step."""

    requests: int = prop("Requests served.", minimum=0, format="int64")
    error_rate_percent: float | None = prop(
        "Engine errors per 100 requests (client errors excluded).", default=None
    )
    ttft_mean_seconds: float | None = prop("Mean time to first token.", default=None)
    itl_mean_seconds: float | None = prop("Mean inter-token latency.", default=None)


@dataclass(frozen=True, kw_only=True)
class AnalysisStatus:
    """The last judgement of the canary."""

    time: str = prop("When it was made.", format="date-time", maxLength=64)
    verdict: Literal["Pass", "Fail", "Inconclusive"] = prop(
        "Pass promotes to the next step, Fail aborts, Inconclusive waits for more requests."
    )
    message: str = prop("The comparison with its numbers.", maxLength=1024)
    canary: RevisionMetrics | None = prop("The canary revision.", default=None)
    stable: RevisionMetrics | None = prop("The stable revision.", default=None)


@dataclass(frozen=True, kw_only=True)
class RolloutStatus:
    """Where the rollout of a new revision stands. The state lives here (not in the
    operator's memory), so a restarted operator carries on from it."""

    strategy: str | None = prop("RollingUpdate or Canary.", default=None, maxLength=32)
    stable_revision: str | None = prop(
        "The revision serving most of the traffic.", default=None, maxLength=64
    )
    canary_revision: str | None = prop(
        "The revision being rolled out, while a canary runs.", default=None, maxLength=64
    )
    step: int | None = prop("Canary step (1-based; 0 before the first).", default=None, minimum=0)
    canary_weight: int | None = prop(
        "Percent of the traffic the gateways send to the canary revision.",
        default=None,
        minimum=0,
        maximum=100,
    )
    step_start_time: str | None = prop(
        "When the current step began sending traffic.",
        default=None,
        format="date-time",
        maxLength=64,
    )
    paused: bool | None = prop("Held at the current step by a person.", default=None)
    aborted_revision: str | None = prop(
        "A revision whose rollout was aborted: it stays aborted until the spec changes again "
        "or a retry is asked for.",
        default=None,
        maxLength=64,
    )
    abort_reason: str | None = prop("Why it was aborted.", default=None, maxLength=1024)
    last_analysis: AnalysisStatus | None = prop("The last judgement.", default=None)
    handled_commands: dict[str, str] = prop(
        "The command annotations already acted on (promote, abort, retry -> the value seen), "
        "so each value acts once.",
        default_factory=dict,
        maxProperties=8,
    )


@dataclass(frozen=True, kw_only=True)
class ModelDeploymentStatus:
    """Observed state, for kubectl, Argo CD and Flux."""

    observed_generation: int | None = prop(
        "metadata.generation the status describes.", default=None, format="int64"
    )
    replicas: int | None = prop("Engine pods, all revisions.", default=None)
    ready_replicas: int | None = prop("Ready engine pods, all revisions.", default=None)
    updated_replicas: int | None = prop("Engine pods at the current revision.", default=None)
    available_replicas: int | None = prop(
        "Ready engine pods at the current revision.", default=None
    )
    selector: str | None = prop(
        "Label selector of the engine pods (for the scale subresource).",
        default=None,
        maxLength=1024,
    )
    revision: str | None = prop(
        "Current revision: hash of the engine pod template.", default=None, maxLength=64
    )
    served_model: str | None = prop("Model name clients send.", default=None, maxLength=128)
    url: str | None = prop(
        "In-cluster OpenAI-compatible base URL of the engine Service.",
        default=None,
        maxLength=512,
    )
    fallback: str | None = prop("Fallback provider types, in order.", default=None, maxLength=256)
    autoscaling: AutoscalingStatus | None = prop(
        "The autoscaler's last decision (with spec.autoscaling).", default=None
    )
    fallback_budget: FallbackBudgetStatus | None = prop(
        "Fallback spending (with spec.fallback.budget).", default=None
    )
    rollout: RolloutStatus | None = prop("Where the rollout stands.", default=None)
    conditions: list[Condition] = prop(
        "Ready, Progressing, Degraded, Reconciling and Stalled.",
        default_factory=list,
        maxItems=16,
        list_map_keys=("type",),
    )


# ---------------------------------------------------------------------- the typed resource


@dataclass(frozen=True)
class ModelDeployment:
    """A ModelDeployment object: identity plus parsed spec."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: ModelDeploymentSpec

    @property
    def served_model(self) -> str:
        return self.spec.model.name or self.name

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ModelDeployment:
        """Parses an object as the API server returns it; raises SpecError."""
        meta = body.get("metadata") or {}
        name = str(meta.get("name", ""))
        problems: list[tuple[str, str]] = []
        message = check_name(name)
        if message:
            problems.append(("metadata.name", message))
        try:
            spec = parse(ModelDeploymentSpec, body.get("spec") or {}, "spec")
        except SpecError as e:
            problems.extend(e.problems)
            raise SpecError(problems) from None
        served = spec.model.name or name
        for i, adapter in enumerate(spec.adapters):
            if adapter.name == served:
                problems.append((f"spec.adapters[{i}].name", ROOT_RULES[1].message))
        if problems:
            raise SpecError(problems)
        return cls(
            name=name,
            namespace=str(meta.get("namespace", "")),
            uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation") or 0),
            spec=spec,
        )


# ----------------------------------------------------------------------------------- CRD


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


if __name__ == "__main__":
    sys.stdout.write(crd_yaml())
