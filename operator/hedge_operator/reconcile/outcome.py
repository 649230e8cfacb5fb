"""Pure: what one reconcile did and what status it computed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hedge_operator.provisioning.plan import Action
from hedge_operator.provisioning.validation import Problem


@dataclass
class Outcome:
    status: dict[str, Any]
    patch: dict[str, Any]  # merge patch from the object's current status; empty: no change
    problem: Problem | None
    actions: list[Action]
    requests: int  # API requests made (writes, Secret look-ups, Events)
    #: Reconcile again after this many seconds: writes the watch has not shown yet may
    #: need repeating (e.g. a child deleted right after it was created).
    recheck_after: float | None = None
