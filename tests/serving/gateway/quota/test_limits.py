"""The pure parts of the quota engine over tables: window math, ceilings, the counters a
request touches, decisions and OpenAI's headers."""

from __future__ import annotations

import math

import pytest

from hedge_serving.gateway.quota.limits import (
    CONCURRENCY_RETRY_AFTER,
    Decision,
    LimitSet,
    already_admitted,
    counter_key,
    decide,
    openai_duration,
    plan_counters,
    ratelimit_headers,
    share_ceiling,
    window_index,
)

T0 = 1_800_000_000.0  # a minute boundary (and 30000 minutes into a day: not a day boundary)
TENANT = LimitSet("tenant/team-a/policy", requests_per_minute=100, tokens_per_minute=6000)
KEY = LimitSet("key/team-a/policy/ci-bot", tokens_per_minute=1000, concurrent_requests=2)


@pytest.mark.parametrize(
    ("now", "length", "index"),
    [
        (0.0, 60, 0),
        (59.999, 60, 0),
        (60.0, 60, 1),
        (T0 + 59.5, 60, T0 // 60),
        (86399.9, 86400, 0),
        (86400.0, 86400, 1),
    ],
)
def test_window_index_is_the_fixed_utc_window(now: float, length: float, index: int) -> None:
    assert window_index(now, length) == index


@pytest.mark.parametrize(
    ("limit", "share", "at_least_one", "ceiling"),
    [
        (6000, 1.0, False, 6000),
        (6000, 1 / 3, False, 2000),  # not 1999 from float error
        (100, 1 / 6, True, 16),
        (2, 1 / 3, True, 1),  # requests and slots: at least 1 on each gateway
        (2, 1 / 3, False, 0),  # tokens: no floor
        (0, 1.0, True, 0),  # a limit of 0 admits nothing, even floored
    ],
)
def test_share_ceiling(limit: int, share: float, at_least_one: bool, ceiling: int) -> None:
    assert share_ceiling(limit, share, at_least_one=at_least_one) == ceiling


def test_plan_counters_touches_each_limit_once_with_its_amount() -> None:
    counters = plan_counters([TENANT, KEY], 250, T0 + 10)
    assert [(c.key, c.amount, c.ceiling, c.ends) for c in counters] == [
        (counter_key(TENANT.scope, "requestsPerMinute", int(T0 // 60)), 1, 100, T0 + 60),
        (counter_key(TENANT.scope, "tokensPerMinute", int(T0 // 60)), 250, 6000, T0 + 60),
        (counter_key(KEY.scope, "tokensPerMinute", int(T0 // 60)), 250, 1000, T0 + 60),
        (counter_key(KEY.scope, "concurrentRequests"), 1, 2, None),
    ]


def test_plan_counters_merges_a_scope_named_twice_at_the_lower_limit() -> None:
    loose = LimitSet("tenant/a", tokens_per_day=900)
    tight = LimitSet("tenant/a", tokens_per_day=500)
    counters = plan_counters([loose, tight, loose], 10, T0)
    assert [(c.kind, c.limit) for c in counters] == [("tokensPerDay", 500)]
    assert counters[0].ends == (T0 // 86400 + 1) * 86400


@pytest.mark.parametrize(
    ("spent", "share", "ceiling"),
    [
        (0, 1 / 3, 2000),
        (3000, 1 / 3, 1000),  # a third of what the shared store said remains
        (3000, 1.0, 3000),  # one gateway: exactly what remains
        (6000, 1 / 3, 0),
        (9000, 1 / 3, 0),  # overspent: nothing, never negative
    ],
)
def test_plan_counters_shares_what_remains(spent: int, share: float, ceiling: int) -> None:
    key = counter_key(TENANT.scope, "tokensPerMinute", int(T0 // 60))
    counters = plan_counters([TENANT], 10, T0, share, {key: spent})
    assert {c.kind: c.ceiling for c in counters}["tokensPerMinute"] == ceiling


def test_plan_counters_negative_tokens_count_as_zero() -> None:
    (counter,) = plan_counters([LimitSet("t", tokens_per_minute=10)], -5, T0)
    assert counter.amount == 0


# One row per rule of `decide`: (limits, tokens, used before, share, now offset,
# admitted, retry_after, limiting).
DECIDE_TABLE = [
    pytest.param([TENANT], 100, [0, 0], 1.0, 10, True, 0.0, None, id="room"),
    pytest.param([TENANT], 100, [99, 5900], 1.0, 10, True, 0.0, None, id="exactly-full"),
    pytest.param(
        [TENANT],
        101,
        [10, 5900],
        1.0,
        15,
        False,
        45.0,
        "tenant/team-a/policy tokensPerMinute 6000",
        id="tokens-full",
    ),
    pytest.param(
        [TENANT],
        1,
        [100, 0],
        1.0,
        59.5,
        False,
        0.5,
        "tenant/team-a/policy requestsPerMinute 100",
        id="requests-full",
    ),
    pytest.param(
        [TENANT],
        7000,
        [0, 0],
        1.0,
        0,
        False,
        math.inf,
        "tenant/team-a/policy tokensPerMinute 6000 (the request needs 7000, more than the limit)",
        id="never-fits",
    ),
    pytest.param(
        [TENANT, KEY],
        10,
        [0, 0, 0, 2],
        1.0,
        0,
        False,
        CONCURRENCY_RETRY_AFTER,
        "key/team-a/policy/ci-bot concurrentRequests 2",
        id="no-slot",
    ),
    pytest.param(
        [TENANT],
        100,
        [0, 1950],
        1 / 3,
        30,
        False,
        30.0,
        "tenant/team-a/policy tokensPerMinute 6000 (this gateway's share 2000 of what "
        "remains: shared store unreachable)",
        id="share-full",
    ),
]


@pytest.mark.parametrize(
    ("limits", "tokens", "used", "share", "at", "admitted", "retry_after", "limiting"),
    DECIDE_TABLE,
)
def test_decide(
    limits: list[LimitSet],
    tokens: int,
    used: list[int],
    share: float,
    at: float,
    admitted: bool,
    retry_after: float,
    limiting: str | None,
) -> None:
    counters = plan_counters(limits, tokens, T0 + at, share)
    decision = decide(counters, used, T0 + at)
    assert (decision.admitted, decision.limiting) == (admitted, limiting)
    assert decision.retry_after == pytest.approx(retry_after)


def test_decide_reports_the_tightest_minute_limits_after_an_admission() -> None:
    counters = plan_counters([TENANT, KEY], 300, T0 + 20)
    decision = decide(counters, [40, 1000, 600, 0], T0 + 20)
    assert decision.admitted
    # The key's 1000 tokens (100 left after this request) are tighter than the tenant's.
    assert (decision.limit_tokens, decision.remaining_tokens) == (1000, 100)
    assert (decision.limit_requests, decision.remaining_requests) == (100, 59)
    assert decision.reset_tokens == decision.reset_requests == pytest.approx(40.0)


def test_decide_refused_reports_what_is_left_without_the_request() -> None:
    counters = plan_counters([TENANT], 500, T0)
    decision = decide(counters, [3, 5800], T0)
    assert not decision.admitted
    assert (decision.remaining_requests, decision.remaining_tokens) == (97, 200)


def test_decide_without_limits_admits_with_no_figures() -> None:
    assert decide([], [], T0) == Decision(admitted=True, retry_after=0.0, limiting=None)


def test_already_admitted_stays_admitted_when_limits_shrank() -> None:
    counters = plan_counters([LimitSet("t", tokens_per_minute=50)], 100, T0)
    assert already_admitted(counters, [100], T0).admitted


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (0.0004, "0s"),
        (0.012, "12ms"),
        (1.0, "1s"),
        (59.2, "59.2s"),
        (59.25, "59.25s"),
        (60.0, "1m0s"),
        (360.0, "6m0s"),
        (361.5, "6m1.5s"),
        (3600.0, "1h0m0s"),
        (86399.0, "23h59m59s"),
        (-3.0, "0s"),
    ],
)
def test_openai_duration(seconds: float, text: str) -> None:
    assert openai_duration(seconds) == text


def test_headers_of_an_admission() -> None:
    decision = decide(plan_counters([TENANT], 16, T0 + 0.8), [0, 0], T0 + 0.8)
    assert ratelimit_headers(decision) == {
        "x-ratelimit-limit-requests": "100",
        "x-ratelimit-remaining-requests": "99",
        "x-ratelimit-reset-requests": "59.2s",
        "x-ratelimit-limit-tokens": "6000",
        "x-ratelimit-remaining-tokens": "5984",
        "x-ratelimit-reset-tokens": "59.2s",
    }


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [(0.2, "1"), (1.0, "1"), (1.01, "2"), (44.5, "45"), (0.0, "1"), (math.inf, None)],
)
def test_retry_after_is_whole_seconds_at_least_one(retry_after: float, header: str | None) -> None:
    refused = Decision(admitted=False, retry_after=retry_after, limiting="x")
    assert ratelimit_headers(refused).get("retry-after") == header


def test_only_headers_whose_figures_exist() -> None:
    decision = decide(plan_counters([LimitSet("t", concurrent_requests=1)], 5, T0), [0], T0)
    assert ratelimit_headers(decision) == {}
    tokens_only = decide(plan_counters([LimitSet("t", tokens_per_minute=9)], 5, T0), [0], T0)
    assert set(ratelimit_headers(tokens_only)) == {
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    }
