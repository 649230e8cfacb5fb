"""Pure: status blocks through the API's typed status classes.

Every capability builds its part of status as a `hedge_core.api` status object and writes
it with `write` (camelCase JSON, unset fields left out), and reads what status holds with
`read`, so a renamed field fails mypy rather than a cluster.

Reading never fails: the API server checks status against the CRD's schema, but a block
written by hand or by another version of the operator may still hold something this
version cannot parse. Then each part that does not parse is left out (the list item or the
field it is in), and what remains is read: status is observed state, and the next
reconcile rewrites it.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from hedge_core.api import ModelDeploymentStatus, SpecError, json_name, parse, to_json

T = TypeVar("T")


#: Parts left out before a block is read as empty (each try drops at least one).
_MAX_PRUNES = 16
_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def read(cls: type[T], data: Any) -> T:
    """`data` (a status block as the API server returns it) as a `cls`; the parts that do
    not parse are left out (see the module docstring)."""
    if not isinstance(data, Mapping):
        return parse(cls, {})
    value: Any = data
    for _ in range(_MAX_PRUNES):
        try:
            return parse(cls, value)
        except SpecError as e:
            pruned = _prune(value, [path for path, _ in e.problems])
            if pruned == value:
                break
            value = pruned
    return parse(cls, {})


def _prune(data: Any, paths: list[str]) -> Any:
    """`data` without what each problem path points into: the innermost list item on the
    path, or else the top-level field."""
    out = copy.deepcopy(data)
    for path in paths:
        steps = [(k, int(i) if i else None) for k, i in _STEP.findall(path)]
        if not steps:
            continue
        parent, last_list = out, None
        for key, index in steps:
            node = parent.get(key) if key and isinstance(parent, Mapping) else parent
            if key and index is None:
                parent = node
                continue
            if index is not None and isinstance(node, list) and index < len(node):
                last_list = (node, index)
                parent = node[index]
            else:
                break
        if last_list is not None:
            node, index = last_list
            node[index] = None  # removed below, so the other paths' indices still hold
        elif isinstance(out, dict):
            out.pop(steps[0][0], None)
    return _without_nones_in_lists(out)


def _without_nones_in_lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nones_in_lists(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nones_in_lists(v) for v in value if v is not None]
    return value


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
