"""The fallback budget's windows as a pure function of the summed token counter and time."""

from __future__ import annotations

from hedge_core.api import FallbackBudget
from hedge_operator.budget.windows import BudgetWindows, budget_events

MINUTE0 = 1_780_000_020.0  # a UTC minute boundary (…:27:00Z)
PER_MINUTE = FallbackBudget(tokens_per_minute=1000)


def test_spend_per_window_and_exhaustion_until_the_window_turns() -> None:
    windows = BudgetWindows.new()
    status, write = windows.step(PER_MINUTE, 5000.0, {}, MINUTE0 + 1)  # counter from before
    assert write and status["minuteTokens"] == 0
    assert status["minuteStart"] == "2026-05-28T20:27:00Z"
    status, write = windows.step(PER_MINUTE, 5600.0, {}, MINUTE0 + 1.5)
    assert not write  # numbers only: at most once per second
    status, write = windows.step(PER_MINUTE, 6000.0, {}, MINUTE0 + 3)
    assert write and status["minuteTokens"] == 1000
    assert status["exhaustedUntil"] == "2026-05-28T20:28:00Z"
    # The next minute: spend starts again from what came after the last reading, spilling
    # resumes.
    status, write = windows.step(PER_MINUTE, 6010.0, {}, MINUTE0 + 61)
    assert write and status["minuteTokens"] == 10 and "exhaustedUntil" not in status
    assert status["minuteStart"] == "2026-05-28T20:28:00Z"


def test_tokens_spent_as_the_minute_turns_count_in_the_new_minute() -> None:
    """Found on the local cluster: the spend between the last reading of a minute and the
    first of the next was counted in neither, so the gateway spilled 830 tokens in a minute
    with a ceiling of 600. It now counts in the new minute (early, never late)."""
    windows = BudgetWindows.new()
    windows.step(PER_MINUTE, 0.0, {}, MINUTE0 - 30)
    windows.step(PER_MINUTE, 200.0, {}, MINUTE0 - 0.4)  # the last tick of the old minute
    status, _ = windows.step(PER_MINUTE, 420.0, {}, MINUTE0 + 0.6)  # 220 since, most in this one
    assert status["minuteStart"] == "2026-05-28T20:27:00Z"
    assert status["minuteTokens"] == 220
    status, _ = windows.step(PER_MINUTE, 1200.0, {}, MINUTE0 + 5)
    assert status["minuteTokens"] == 1000 and status["exhaustedUntil"] == "2026-05-28T20:28:00Z"


def test_a_day_ceiling_holds_past_the_minute() -> None:
    budget = FallbackBudget(tokens_per_minute=1000, tokens_per_day=1500)
    windows = BudgetWindows.new()
    windows.step(budget, 0.0, {}, MINUTE0)
    windows.step(budget, 900.0, {}, MINUTE0 + 10)
    windows.step(budget, 900.0, {}, MINUTE0 + 60)  # ticks every second: one at the turn
    status, _ = windows.step(budget, 1600.0, {}, MINUTE0 + 70)  # 700 this minute, 1600 today
    assert status["dayTokens"] == 1600 and status["minuteTokens"] == 700
    assert status["exhaustedUntil"] == "2026-05-29T00:00:00Z"


def test_a_restarted_operator_carries_on_from_status() -> None:
    reported = {
        "minuteStart": "2026-05-28T20:27:00Z",
        "minuteTokens": 800,
        "dayStart": "2026-05-28T00:00:00Z",
        "dayTokens": 800,
    }
    windows = BudgetWindows.new()  # fresh memory; the counter restarted too (gateways came back)
    status, _ = windows.step(PER_MINUTE, 100.0, reported, MINUTE0 + 30)
    assert status["minuteTokens"] == 800
    status, _ = windows.step(PER_MINUTE, 300.0, reported, MINUTE0 + 32)
    assert status["minuteTokens"] == 1000 and "exhaustedUntil" in status


def test_no_gateway_read_leaves_status_alone() -> None:
    reported = {"minuteStart": "2026-05-28T20:27:00Z", "minuteTokens": 5}
    status, write = BudgetWindows.new().step(PER_MINUTE, None, reported, MINUTE0 + 30)
    assert status == reported and not write


def test_events_when_spent_and_when_renewed() -> None:
    spent = {
        "fallbackBudget": {
            "minuteTokens": 1012,
            "dayTokens": 1012,
            "exhaustedUntil": "2026-05-28T20:28:00Z",
        }
    }
    (event,) = budget_events(PER_MINUTE, {"fallbackBudget": {"minuteTokens": 10}}, spent)
    assert (event.type, event.reason) == ("Warning", "FallbackBudgetExhausted")
    assert "1012 tokens this minute (tokensPerMinute 1000)" in event.message
    assert "no spilling until 2026-05-28T20:28:00Z" in event.message
    assert budget_events(PER_MINUTE, spent, spent) == []
    (renewed,) = budget_events(PER_MINUTE, spent, {"fallbackBudget": {"minuteTokens": 0}})
    assert (renewed.type, renewed.reason) == ("Normal", "FallbackBudgetRenewed")
