"""Pure: a ClientPolicy's status.usage from its tenant counters summed over the gateways
(`dataplane.signals.tenant_totals`) and the time: requests and tokens in the current UTC
minute, tokens in the current UTC day.

The windows are the fallback budget's (`budget.windows.CounterWindow`): a window's usage is
the summed counter now minus its value when the window began. The scraper's `Counters`
keep what a restarted gateway had counted (its reset counter adds to it) and what a
departed one counted, so usage never goes back and nothing counts twice. A restarted
operator takes the current windows' usage back from status.usage.

Requests are those a model or a fallback provider served; the ones the gateway refused
(`served_by="gateway"`, a 429 among them) are not usage. Status is written only when a
count or a window changes, with `time` saying when it was measured; an idle tenant's
status is not rewritten each minute (0 requests in an older minute reads the same).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from hedge_core.api import ClientPolicyUsage, rfc3339
from hedge_core.statuses import read, write
from hedge_operator.budget.windows import DAY, MINUTE, CounterWindow
from hedge_operator.dataplane.signals import TenantTotals


def tenant_label(namespace: str, name: str) -> str:
    """How the gateways' metrics name a ClientPolicy's tenant."""
    return f"{namespace}/{name}"


def _idle_minute(new: ClientPolicyUsage, was: ClientPolicyUsage) -> bool:
    """Only the minute turned, with nothing in it nor in the one status shows."""
    return (
        new.day_start == was.day_start
        and new.day_tokens == was.day_tokens
        and not new.minute_requests
        and not new.minute_tokens
        and not was.minute_requests
        and not was.minute_tokens
        and was.minute_start is not None
    )


def changed(new: ClientPolicyUsage, was: ClientPolicyUsage) -> bool:
    """Whether status.usage must be written: a count or a window changed (`time` aside),
    unless only the minute turned for an idle tenant."""
    if replace(new, time=None) == replace(was, time=None):
        return False
    return not _idle_minute(new, was)


@dataclass
class UsageWindows:
    """One ClientPolicy's windows (operator memory)."""

    minute_requests: CounterWindow
    minute_tokens: CounterWindow
    day_tokens: CounterWindow
    last: ClientPolicyUsage | None = None  # the usage it last asked to write

    @classmethod
    def new(cls) -> UsageWindows:
        return cls(CounterWindow(MINUTE), CounterWindow(MINUTE), CounterWindow(DAY))

    def step(
        self, totals: TenantTotals | None, reported: Mapping[str, Any] | None, now: float
    ) -> dict[str, Any] | None:
        """The new status.usage when it must be written, else None. `totals` is the tenant's
        summed counters (None: no gateway could be read: status is left as it is);
        `reported` what status.usage says (used until this has written once)."""
        if totals is None:
            return None
        was = self.last if self.last is not None else read(ClientPolicyUsage, reported)
        requests = self.minute_requests.spend(
            totals.requests, now, was.minute_start, was.minute_requests
        )
        tokens = self.minute_tokens.spend(totals.tokens, now, was.minute_start, was.minute_tokens)
        day = self.day_tokens.spend(totals.tokens, now, was.day_start, was.day_tokens)
        assert self.minute_tokens.start is not None and self.day_tokens.start is not None
        usage = ClientPolicyUsage(
            time=rfc3339(now),
            minute_start=rfc3339(self.minute_tokens.start),
            minute_requests=requests,
            minute_tokens=tokens,
            day_start=rfc3339(self.day_tokens.start),
            day_tokens=day,
        )
        if not changed(usage, was):
            return None
        self.last = usage
        return write(usage)
