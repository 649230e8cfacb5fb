"""The balancer: least outstanding requests, prefix affinity within a slack."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from hedge_serving.gateway.balancer import Balancer, stable_hash


@dataclass
class FakeBackend:
    outstanding: int
    affinity_seed: int


def backends(*loads: int) -> list[FakeBackend]:
    return [
        FakeBackend(load, stable_hash(f"http://10.0.0.{i}:8000")) for i, load in enumerate(loads)
    ]


def test_least_outstanding_without_affinity() -> None:
    b = Balancer()
    pool = backends(3, 1, 2)
    assert b.pick(pool) is pool[1]
    assert b.pick([]) is None
    ties = backends(0, 0, 0)
    assert {id(b.pick(ties)) for _ in range(3)} == {id(x) for x in ties}  # ties rotate


@given(st.lists(st.integers(0, 50), min_size=1, max_size=8), st.integers(0, 2**32 - 1))
def test_affinity_never_picks_a_much_busier_backend(loads: list[int], key: int) -> None:
    b = Balancer(affinity_slack=4, affinity_ratio=1.5)
    pool = backends(*loads)
    chosen = b.pick(pool, key)
    assert chosen is not None
    least = min(loads)
    assert chosen.outstanding <= least + max(4, int(least * 0.5))


def test_affinity_is_sticky_and_spreads_keys() -> None:
    b = Balancer()
    pool = backends(0, 0, 0, 0)
    keys = [stable_hash(f"system prompt {i}") for i in range(200)]
    first = [b.pick(pool, k) for k in keys]
    assert [b.pick(pool, k) for k in keys] == first  # same prefix, same pod
    counts = [sum(1 for c in first if c is p) for p in pool]
    assert min(counts) > 25  # keys spread over all pods
    # the preferred pod yields when much busier, to its next choice (also stable)
    key = keys[0]
    preferred = b.pick(pool, key)
    assert preferred is not None
    preferred.outstanding = 10
    second = b.pick(pool, key)
    assert second is not preferred and b.pick(pool, key) is second
    preferred.outstanding = 4  # within slack: affinity wins again
    assert b.pick(pool, key) is preferred
