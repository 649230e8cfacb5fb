"""Does I/O: one fallback-budget tick of one ModelDeployment.

Sums the fallback tokens every gateway counted (the data plane's snapshot) into the
model's `BudgetWindows` (pure), keeps the budget metrics, and returns the
status.fallbackBudget the reconciler must write now, or None.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hedge_core.api import FallbackBudget, FallbackBudgetStatus
from hedge_core.statuses import FALLBACK_BUDGET, read
from hedge_operator import metrics
from hedge_operator.budget.windows import BudgetWindows
from hedge_operator.dataplane.signals import Snapshot

Key = tuple[str, str]


def tick(
    windows: BudgetWindows,
    budget: FallbackBudget,
    key: Key,
    status: Mapping[str, Any],
    snapshot: Snapshot | None,
    now: float,
) -> dict[str, Any] | None:
    """The windows' new status.fallbackBudget when it must be written now, else None."""
    total = None
    if snapshot is not None and snapshot.gateways_read:
        total = snapshot.counters.total(("fallback_tokens", *key))
    block, write = windows.step(budget, total, status.get(FALLBACK_BUDGET) or {}, now)
    spent = read(FallbackBudgetStatus, block)
    metrics.FALLBACK_TOKENS.labels(*key, "minute").set(spent.minute_tokens or 0)
    metrics.FALLBACK_TOKENS.labels(*key, "day").set(spent.day_tokens or 0)
    metrics.FALLBACK_BUDGET_EXHAUSTED.labels(*key).set(int(spent.exhausted_until is not None))
    return block if write else None
