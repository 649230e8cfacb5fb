"""LocalStore and RedisStore (against a real redis-server) behave the same on the same
table: all-or-nothing admission, window turns, late and repeated settles, slots."""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Callable

import pytest

from hedge_dev.redis import RedisServer
from hedge_serving.gateway.quota.limits import LimitSet
from hedge_serving.gateway.quota.store import LocalStore, QuotaStore, RedisStore

T0 = 1_800_000_000.0  # a minute boundary
TENANT = LimitSet("tenant/team-a/policy", requests_per_minute=5, tokens_per_minute=6000)
KEY = LimitSet("key/team-a/policy/ci-bot", tokens_per_minute=1000, concurrent_requests=2)
MODEL = LimitSet("model/team-a/policy/llama", tokens_per_day=8000)
ids = (f"req-{n}" for n in itertools.count())


@pytest.fixture(params=["local", "redis"])
async def store(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    redis_stores: Callable[..., RedisStore],
) -> AsyncIterator[QuotaStore]:
    if request.param == "local":
        yield LocalStore()
    else:
        shared = redis_stores(redis_server.url, timeout=1.0)  # no fallback in these tests
        yield shared
        assert shared.shared, "the store fell back to local counting during the test"


async def remaining_tokens(store: QuotaStore, limits: list[LimitSet], now: float) -> int | None:
    """What a probe of 0 tokens (no requests limit) is told remains."""
    probe = [LimitSet(s.scope, tokens_per_minute=s.tokens_per_minute) for s in limits]
    rid = next(ids)
    decision = await store.reserve(rid, probe, 0, now)
    await store.settle(rid, probe, 0, 0, now)
    return decision.remaining_tokens


async def test_requests_per_minute_then_refused_until_the_minute_turns(store: QuotaStore) -> None:
    for _ in range(5):
        assert (await store.reserve(next(ids), [TENANT], 1, T0 + 10)).admitted
    refused = await store.reserve(next(ids), [TENANT], 1, T0 + 20)
    assert not refused.admitted
    assert refused.limiting == "tenant/team-a/policy requestsPerMinute 5"
    assert refused.retry_after == pytest.approx(40.0)
    assert refused.remaining_requests == 0
    assert (await store.reserve(next(ids), [TENANT], 1, T0 + 60)).admitted


async def test_all_or_nothing_across_scopes(store: QuotaStore) -> None:
    """A request the key refuses adds nothing to the tenant's or the model's counters."""
    assert (await store.reserve(next(ids), [TENANT, KEY, MODEL], 900, T0)).admitted
    refused = await store.reserve(next(ids), [TENANT, KEY, MODEL], 200, T0 + 1)
    assert refused.limiting == "key/team-a/policy/ci-bot tokensPerMinute 1000"
    assert await remaining_tokens(store, [TENANT], T0 + 2) == 6000 - 900
    loose = LimitSet(MODEL.scope, tokens_per_day=MODEL.tokens_per_day)
    day = await store.reserve(next(ids), [loose], 7100, T0 + 3)
    assert day.admitted  # 900 + 7100 = 8000: the day counter had only the first request


async def test_tokens_beyond_the_whole_limit_are_refused_at_once(store: QuotaStore) -> None:
    refused = await store.reserve(next(ids), [TENANT, KEY], 1500, T0)
    assert not refused.admitted
    assert refused.retry_after == math.inf
    assert refused.limiting == (
        "key/team-a/policy/ci-bot tokensPerMinute 1000 "
        "(the request needs 1500, more than the limit)"
    )


async def test_settle_returns_unused_tokens_to_the_window(store: QuotaStore) -> None:
    rid = next(ids)
    assert (await store.reserve(rid, [TENANT], 5000, T0)).admitted
    assert not (await store.reserve(next(ids), [TENANT], 2000, T0 + 1)).admitted
    await store.settle(rid, [TENANT], 5000, 800, T0 + 2)
    assert (await store.reserve(next(ids), [TENANT], 5200, T0 + 3)).admitted


async def test_settle_after_the_window_turned_adjusts_the_window_admitted_in(
    store: QuotaStore,
) -> None:
    rid = next(ids)
    assert (await store.reserve(rid, [TENANT], 5000, T0 + 59)).admitted
    await store.settle(rid, [TENANT], 5000, 5600, T0 + 61)  # used more than it reserved
    assert await remaining_tokens(store, [TENANT], T0 + 59.5) == 400
    assert await remaining_tokens(store, [TENANT], T0 + 62) == 6000  # the new minute: untouched


