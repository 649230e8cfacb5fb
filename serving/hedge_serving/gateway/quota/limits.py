"""Pure: per-tenant limits, the counters a request touches, the decision and its headers.

A request is checked against every `LimitSet` that applies to it (tenant, key, model scope).
Each limit is one counter: requests and tokens per fixed UTC window (`floor(now / 60)`,
`floor(now / 86400)`, as in `gateway/budget.py`) and concurrency slots per scope. A store
(`store.py`) reads the counters' values, and `decide` turns the values into a `Decision` —
the same function whether the counts live in this process or in Redis, so both agree.

`share` scales every ceiling (one gateway's part of a limit while the shared store is
unreachable); requests and concurrency never drop below 1 for a limit above 0, so a small
limit split over many gateways still admits something on each.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

MINUTE = 60.0
DAY = 86400.0
#: Seconds a request refused for a concurrency slot is told to wait: slots free when a
#: request settles, which no window predicts.
CONCURRENCY_RETRY_AFTER = 1.0

# Limit kinds, named as the API spells them (they appear in `Decision.limiting`).
REQUESTS_PER_MINUTE = "requestsPerMinute"
TOKENS_PER_MINUTE = "tokensPerMinute"
TOKENS_PER_DAY = "tokensPerDay"
CONCURRENT_REQUESTS = "concurrentRequests"

_SHORT = {
    REQUESTS_PER_MINUTE: "rpm",
    TOKENS_PER_MINUTE: "tpm",
    TOKENS_PER_DAY: "tpd",
    CONCURRENT_REQUESTS: "conc",
}
_TOKEN_KINDS = (TOKENS_PER_MINUTE, TOKENS_PER_DAY)


@dataclass(frozen=True, slots=True)
class LimitSet:
    """One scope's limits, e.g. scope="tenant/team-a/policy", "key/team-a/policy/ci-bot",
    "model/team-a/policy/llama". None: no such limit at this scope."""

    scope: str
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    concurrent_requests: int | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a request may run, and the figures for OpenAI's x-ratelimit-* headers
    (for the tightest requests- and tokens-per-minute limit involved)."""

    admitted: bool
    #: Seconds until the limiting window turns / a slot frees (0 if admitted; math.inf when
    #: the request needs more than the whole limit, so waiting never helps).
    retry_after: float
    limiting: str | None  # e.g. "tenant/team-a/policy tokensPerMinute 6000"
    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens: float | None = None


@dataclass(frozen=True, slots=True)
class Counter:
    """One limit as one request meets it: what it adds and the ceiling it is held to."""

    key: str  # the store's key: scope, kind and (for windows) the window index
    scope: str
    kind: str
    limit: int  # as configured
    ceiling: int  # share x limit (what this store admits up to)
    amount: int  # what this request adds: 1 request, its tokens, or 1 slot
    ends: float | None  # when the window turns (None: a concurrency slot)

    @property
    def is_window(self) -> bool:
        return self.ends is not None

    @property
    def is_tokens(self) -> bool:
        return self.kind in _TOKEN_KINDS


ADMITTED = Decision(admitted=True, retry_after=0.0, limiting=None)


def window_index(now: float, length: float) -> int:
    """The fixed UTC window `now` falls in (minutes: length 60, days: 86400)."""
    return math.floor(now / length)


def window_ends(index: int, length: float) -> float:
    return (index + 1) * length


def share_ceiling(limit: int, share: float, *, at_least_one: bool) -> int:
    """share x limit, rounded down (a hair of tolerance so 3 x 1/3 of 6000 is 2000)."""
    if limit <= 0:
        return 0
    ceiling = math.floor(limit * share + 1e-9)
    return max(1, ceiling) if at_least_one else max(0, ceiling)


def counter_key(scope: str, kind: str, index: int | None = None) -> str:
    """The store key of one counter; window counters carry their window's index."""
    short = _SHORT[kind]
    return f"{scope}|{short}" if index is None else f"{scope}|{short}|{index}"


def plan_counters(
    limits: Sequence[LimitSet],
    tokens: int,
    now: float,
    share: float = 1.0,
    spent: Mapping[str, int] | None = None,
) -> tuple[Counter, ...]:
    """Every counter a request of `tokens` touches, once each: two LimitSets naming the
    same scope and kind count once, against the lower limit. `spent`: what the shared store
    last said each window counter held; the share is then of what remains of the limit, so
    N gateways counting on their own from the same figure spend at most the limit."""
    spent = spent or {}
    tokens = max(0, tokens)
    minute, day = window_index(now, MINUTE), window_index(now, DAY)
    found: dict[str, Counter] = {}
    for limit_set in limits:
        for kind, limit, amount, index, length in (
            (REQUESTS_PER_MINUTE, limit_set.requests_per_minute, 1, minute, MINUTE),
            (TOKENS_PER_MINUTE, limit_set.tokens_per_minute, tokens, minute, MINUTE),
            (TOKENS_PER_DAY, limit_set.tokens_per_day, tokens, day, DAY),
            (CONCURRENT_REQUESTS, limit_set.concurrent_requests, 1, None, None),
        ):
            if limit is None:
                continue
            key = counter_key(limit_set.scope, kind, index)
            if key in found and found[key].limit <= limit:
                continue
            found[key] = Counter(
                key=key,
                scope=limit_set.scope,
                kind=kind,
                limit=limit,
                ceiling=share_ceiling(
                    max(0, limit - spent.get(key, 0)),
                    share,
                    at_least_one=kind not in _TOKEN_KINDS,
                ),
                amount=amount,
                ends=None if index is None or length is None else window_ends(index, length),
            )
    return tuple(found.values())


