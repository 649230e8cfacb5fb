"""status.usage as a pure function of the tenant's summed counters and the time."""

from __future__ import annotations

from typing import Any

import pytest

from hedge_operator.dataplane.signals import Counters, TenantTotals, tenant_totals
from hedge_operator.tenants.usage import UsageWindows, tenant_label

MINUTE0 = 1_780_000_020.0  # a UTC minute boundary (2026-05-28T20:27:00Z)
DAY0 = 1_779_926_400.0  # that day's start (2026-05-28T00:00:00Z)

Step = tuple[float, TenantTotals | None]
Seen = dict[str, Any] | None


def steps(windows: UsageWindows, *readings: Step, reported: Seen = None) -> list[Seen]:
    return [windows.step(totals, reported, now) for now, totals in readings]


def counts(usage: Seen) -> tuple[Any, ...] | None:
    if usage is None:
        return None
    keys = ("minuteStart", "minuteRequests", "minuteTokens", "dayTokens")
    return tuple(usage.get(k) for k in keys)


T = TenantTotals


@pytest.mark.parametrize(
    ("readings", "expected"),
    [
        pytest.param(
            [(MINUTE0 + 1, T(0, 0)), (MINUTE0 + 11, T(2, 50)), (MINUTE0 + 21, T(3, 80))],
            [("2026-05-28T20:27:00Z", 0, 0, 0), ("2026-05-28T20:27:00Z", 2, 50, 50),
             ("2026-05-28T20:27:00Z", 3, 80, 80)],
            id="counts-within-a-minute",
        ),
        pytest.param(
            [(MINUTE0 + 1, T(0, 0)), (MINUTE0 + 11, T(0, 0)), (MINUTE0 + 21, T(0, 0))],
            [("2026-05-28T20:27:00Z", 0, 0, 0), None, None],
            id="unchanged-is-not-written",
        ),
        pytest.param(
            [(MINUTE0 + 50, T(1, 10)), (MINUTE0 + 60, T(4, 40)), (MINUTE0 + 70, T(4, 40))],
            [("2026-05-28T20:27:00Z", 0, 0, 0), ("2026-05-28T20:28:00Z", 3, 30, 30), None],
            id="the-minute-turns-the-day-goes-on",
        ),
        pytest.param(
            [(MINUTE0 + 1, T(0, 0)), (MINUTE0 + 61, T(0, 0)), (MINUTE0 + 121, T(0, 0))],
            [("2026-05-28T20:27:00Z", 0, 0, 0), None, None],
            id="an-idle-tenant-is-not-rewritten-each-minute",
        ),
        pytest.param(
            [(MINUTE0 + 1, T(0, 0)), (MINUTE0 + 11, T(1, 5)), (MINUTE0 + 61, T(1, 5))],
            [("2026-05-28T20:27:00Z", 0, 0, 0), ("2026-05-28T20:27:00Z", 1, 5, 5),
             ("2026-05-28T20:28:00Z", 0, 0, 5)],
            id="a-busy-minute-gives-way-to-an-empty-one",
        ),
        pytest.param(
            [(MINUTE0 + 1, T(0, 0)), (MINUTE0 + 11, None), (MINUTE0 + 21, T(1, 9))],
            [("2026-05-28T20:27:00Z", 0, 0, 0), None, ("2026-05-28T20:27:00Z", 1, 9, 9)],
            id="no-gateway-read-leaves-status-alone",
        ),
        pytest.param(
            [(MINUTE0 + 1, T(7, 700))],
            [("2026-05-28T20:27:00Z", 0, 0, 0)],
            id="what-came-before-the-first-sight-is-not-this-minutes",
        ),
    ],
)  # fmt: skip
def test_windows(readings: list[Step], expected: list[tuple[Any, ...] | None]) -> None:
    assert [counts(u) for u in steps(UsageWindows.new(), *readings)] == expected


def test_the_day_turns_at_utc_midnight() -> None:
    windows = UsageWindows.new()
    windows.step(T(0, 0), None, DAY0 + 86400 - 30)
    before = windows.step(T(1, 100), None, DAY0 + 86400 - 5)
    after = windows.step(T(2, 130), None, DAY0 + 86400 + 5)
    assert before is not None and after is not None
    assert (before["dayStart"], before["dayTokens"]) == ("2026-05-28T00:00:00Z", 100)
    assert (after["dayStart"], after["dayTokens"]) == ("2026-05-29T00:00:00Z", 30)
    assert after["time"] == "2026-05-29T00:00:05Z"


def test_a_restarted_operator_takes_the_current_windows_back_from_status() -> None:
    reported = {
        "time": "2026-05-28T20:27:30Z",
        "minuteStart": "2026-05-28T20:27:00Z",
        "minuteRequests": 4,
        "minuteTokens": 400,
        "dayStart": "2026-05-28T00:00:00Z",
        "dayTokens": 9000,
    }
    # The counters the new operator first sees hold everything since the gateways began.
    first, then = steps(
        UsageWindows.new(),
        (MINUTE0 + 40, T(50, 20_000)),
        (MINUTE0 + 50, T(51, 20_010)),
        reported=reported,
    )
    assert first is None  # status already says it
    assert counts(then) == ("2026-05-28T20:27:00Z", 5, 410, 9010)
    # Status from an earlier minute: this minute starts at 0, the day goes on.
    (usage,) = steps(UsageWindows.new(), (MINUTE0 + 100, T(51, 20_010)), reported=reported)
    assert counts(usage) == ("2026-05-28T20:28:00Z", 0, 0, 9000)


def test_a_gateway_restart_neither_goes_back_nor_counts_twice() -> None:
    counters = Counters()
    key = ("tenant_tokens", "t/a", "k", "m", "self-hosted")
    requests = ("tenant_requests", "t/a", "k", "m", "self-hosted")
    windows = UsageWindows.new()
    seen = []
    for now, gw1, gw2 in [
        (MINUTE0 + 1, 100, 50),  # before the first sight: not this minute's
        (MINUTE0 + 11, 130, 50),
        (MINUTE0 + 21, 5, 60),  # gw-1 restarted: its 130 stay counted, 5 are new
        (MINUTE0 + 31, 5, 60),
    ]:
        counters.update("gw-1", {key: gw1, requests: gw1 / 10})
        counters.update("gw-2", {key: gw2, requests: gw2 / 10})
        seen.append(counts(windows.step(tenant_totals(counters).get("t/a"), None, now)))
    assert seen == [
        ("2026-05-28T20:27:00Z", 0, 0, 0),
        ("2026-05-28T20:27:00Z", 3, 30, 30),
        ("2026-05-28T20:27:00Z", 4, 45, 45),
        None,
    ]


def test_tenant_label_is_the_gateways() -> None:
    assert tenant_label("team-a", "team-a") == "team-a/team-a"