async def test_settle_twice_counts_once(store: QuotaStore) -> None:
    rid = next(ids)
    assert (await store.reserve(rid, [TENANT, KEY], 1000, T0)).admitted
    await store.settle(rid, [TENANT, KEY], 1000, 100, T0 + 1)
    await store.settle(rid, [TENANT, KEY], 1000, 100, T0 + 1)
    assert await remaining_tokens(store, [TENANT], T0 + 2) == 5900


async def test_a_repeated_reserve_holds_one_reservation(store: QuotaStore) -> None:
    rid = next(ids)
    assert (await store.reserve(rid, [TENANT], 1000, T0)).admitted
    assert (await store.reserve(rid, [TENANT], 1000, T0)).admitted
    assert await remaining_tokens(store, [TENANT], T0 + 1) == 5000


async def test_negative_adjustments_stop_at_zero(store: QuotaStore) -> None:
    rid = next(ids)
    assert (await store.reserve(rid, [TENANT], 300, T0)).admitted
    await store.settle(rid, [TENANT], 300, -50, T0 + 1)
    assert await remaining_tokens(store, [TENANT], T0 + 2) == 6000


async def test_concurrency_slots_free_on_settle(store: QuotaStore) -> None:
    first, second = next(ids), next(ids)
    assert (await store.reserve(first, [KEY], 1, T0)).admitted
    assert (await store.reserve(second, [KEY], 1, T0)).admitted
    third = await store.reserve(next(ids), [KEY], 1, T0)
    assert third.limiting == "key/team-a/policy/ci-bot concurrentRequests 2"
    await store.settle(first, [KEY], 1, 1, T0 + 1)
    assert (await store.reserve(next(ids), [KEY], 1, T0 + 2)).admitted


async def test_a_slot_never_settled_frees_itself_when_its_lease_lapses(store: QuotaStore) -> None:
    for _ in range(2):
        assert (await store.reserve(next(ids), [KEY], 1, T0)).admitted
    assert not (await store.reserve(next(ids), [KEY], 1, T0 + 599)).admitted
    assert (await store.reserve(next(ids), [KEY], 1, T0 + 601)).admitted


async def test_limits_changed_between_reserve_and_settle(store: QuotaStore) -> None:
    """Settle adjusts what the request reserved and frees its slots, whatever the limits
    say by then (a scope dropped, another added)."""
    rid = next(ids)
    assert (await store.reserve(rid, [TENANT, KEY], 900, T0)).admitted
    await store.settle(rid, [MODEL], 900, 100, T0 + 1)
    assert await remaining_tokens(store, [TENANT], T0 + 2) == 5900
    assert await remaining_tokens(store, [KEY], T0 + 2) == 900
    for _ in range(2):  # both slots free again
        assert (await store.reserve(next(ids), [KEY], 1, T0 + 3)).admitted


async def test_headers_figures_follow_the_counts(store: QuotaStore) -> None:
    decision = await store.reserve(next(ids), [TENANT, KEY], 400, T0 + 30)
    assert (decision.limit_requests, decision.remaining_requests) == (5, 4)
    assert (decision.limit_tokens, decision.remaining_tokens) == (1000, 600)
    assert decision.reset_tokens == pytest.approx(30.0)


async def test_no_limits_admits_with_no_figures(store: QuotaStore) -> None:
    decision = await store.reserve(next(ids), [LimitSet("tenant/free")], 10**9, T0)
    assert decision.admitted and decision.limit_tokens is None


async def test_what_the_fallback_notes_of_redis_is_forgotten_with_its_window(
    redis_server: RedisServer, redis_stores: Callable[..., RedisStore]
) -> None:
    """A RedisStore notes each window's shared count for its fallback; bounded memory."""
    store = redis_stores(redis_server.url, timeout=1.0)
    limits = [LimitSet("tenant/a", tokens_per_minute=100, tokens_per_day=10**6)]
    for minute in range(30):
        assert (await store.reserve(next(ids), limits, 1, T0 + minute * 60)).admitted
    assert len(store.fallback.spent) == 2  # this minute's and today's
