"""LocalStore as RedisStore's fallback: what it hands over for a push still counts until the
push lands (or comes back if it fails), and what landed counts as spent in the shared store."""

from __future__ import annotations

from hedge_serving.gateway.quota.limits import LimitSet
from hedge_serving.gateway.quota.store import LocalStore

T0 = 1_800_000_000.0
LIMITS = [LimitSet("tenant/a", tokens_per_minute=6000, concurrent_requests=30)]


def filled(share: float = 1 / 3) -> LocalStore:
    store = LocalStore(share)
    for i in range(20):  # 2000 of 6000 at share 1/3
        if store.reserve_now(f"r{i}", LIMITS, 100, T0).admitted and i:
            store.settle_now(f"r{i}", LIMITS, 100, T0)
    return store


def test_counts_in_transit_still_count() -> None:
    store = filled()
    usage = store.drain(T0 + 1)
    assert sum(v for v, _ in usage.counts.values()) == 2000
    assert list(usage.reservations) == ["r0"]  # the one still in flight
    assert not store.reserve_now("during-push", LIMITS, 100, T0 + 1).admitted


def test_a_confirmed_push_counts_as_spent_in_the_shared_store() -> None:
    store = filled()
    usage = store.drain(T0 + 1)
    store.confirm(usage)
    assert not store.holds("r0")  # it settles in the shared store now
    # A later outage in this minute: a third of the 4000 that remain.
    admitted = sum(store.reserve_now(f"s{i}", [LIMITS[0]], 100, T0 + 2).admitted for i in range(3))
    assert admitted == 3
    assert store.reserve_now("big", LIMITS, 1100, T0 + 2).limiting is not None
    assert store.drain(T0 + 3).counts  # the new local usage, to push next


def test_a_failed_push_gives_everything_back() -> None:
    store = filled()
    usage = store.drain(T0 + 1)
    store.restore(usage)
    assert store.holds("r0")
    again = store.drain(T0 + 1)
    assert again.counts == usage.counts
    assert again.reservations == usage.reservations


def test_windows_over_are_not_handed_over() -> None:
    store = filled()
    assert store.drain(T0 + 61).counts == {}
