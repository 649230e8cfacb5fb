"""Pure: status blocks through the API's typed status classes.

Every capability builds its part of status as a `hedge_core.api` status object and writes
it with `write` (camelCase JSON, unset fields left out), and reads what status holds with
`read`, so a renamed field fails mypy rather than a cluster. A block that does not parse
(written by hand, or by a newer operator) reads as empty: status is observed state, and
the next reconcile rewrites it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from hedge_core.api import SpecError, parse, to_json

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
    """The JSON form of a status object, as status holds it."""
    out = to_json(obj)
    assert isinstance(out, dict)
    return out
