"""The typed resource: a ModelDeployment's identity plus its parsed spec, and the rules on
the whole object (the only ones that may read metadata.name)."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hedge_core.api.constants import MAX_NAME_LENGTH
from hedge_core.api.schema import Rule, SpecError, parse
from hedge_core.api.spec import ModelDeploymentSpec

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
        """Parses an object as the API server returns it; raises SpecError.

        Memoised: the same inputs (name, namespace, uid, generation and the spec, compared by
        `repr`, so `1`, `1.0`, `True` and `"1"` or a list and a tuple stay apart) return the
        same object, or raise the same problems, without parsing again. The object is shared:
        treat it, and the lists and dicts in its spec, as read-only.
        """
        meta = body.get("metadata") or {}
        name = str(meta.get("name", ""))
        namespace = str(meta.get("namespace", ""))
        uid = str(meta.get("uid", ""))
        try:
            generation = int(meta.get("generation") or 0)
        except (TypeError, ValueError):
            return cls.parse_body(body)  # raises as it always did (or SpecError first)
        key = (cls, name, namespace, uid, generation, repr(body.get("spec") or {}))
        found = _MEMO.get(key)
        if found is None:
            try:
                found = cls.parse_body(body)
            except SpecError as e:
                _MEMO.put(key, tuple(e.problems))
                raise
            _MEMO.put(key, found)
        if isinstance(found, tuple):
            raise SpecError(list(found)) from None
        assert isinstance(found, cls)
        return found

    @classmethod
    def parse_body(cls, body: Mapping[str, Any]) -> ModelDeployment:
        """`from_body` without the memo: parses every time."""
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


Problems = tuple[tuple[str, str], ...]


class _Memo:
    """A bounded LRU map of parse results (a ModelDeployment, or the problems of a refused
    spec), safe to use from several threads."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[tuple[Any, ...], ModelDeployment | Problems] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> ModelDeployment | Problems | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: tuple[Any, ...], value: ModelDeployment | Problems) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


#: Parse results by their inputs: a few per object (its current and recent generations)
#: for a few thousand objects; the autoscale timer asks for each autoscaled model every
#: second, the reconciler and the gateway's discovery on every event.
MEMO_SIZE = 4096
_MEMO = _Memo(MEMO_SIZE)
