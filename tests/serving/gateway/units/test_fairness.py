"""Priorities and fair release: the header rule, the when-full table, the fair queue."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable

import pytest

from hedge_core.api.clientpolicy import Priority
from hedge_serving.gateway.fairness import (
    HEADER_PRIORITY,
    Action,
    BadHeader,
    FairQueue,
    QueueFull,
    effective_priority,
    when_full,
)

C, S, X = Priority.CRITICAL, Priority.STANDARD, Priority.SHEDDABLE

# ------------------------------------------------------------------ effective_priority

PRIORITY_TABLE = [
    # policy, header, effective
    (None, None, S),
    (C, None, C),
    (S, None, S),
    (X, None, X),
    (C, "critical", C),
    (C, "standard", S),
    (C, "sheddable", X),
    (S, "critical", S),  # never raised
    (S, "standard", S),
    (S, "sheddable", X),
    (X, "critical", X),
    (X, "standard", X),
    (X, "sheddable", X),
    (None, "critical", S),
    (None, "sheddable", X),
    (C, " Sheddable ", X),  # case and blanks do not matter
    (S, "SHEDDABLE", X),
]


@pytest.mark.parametrize(("policy", "header", "expected"), PRIORITY_TABLE)
def test_effective_priority(
    policy: Priority | None, header: str | None, expected: Priority
) -> None:
    assert effective_priority(policy, header) is expected


@pytest.mark.parametrize("header", ["", "high", "low", "urgent", "0", "critical,standard"])
@pytest.mark.parametrize("policy", [None, C, S, X])
def test_unknown_header_is_a_bad_header_naming_the_allowed_values(
    policy: Priority | None, header: str
) -> None:
    got = effective_priority(policy, header)
    assert got == BadHeader(header)
    assert isinstance(got, BadHeader)
    assert got.param == HEADER_PRIORITY == "x-hedge-priority"
    assert got.allowed == ("critical", "standard", "sheddable")
    assert got.message == (
        f"header x-hedge-priority: {header!r} is not a priority; "
        "use one of critical, standard, sheddable"
    )


# ------------------------------------------------------------------ when_full

ANY = None
#: The docstring's table: priority, may spill, can hold, action (ANY: both values).
WHEN_FULL_TABLE: list[tuple[Priority, bool | None, bool | None, Action]] = [
    (X, ANY, ANY, Action.REFUSE),
    (C, True, ANY, Action.SPILL),
    (C, False, ANY, Action.QUEUE_AT_PODS),
    (S, True, ANY, Action.SPILL),
    (S, False, True, Action.HOLD),
    (S, False, False, Action.QUEUE_AT_PODS),
]


def _spill_inputs(may_spill: bool | None) -> Iterable[tuple[bool, bool, bool]]:
    """(fallback_allowed, has_fallback, budget_open) for which spilling is (not) possible."""
    every = list(itertools.product((False, True), repeat=3))
    if may_spill is None:
        return every
    return [x for x in every if all(x) == may_spill]


def _expand(
    table: list[tuple[Priority, bool | None, bool | None, Action]],
) -> list[tuple[Priority, bool, bool, bool, bool, Action]]:
    return [
        (priority, allowed, has, budget, hold, action)
        for priority, may_spill, can_hold, action in table
        for allowed, has, budget in _spill_inputs(may_spill)
        for hold in ((False, True) if can_hold is None else (can_hold,))
    ]


def test_the_table_covers_every_input_once() -> None:
    inputs = [row[:5] for row in _expand(WHEN_FULL_TABLE)]
    assert len(inputs) == len(set(inputs)) == 3 * 2**4


@pytest.mark.parametrize(
    ("priority", "allowed", "has_fallback", "budget_open", "can_hold", "expected"),
    _expand(WHEN_FULL_TABLE),
)
def test_when_full(
    priority: Priority,
    allowed: bool,
    has_fallback: bool,
    budget_open: bool,
    can_hold: bool,
    expected: Action,
) -> None:
    got = when_full(
        priority,
        fallback_allowed=allowed,
        has_fallback=has_fallback,
        budget_open=budget_open,
        can_hold=can_hold,
    )
    assert got is expected


def test_sheddable_never_spends_the_fallback() -> None:
    assert all(row[5] is not Action.SPILL for row in _expand(WHEN_FULL_TABLE) if row[0] is X)


# ------------------------------------------------------------------ FairQueue


def _drain(q: FairQueue) -> list[str]:
    out: list[str] = []
    while (item := q.pop()) is not None:
        out.append(item)
    return out


def _tenant(item_id: str) -> str:
    return item_id.split("-")[0]


def test_fifo_within_one_tenant() -> None:
    q = FairQueue()
    ids = [f"a-{i}" for i in range(50)]
    for i, item in enumerate(ids):
        q.push("a", 1 + i % 3, item, cost=1.0 + (i % 5), now=float(i))  # weight and cost vary
    assert len(q) == 50
    assert _drain(q) == ids
    assert len(q) == 0
    assert q.pop() is None


def test_flood_and_trickle_interleave() -> None:
    """A floods 100 requests at t=0; B sends one a second. Capacity frees one request
    every 0.5 s. B's requests do not wait behind A's backlog."""
    q = FairQueue()
    interval = 0.5
    for i in range(100):
        q.push("a", 1, f"a-{i}", 1.0, now=0.0)
    waits: dict[str, list[float]] = {"a": [], "b": []}
    positions: list[int] = []  # releases from each of B's pushes to its own, inclusive
    pushed_at: dict[str, int] = {}  # B's request -> the tick it was pushed at
    for tick in range(240):  # one release per tick
        now = tick * interval
        if tick % 2 == 0 and tick < 80:  # 40 trickle requests, one a second
            item = f"b-{tick // 2}"
            q.push("b", 1, item, 1.0, now=now)
            pushed_at[item] = tick
        released = q.pop()
        if released is None:
            break
        if _tenant(released) == "b":
            waits["b"].append(now - pushed_at[released] * interval)
            positions.append(tick - pushed_at[released] + 1)
        else:
            waits["a"].append(now)
    assert len(waits["a"]) == 100 and len(waits["b"]) == 40
    # every trickle request is released within the next two releases ...
    assert max(positions) <= 2
    assert max(waits["b"]) <= interval
    # ... while the flood's requests wait, on average, tens of seconds
    mean_a = sum(waits["a"]) / len(waits["a"])
    assert mean_a > 25.0
    assert mean_a > 50 * max(waits["b"])


@pytest.mark.parametrize("flood_first", [True, False])
def test_weights_3_to_1_share_releases_while_both_are_backlogged(flood_first: bool) -> None:
    q = FairQueue()
    order = ("a", "b") if flood_first else ("b", "a")
    for tenant in order:
        weight = 3 if tenant == "a" else 1
        for i in range(400):
            q.push(tenant, weight, f"{tenant}-{i}", 1.0, now=0.0)
    released = Counter(_tenant(q.pop() or "none-") for _ in range(400))
    assert released["a"] + released["b"] == 400
    assert released["a"] / released["b"] == pytest.approx(3.0, rel=0.05)
    # and at every point, not only at the end
    q2 = FairQueue()
    for i in range(400):
        q2.push("a", 3, f"a-{i}", 1.0, now=0.0)
        q2.push("b", 1, f"b-{i}", 1.0, now=0.0)
    seen = Counter[str]()
    for n in range(1, 401):
        seen[_tenant(q2.pop() or "none-")] += 1
        assert abs(seen["a"] - 0.75 * n) <= 2


def test_weights_apply_to_cost() -> None:
    """Equal weights, B's requests cost twice A's: B gets half as many releases."""
    q = FairQueue()
    for i in range(300):
        q.push("a", 1, f"a-{i}", 1.0, now=0.0)
        q.push("b", 1, f"b-{i}", 2.0, now=0.0)
    released = Counter(_tenant(q.pop() or "none-") for _ in range(300))
    assert released["a"] / released["b"] == pytest.approx(2.0, rel=0.05)


def test_an_idle_tenant_banks_no_credit() -> None:
    q = FairQueue()
    for i in range(300):
        q.push("a", 1, f"a-{i}", 1.0, now=0.0)
    for i in range(10):
        q.push("b", 1, f"b-{i}", 1.0, now=0.0)
    first = [_tenant(q.pop() or "") for _ in range(20)]
    assert Counter(first) == {"a": 10, "b": 10}
    assert q.count("b") == 0 and "b" not in q.counts()
    for _ in range(100):  # B is away while A's requests are released
        assert _tenant(q.pop() or "") == "a"
    for i in range(50):  # B returns with a burst of its own
        q.push("b", 1, f"b-back-{i}", 1.0, now=60.0)
    after = Counter(_tenant(q.pop() or "") for _ in range(20))
    assert after["b"] <= 11  # its fair half (one ahead at most), not all 20
    assert after["a"] >= 9


def test_remove_held_requests() -> None:
    q = FairQueue()
    for i in range(4):
        q.push("a", 1, f"a-{i}", 1.0, now=0.0)
    q.push("b", 1, "b-0", 1.0, now=1.0)
    assert q.counts() == {"a": 4, "b": 1}
    assert q.remove("a-1") is True
    assert q.remove("a-1") is False  # already gone: a race with pop is harmless
    assert q.remove("nope") is False
    assert "a-1" not in q and "a-2" in q
    assert len(q) == 4 and q.counts() == {"a": 3, "b": 1}
    assert q.remove("b-0") is True
    assert q.counts() == {"a": 3}
    assert _drain(q) == ["a-0", "a-2", "a-3"]
    assert q.counts() == {}


def test_an_id_removed_can_be_held_again_and_stale_entries_are_skipped() -> None:
    q = FairQueue()
    q.push("a", 1, "x", 1.0, now=0.0)
    q.push("a", 1, "y", 1.0, now=0.0)
    assert q.remove("x")
    q.push("a", 1, "x", 1.0, now=1.0)  # after y now
    assert q.enqueued_at("x") == 1.0
    assert _drain(q) == ["y", "x"]
    assert q.enqueued_at("x") is None


def test_removing_a_tenants_newest_gives_its_time_back() -> None:
    """A tenant whose request timed out is not pushed behind by that request's cost."""
    q = FairQueue()
    for i in range(10):
        q.push("a", 1, f"a-{i}", 1.0, now=0.0)
    q.push("b", 1, "b-0", 1.0, now=0.0)
    q.push("b", 1, "b-gone", 5.0, now=0.0)
    assert q.remove("b-gone")
    q.push("b", 1, "b-1", 1.0, now=1.0)
    order = _drain(q)
    assert order.index("b-1") < order.index("a-3")


