"""Pure: status blocks through the API's typed status classes.

Every capability builds its part of status as a `hedge_core.api` status object and writes
it with `write` (camelCase JSON, unset fields left out), and reads what status holds with
`read`, so a renamed field fails mypy rather than a cluster. A block that does not parse
(written by hand, or by a newer operator) reads as empty: status is observed state, and
the next reconcile rewrites it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from hedge_core.api import ModelDeploymentStatus, SpecError, json_name, parse, to_json

T = TypeVar("T")


def read(cls: type[T], data: Any) -> T:
    """`data` (a status block as the API server returns it) as a `cls`."""
    if isinstance(data, Mapping):
        try:
            return parse(cls, data)
        except SpecError:
            pass
    return parse(cls, {})


def write(obj: object) -> dict[str, Any]:
    """The JSON form of a status object, as status holds it: unset fields and empty maps
    (e.g. no handled commands yet) left out."""
    out = _without_empty_maps(to_json(obj))
    assert isinstance(out, dict)
    return out


def _without_empty_maps(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_empty_maps(v) for k, v in value.items() if v != {}}
    if isinstance(value, list):
        return [_without_empty_maps(v) for v in value]
    return value


def key_of(cls: type, field: str) -> str:
    """The JSON key of `cls`'s field `field` (raises at import if the field is renamed)."""
    for f in dataclasses.fields(cls):
        if f.name == field:
            return json_name(f)
    raise LookupError(f"{cls.__name__} has no field {field!r}")


#: The keys of the blocks the capabilities own in status.
AUTOSCALING = key_of(ModelDeploymentStatus, "autoscaling")
FALLBACK_BUDGET = key_of(ModelDeploymentStatus, "fallback_budget")
ROLLOUT = key_of(ModelDeploymentStatus, "rollout")
