"""The machinery that turns the API's dataclasses into a structural schema and parses JSON
into them: `prop` (a field with its CRD description and keywords), `Rule` (CEL for the API
server beside the same predicate in Python), `object_schema`, `parse` and `to_json`."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any, Literal, NewType, TypeVar, get_args, get_origin

from hedge_core.api.constants import DNS_LABEL, INT_OR_PERCENT_PATTERN, QUANTITY_PATTERN

Quantity = NewType("Quantity", str)
"""A Kubernetes resource quantity (`4`, `500m`, `32Gi`); YAML integers are accepted."""

KubeObject = NewType("KubeObject", dict)  # type: ignore[type-arg]
"""A Kubernetes-shaped object passed through as given (an affinity, a volume, a
securityContext): the API server keeps its unknown fields; the operator checks the parts
Hedge owns and the API server checks the rest when the Deployment is applied."""

NamedKubeObject = NewType("NamedKubeObject", dict)  # type: ignore[type-arg]
"""A KubeObject with a required `name` (a volume), so CEL rules can read the name."""

IntOrPercent = NewType("IntOrPercent", str)
"""A count of pods or a percentage of the desired replicas (`1`, `25%`), as in a Deployment's
maxSurge; YAML integers are accepted."""


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


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The resolved field types of a dataclass (its annotations are strings: each resolves
    in the module that defines the class). Cached per class: resolving them cost more than
    the rest of a parse. Callers only read the dict."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


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
    if tp is KubeObject:
        return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    if tp is NamedKubeObject:
        return {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {
                    "description": "Name (a DNS label).",
                    "type": "string",
                    "maxLength": 63,
                    "pattern": DNS_LABEL,
                }
            },
            "x-kubernetes-preserve-unknown-fields": True,
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
        _, value = get_args(tp)
        return {"type": "object", "additionalProperties": _type_schema(value)}
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


def _is_json(value: Any, depth: int = 0) -> bool:
    """Plain JSON (string keys, no cycles, at most 32 levels)."""
    if depth > 32:
        return False
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_json(v, depth + 1) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_is_json(v, depth + 1) for v in value)
    return value is None or isinstance(value, str | int | float | bool)


def _plain_json(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_json(v) for v in value]
    return value


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
        if tp is KubeObject or tp is NamedKubeObject:
            return self._parse_kube_object(tp, value, path)
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
            _, value_tp = get_args(tp)
            if value_tp is not str:
                return self._parse_map(value_tp, value, path, schema)
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

    def _parse_map(self, tp: Any, value: Any, path: str, schema: Mapping[str, Any]) -> Any:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            self.fail(path, "must be a map")
            return {}
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            self.fail(path, f"must have at most {schema['maxProperties']} entries")
        return {k: self.parse(tp, v, f"{path}.{k}", {}) for k, v in value.items()}

    def _parse_kube_object(self, tp: Any, value: Any, path: str) -> Any:
        if not isinstance(value, Mapping) or not _is_json(value):
            self.fail(path, "must be an object (Kubernetes' own shape for this field)")
            return None
        if tp is NamedKubeObject:
            name = value.get("name")
            if not isinstance(name, str) or not re.search(DNS_LABEL, name) or len(name) > 63:
                self.fail(f"{path}.name", "is required: a DNS label (a-z, 0-9, '-')")
        return _plain_json(value)

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