def test_many_removals_keep_memory_bounded() -> None:
    q = FairQueue(max_items=100)
    for round_ in range(50):
        for i in range(100):
            q.push("a", 1, f"a-{round_}-{i}", 1.0, now=0.0)
        for i in range(99):
            assert q.remove(f"a-{round_}-{i}")
        assert q.pop() == f"a-{round_}-99"
        assert len(q._heap) <= 2 * 100 + 16
    assert len(q) == 0 and q.counts() == {}


def test_max_items() -> None:
    q = FairQueue(max_items=3)
    for i in range(3):
        q.push("a", 1, f"a-{i}", 1.0, now=0.0)
    with pytest.raises(QueueFull, match=r"fair queue is full: 3 requests held \(max_items\)"):
        q.push("b", 1, "b-0", 1.0, now=0.0)
    assert len(q) == 3 and q.counts() == {"a": 3}
    assert q.pop() == "a-0"
    q.push("b", 1, "b-0", 1.0, now=0.0)  # room again
    assert len(q) == 3


@pytest.mark.parametrize(
    ("weight", "item", "cost", "message"),
    [
        (0, "x", 1.0, "weight must be at least 1"),
        (1, "x", 0.0, "cost must be a positive finite number"),
        (1, "x", -1.0, "cost must be a positive finite number"),
        (1, "x", float("inf"), "cost must be a positive finite number"),
        (1, "x", float("nan"), "cost must be a positive finite number"),
        (1, "held", 1.0, "'held' is already held"),
    ],
)
def test_bad_pushes(weight: int, item: str, cost: float, message: str) -> None:
    q = FairQueue()
    q.push("a", 1, "held", 1.0, now=0.0)
    with pytest.raises(ValueError, match=message):
        q.push("a", weight, item, cost, now=0.0)
    assert len(q) == 1


def test_max_items_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_items must be at least 1"):
        FairQueue(max_items=0)