def first_full(counters: Sequence[Counter], used: Sequence[int]) -> int | None:
    """The first counter without room for this request (`used`: values before it)."""
    for i, (counter, value) in enumerate(zip(counters, used, strict=True)):
        if value + counter.amount > counter.ceiling:
            return i
    return None


def _refusal(counter: Counter, now: float) -> tuple[float, str]:
    """(retry_after, limiting) for the counter that refuses a request."""
    named = f"{counter.scope} {counter.kind} {counter.limit}"
    if counter.amount > counter.limit:
        # Never fits: tell the caller now rather than let it retry forever.
        return math.inf, f"{named} (the request needs {counter.amount}, more than the limit)"
    wait = CONCURRENCY_RETRY_AFTER if counter.ends is None else max(0.0, counter.ends - now)
    if counter.ceiling < counter.limit:
        share = f"this gateway's share {counter.ceiling} of what remains"
        return wait, f"{named} ({share}: shared store unreachable)"
    return wait, named


def _tightest(
    counters: Sequence[Counter], after: Sequence[int], kind: str, now: float
) -> tuple[int | None, int | None, float | None]:
    """(limit, remaining, reset) of the `kind` counter with the least room left."""
    best: tuple[int, int, float] | None = None
    for counter, value in zip(counters, after, strict=True):
        if counter.kind != kind or counter.ends is None:
            continue
        remaining = max(0, counter.ceiling - value)
        candidate = (counter.limit, remaining, max(0.0, counter.ends - now))
        if best is None or (remaining, counter.limit) < (best[1], best[0]):
            best = candidate
    return best if best is not None else (None, None, None)


def decide(counters: Sequence[Counter], used: Sequence[int], now: float) -> Decision:
    """The decision for a request given each counter's value before it: admitted only if
    every counter has room (all or nothing)."""
    full = first_full(counters, used)
    admitted = full is None
    after = [v + c.amount for c, v in zip(counters, used, strict=True)] if admitted else used
    limit_r, remaining_r, reset_r = _tightest(counters, after, REQUESTS_PER_MINUTE, now)
    limit_t, remaining_t, reset_t = _tightest(counters, after, TOKENS_PER_MINUTE, now)
    retry_after, limiting = (0.0, None) if full is None else _refusal(counters[full], now)
    return Decision(
        admitted=admitted,
        retry_after=retry_after,
        limiting=limiting,
        limit_requests=limit_r,
        remaining_requests=remaining_r,
        reset_requests=reset_r,
        limit_tokens=limit_t,
        remaining_tokens=remaining_t,
        reset_tokens=reset_t,
    )


def already_admitted(counters: Sequence[Counter], used: Sequence[int], now: float) -> Decision:
    """The decision for a reserve repeated with a request id that holds a reservation
    (`used` already includes it): admitted, nothing added again."""
    before = [max(0, v - c.amount) for c, v in zip(counters, used, strict=True)]
    decision = decide(counters, before, now)
    if decision.admitted:
        return decision
    return decide(
        [replace(c, ceiling=max(c.ceiling, v)) for c, v in zip(counters, used, strict=True)],
        before,
        now,
    )


def openai_duration(seconds: float) -> str:
    """A duration as OpenAI's headers write it (Go's time.Duration at millisecond
    precision): "0s", "12ms", "1s", "59.2s", "6m0s", "1h0m0s"."""
    ms = max(0, round(seconds * 1000))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    out = f"{hours}h" if hours else ""
    if hours or minutes:
        out += f"{minutes}m"
    return f"{out}{secs}s"


def ratelimit_headers(decision: Decision) -> dict[str, str]:
    """x-ratelimit-{limit,remaining,reset}-{requests,tokens} for the figures that exist,
    and retry-after (whole seconds, at least 1) on a refusal that waiting can cure."""
    headers: dict[str, str] = {}
    for suffix, limit, remaining, reset in (
        ("requests", decision.limit_requests, decision.remaining_requests, decision.reset_requests),
        ("tokens", decision.limit_tokens, decision.remaining_tokens, decision.reset_tokens),
    ):
        if limit is not None:
            headers[f"x-ratelimit-limit-{suffix}"] = str(limit)
        if remaining is not None:
            headers[f"x-ratelimit-remaining-{suffix}"] = str(remaining)
        if reset is not None:
            headers[f"x-ratelimit-reset-{suffix}"] = openai_duration(reset)
    if not decision.admitted and math.isfinite(decision.retry_after):
        headers["retry-after"] = str(max(1, math.ceil(decision.retry_after)))
    return headers
