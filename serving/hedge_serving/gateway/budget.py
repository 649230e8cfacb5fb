"""The fallback budget as one gateway enforces it (spec.fallback.budget).

The operator sums every gateway's fallback tokens and writes the spend of the current
windows to status.fallbackBudget (with `exhaustedUntil` once a ceiling is reached); the
gateways read it with the ModelDeployment. Between two such updates a gateway adds what it
spent itself since it saw the last one, so a single gateway stops at the ceiling on its own
and several overshoot by at most what the others spent since the last status. Windows are
UTC minutes and days; a gateway resumes spilling when its window turns, without waiting for
the operator.

Each fallback request reserves what it may spend at admission (`reserve`: the prompt
estimate + `max_tokens` x `n`) and settles on what it did spend (`settle`); reservations of
requests in flight count as spent, so the requests admitted while a ceiling is crossed cannot
all run to completion on top of it: a request is admitted while spend + reservations is
below the limit, so one gateway overshoots by at most one request's spend. A request that
only others' reservations keep out waits (briefly, `RESERVATION_WAIT`) for them to settle
rather than being refused: most settle far below what they reserved, and a 429 answered while
the budget still has room would be followed by answers that spill after it.

`share` (`--fallback-budget-share`, the chart sets 1 / replicas) bounds what one gateway
spends on its own count: while the operator has not written the current window (it is down,
or the window just turned) a gateway stops at `share` x the limit; between two status
updates it spends at most `share` x what the status says remains. With N gateways of share
1/N, the operator down costs at most the budget, not N budgets.

`BudgetMeter` lives with the ModelDeployment's `Demand` (it survives routing-table updates);
`BudgetSpec` is what the ModelDeployment says (limits and the status numbers).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

MINUTE = 60.0
DAY = 86400.0
#: Seconds a request that only reservations of requests in flight keep from the fallback
#: waits for them to settle before it is refused.
RESERVATION_WAIT = 2.0


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    """Limits from the spec, spend from status (seconds are UTC epoch seconds)."""

    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    minute_start: float | None = None
    minute_tokens: int = 0
    day_start: float | None = None
    day_tokens: int = 0
    exhausted_until: float | None = None


class _Window:
    """One window's spend as this gateway knows it."""

    __slots__ = ("index", "length", "local", "since_status")

    def __init__(self, length: float) -> None:
        self.length = length
        self.index = -1
        self.local = 0  # this gateway's tokens in the current window
        self.since_status = 0  # ... of which after the last status it saw

    def roll(self, now: float) -> None:
        index = math.floor(now / self.length)
        if index != self.index:
            self.index, self.local, self.since_status = index, 0, 0

    def spent(self, status_start: float | None, status_tokens: int) -> int:
        if status_start is not None and math.floor(status_start / self.length) == self.index:
            return status_tokens + self.since_status
        return self.local  # the operator has not written this window yet

    def allowance(
        self, limit: int, status_start: float | None, status_tokens: int, share: float
    ) -> tuple[int, float]:
        """(what counts as spent, the ceiling it is held to) in this window."""
        if status_start is not None and math.floor(status_start / self.length) == self.index:
            if share >= 1:
                return status_tokens + self.since_status, limit
            # This gateway's own spend since the status, against its share of what remains.
            return self.since_status, share * max(0, limit - status_tokens)
        return self.local, share * limit

    def ends(self) -> float:
        return (self.index + 1) * self.length


class BudgetMeter:
    """One ModelDeployment's fallback spend at this gateway, and whether it may spill."""

    __slots__ = ("_day", "_minute", "_settled", "reserved", "spec")

    def __init__(self) -> None:
        self.spec: BudgetSpec | None = None
        self.reserved = 0  # tokens reserved by fallback requests in flight
        self._minute = _Window(MINUTE)
        self._day = _Window(DAY)
        self._settled: asyncio.Event | None = None  # set (and replaced) at each settle

    def update(self, spec: BudgetSpec | None) -> None:
        """The ModelDeployment as the gateway now sees it; new status numbers replace what
        this gateway counted on its own since the previous ones."""
        if spec != self.spec:
            if spec is not None and (
                self.spec is None
                or (spec.minute_start, spec.minute_tokens, spec.day_start, spec.day_tokens)
                != (
                    self.spec.minute_start,
                    self.spec.minute_tokens,
                    self.spec.day_start,
                    self.spec.day_tokens,
                )
            ):
                self._minute.since_status = 0
                self._day.since_status = 0
            self.spec = spec

    def record(self, tokens: int, now: float) -> None:
        for window in (self._minute, self._day):
            window.roll(now)
            window.local += tokens
            window.since_status += tokens

    def reserve(self, tokens: int) -> int:
        """Reserve what an admitted request may spend; give it back to `settle`."""
        tokens = max(0, tokens)
        self.reserved += tokens
        return tokens

    def settle(self, reservation: int, tokens: int, now: float) -> None:
        """A request that reserved `reservation` is done, having spent `tokens`."""
        self.reserved = max(0, self.reserved - reservation)
        if tokens > 0:
            self.record(tokens, now)
        if self._settled is not None:
            self._settled.set()
            self._settled = None

    async def admit_after_reservations(
        self, now: float, share: float = 1.0, wait: float = RESERVATION_WAIT
    ) -> tuple[float, str] | None:
        """`blocked`, after waiting up to `wait` seconds for requests in flight to settle
        while only their reservations block (the spend alone leaves room)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            at = now + (loop.time() - started)
            blocked = self.blocked(at, share)
            if blocked is None or not self.reserved:
                return blocked
            if self.blocked(at, share, count_reserved=False) is not None:
                return blocked  # spent without them: no settle can make room
            left = started + wait - loop.time()
            if left <= 0:
                return blocked
            if self._settled is None:
                self._settled = asyncio.Event()
            try:
                await asyncio.wait_for(self._settled.wait(), left)
            except TimeoutError:
                return self.blocked(now + (loop.time() - started), share)

    def blocked(
        self, now: float, share: float = 1.0, *, count_reserved: bool = True
    ) -> tuple[float, str] | None:
        """None while the fallback may be used; else (seconds until it may again, why).
        Reservations of requests in flight count as spent (unless `count_reserved` is
        False)."""
        spec = self.spec
        if spec is None or (spec.tokens_per_minute is None and spec.tokens_per_day is None):
            return None
        if spec.exhausted_until is not None and spec.exhausted_until > now:
            return spec.exhausted_until - now, "spent (status.fallbackBudget.exhaustedUntil)"
        for limit, window, start, tokens, name in (
            (spec.tokens_per_day, self._day, spec.day_start, spec.day_tokens, "tokensPerDay"),
            (
                spec.tokens_per_minute,
                self._minute,
                spec.minute_start,
                spec.minute_tokens,
                "tokensPerMinute",
            ),
        ):
            if limit is None:
                continue
            window.roll(now)
            spent, ceiling = window.allowance(limit, start, tokens, share)
            reserved = self.reserved if count_reserved else 0
            if spent + reserved >= ceiling:
                held = f" ({self.reserved} reserved by requests in flight)" if self.reserved else ""
                if ceiling < limit:
                    return window.ends() - now, (
                        f"{spent} of this gateway's share {ceiling:g} of {name} {limit} spent{held}"
                    )
                total = window.spent(start, tokens)
                return window.ends() - now, f"{total} of {name} {limit} spent{held}"
        return None
