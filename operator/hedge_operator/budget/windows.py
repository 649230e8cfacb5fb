"""Pure: the fallback budget's windows (spec.fallback.budget), as a pure function of the fallback
tokens counted at every gateway (hedge_gateway_fallback_tokens_total, summed by the scraper)
and the time: status.fallbackBudget, and the Events of a budget spent and renewed.

Windows are UTC minutes and UTC days. A window's spend is the summed counter now minus its
value when the window began (the operator remembers that; a restarted operator takes it
back from the spend status reports for the current window). Once a ceiling is reached,
`exhaustedUntil` is the end of that window: the gateways stop spilling until then, each
also counting its own spend since the status it last saw (hedge_serving.gateway.budget).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hedge_core.api import (
    FallbackBudget,
    FallbackBudgetStatus,
    ModelDeployment,
    rfc3339,
    unix_seconds,
)
from hedge_core.statuses import FALLBACK_BUDGET, read, write
from hedge_operator.events import Event

MINUTE = 60.0
DAY = 86400.0
EXHAUSTED = "FallbackBudgetExhausted"
RENEWED = "FallbackBudgetRenewed"
#: Spend numbers are written at most this often (a budget reached, a new window: at once).
STATUS_REFRESH = 1.0


@dataclass
class CounterWindow:
    """One UTC window over a summed, never-decreasing counter (the scraper's Counters keep
    restarted and departed gateways' counts); tenants.usage reads its windows the same way."""

    length: float
    start: float | None = None  # epoch seconds
    base: float = 0.0  # the counter's total when the window began
    last: float | None = None  # the counter's total at the previous reading

    def spend(
        self, total: float, now: float, reported_start: str | None, reported_tokens: int | None
    ) -> int:
        start = math.floor(now / self.length) * self.length
        if self.start != start:
            if self.start is None and unix_seconds(reported_start) == start:
                # A restarted operator: the window's spend so far is in status.
                self.base = total - float(reported_tokens or 0)
            elif self.start is not None and self.last is not None:
                # The window turned since the previous reading: what was spent since then
                # counts in the new window. Some of it may belong to the old one (at most one
                # tick's worth), so the ceiling is reached early, never late.
                self.base = min(self.last, total)
            else:
                self.base = total  # the first sight of a window starts at 0
            self.start = start
        self.last = total
        return max(0, round(total - self.base))


@dataclass
class BudgetWindows:
    """One ModelDeployment's windows (operator memory)."""

    minute: CounterWindow
    day: CounterWindow
    written_at: float = -math.inf
    last: FallbackBudgetStatus | None = None  # the status it last asked to write

    @classmethod
    def new(cls) -> BudgetWindows:
        return cls(CounterWindow(MINUTE), CounterWindow(DAY))

    def step(
        self,
        budget: FallbackBudget,
        total: float | None,
        reported: Mapping[str, Any],
        now: float,
    ) -> tuple[dict[str, Any], bool]:
        """The new status.fallbackBudget and whether to write it now. `total` is the summed
        fallback-token counter (None: no gateway could be read: status is left as it is);
        `reported` what status says (used until this has written once)."""
        was = self.last if self.last is not None else read(FallbackBudgetStatus, reported)
        if total is None:
            return write(was), False
        minute = self.minute.spend(total, now, was.minute_start, was.minute_tokens)
        day = self.day.spend(total, now, was.day_start, was.day_tokens)
        assert self.minute.start is not None and self.day.start is not None
        until = None
        if budget.tokens_per_day is not None and day >= budget.tokens_per_day:
            until = self.day.start + DAY
        elif budget.tokens_per_minute is not None and minute >= budget.tokens_per_minute:
            until = self.minute.start + MINUTE
        status = FallbackBudgetStatus(
            minute_start=rfc3339(self.minute.start),
            minute_tokens=minute,
            day_start=rfc3339(self.day.start),
            day_tokens=day,
            exhausted_until=rfc3339(until) if until is not None else None,
        )
        urgent = (
            status.exhausted_until != was.exhausted_until
            or status.minute_start != was.minute_start
            or status.day_start != was.day_start
        )
        write_now = urgent or (status != was and now - self.written_at >= STATUS_REFRESH)
        if write_now:
            self.written_at = now
            self.last = status
        return write(status), write_now


def budget_events(
    budget: FallbackBudget | None, previous: Mapping[str, Any] | None, new: Mapping[str, Any]
) -> list[Event]:
    """A Warning when spilling stops for a spent budget, and a Normal Event when it resumes."""
    if budget is None or not new.get(FALLBACK_BUDGET):
        return []
    before = read(FallbackBudgetStatus, (previous or {}).get(FALLBACK_BUDGET))
    after = read(FallbackBudgetStatus, new.get(FALLBACK_BUDGET))
    was, now = before.exhausted_until, after.exhausted_until
    if now and now != was:
        if budget.tokens_per_day is not None and (after.day_tokens or 0) >= budget.tokens_per_day:
            spent = f"{after.day_tokens} tokens today (tokensPerDay {budget.tokens_per_day})"
        else:
            spent = (
                f"{after.minute_tokens} tokens this minute "
                f"(tokensPerMinute {budget.tokens_per_minute})"
            )
        return [
            Event(
                "Warning",
                EXHAUSTED,
                f"the fallback spent {spent}: no spilling until {now}; requests only the "
                "fallback could serve are held for a pod or answered 429 with Retry-After",
            )
        ]
    if was and not now:
        return [Event("Normal", RENEWED, f"a new budget window began: spilling resumes ({was})")]
    return []


def current_status(
    md: ModelDeployment | None, previous: Mapping[str, Any], latest: dict[str, Any] | None
) -> dict[str, Any] | None:
    """status.fallbackBudget: the newest windows (`latest`), else what status holds; none
    without spec.fallback.budget."""
    kept = previous.get(FALLBACK_BUDGET)
    if md is None:
        return dict(kept) if isinstance(kept, Mapping) else None
    if md.spec.fallback is None or md.spec.fallback.budget is None:
        return None
    if latest is not None:
        return latest
    return dict(kept) if isinstance(kept, Mapping) else None
