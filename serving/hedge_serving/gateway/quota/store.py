"""Does I/O: where the quota counters live — in this process, or in Redis shared by every
gateway replica, with local counting against this replica's share while Redis is away.

`reserve` admits a request against every counter it touches or against none (its tokens:
the prompt estimate + max_tokens x n); `settle` moves the token counters of the windows it
was admitted in by (actual - reserved) and frees its concurrency slots, once per request id.

`RedisStore` keeps each counter as a Redis key per fixed UTC window (EXPIRE after the window
plus a minute, so a late settle still finds it), each scope's concurrency as a sorted set of
request ids scored by a lease expiry (slots of a crashed gateway come back when it lapses),
and each reservation as a record the settle script reads. When a call fails or times out
(50 ms by default) the store counts locally against `share` x each limit, retries Redis
every `retry_interval` seconds, and on reconnect pushes what it counted meanwhile for the
windows still current (INCRBY) and the reservations still in flight, then switches back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from hedge_serving.gateway.quota import lua
from hedge_serving.gateway.quota.limits import (
    CONCURRENT_REQUESTS,
    Counter,
    Decision,
    LimitSet,
    already_admitted,
    counter_key,
    decide,
    plan_counters,
)

#: Seconds a concurrency slot is held without a settle before it frees itself (a gateway
#: that crashed mid-request does not keep its slots).
LEASE_SECONDS = 600.0
#: Seconds a window counter outlives its window, so a settle after the window turned still
#: adjusts the window the request was admitted in.
WINDOW_GRACE = 60.0
#: Settles of Redis-held reservations kept while Redis is unreachable, replayed on return.
MAX_PENDING_SETTLES = 10_000
_TRANSIENT = (RedisError, OSError, TimeoutError)

log = logging.getLogger("hedge.gateway.quota")


class QuotaStore(Protocol):
    """What the gateway's request path calls; `now` is UTC epoch seconds (time.time())."""

    async def reserve(
        self, request_id: str, limits: Sequence[LimitSet], tokens: int, now: float
    ) -> Decision:
        """All or nothing across every LimitSet: one request and `tokens` (the prompt
        estimate + max_tokens x n) against each window counter, one slot per scope with
        concurrent_requests. Repeating it with the same id holds one reservation. Call
        `settle` for every admitted request, also when it fails or is cancelled."""
        ...

    async def settle(
        self, request_id: str, limits: Sequence[LimitSet], reserved: int, actual: int, now: float
    ) -> None:
        """The request used `actual` tokens: its token counters move by (actual - reserved)
        in the windows it was admitted in (the store's own record of what it reserved and
        where counts, whatever `limits` and `reserved` say now), never below 0, and its
        slots free. Idempotent per request_id."""
        ...


@dataclass(frozen=True, slots=True)
class Reservation:
    """What one admitted request holds: the token counters it reserved in and its slots."""

    tokens: int
    token_keys: tuple[str, ...]
    counted: tuple[tuple[str, int], ...]  # each window counter and what it added there
    slot_keys: tuple[str, ...]
    lease_until: float

    def payload(self, prefix: str) -> str:
        """The record as the settle script reads it."""
        return json.dumps(
            {
                "t": self.tokens,
                "w": [prefix + k for k in self.token_keys],
                "c": [prefix + k for k in self.slot_keys],
            }
        )


@dataclass(slots=True)
class LocalUsage:
    """What a LocalStore counted: window values (with when each window ends) and the
    reservations in flight; what `RedisStore` pushes on reconnect."""

    counts: dict[str, tuple[int, float]] = field(default_factory=dict)
    reservations: dict[str, Reservation] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.counts or self.reservations)


def _slot_keys(limits: Sequence[LimitSet]) -> list[str]:
    return [
        counter_key(s.scope, CONCURRENT_REQUESTS)
        for s in limits
        if s.concurrent_requests is not None
    ]


def _reservation(counters: Sequence[Counter], tokens: int, now: float, lease: float) -> Reservation:
    return Reservation(
        tokens=max(0, tokens),
        token_keys=tuple(c.key for c in counters if c.is_tokens),
        counted=tuple((c.key, c.amount) for c in counters if c.is_window),
        slot_keys=tuple(c.key for c in counters if not c.is_window),
        lease_until=now + lease,
    )


class LocalStore:
    """Counters in this process; ceilings are `share` x each limit (floor 1 for requests
    and concurrency). Exact for one gateway; RedisStore's fallback for several."""

    def __init__(self, share: float = 1.0, *, lease: float = LEASE_SECONDS) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], not {share}")
        self.share = share
        self.lease = lease
        self._counts: dict[str, int] = {}
        self._ends: dict[str, float] = {}  # window counter -> when its window ends
        self._slots: dict[str, dict[str, float]] = {}  # slot key -> request id -> lease
        self._reservations: dict[str, Reservation] = {}
        self._next_prune = -math.inf
        #: Window counter -> what the shared store last said it held; the share applies to
        #: what remains of each limit (empty for a LocalStore alone).
        self.spent: dict[str, int] = {}
        self._spent_ends: dict[str, float] = {}
        #: Counts drained for a push not yet confirmed: they still count here meanwhile.
        self._in_transit: dict[str, int] = {}

    async def reserve(
        self, request_id: str, limits: Sequence[LimitSet], tokens: int, now: float
    ) -> Decision:
        return self.reserve_now(request_id, limits, tokens, now)

    async def settle(
        self, request_id: str, limits: Sequence[LimitSet], reserved: int, actual: int, now: float
    ) -> None:
        self.settle_now(request_id, limits, actual, now)

    def holds(self, request_id: str) -> bool:
        return request_id in self._reservations

    def reservation(self, request_id: str) -> Reservation | None:
        return self._reservations.get(request_id)

    def uncount(self, request_id: str, reservation: Reservation, actual: int | None) -> None:
        """Takes a request out of the local counts (the shared store counted it after all):
        what it reserved, or `actual` tokens if it settled here already."""
        tokens = set(reservation.token_keys)
        for key, amount in reservation.counted:
            if key in tokens and actual is not None:
                amount = max(0, actual)
            if key in self._counts:
                self._counts[key] = max(0, self._counts[key] - amount)
        self._reservations.pop(request_id, None)
        for key in reservation.slot_keys:
            self._slots.get(key, {}).pop(request_id, None)

    def _value(self, counter: Counter, now: float) -> int:
        if counter.is_window:
            return self._counts.get(counter.key, 0) + self._in_transit.get(counter.key, 0)
        slots = self._slots.get(counter.key, {})
        for rid in [r for r, until in slots.items() if until <= now]:
            del slots[rid]
        return len(slots)

    def reserve_now(
        self, request_id: str, limits: Sequence[LimitSet], tokens: int, now: float
    ) -> Decision:
        self.prune(now)
        counters = plan_counters(limits, tokens, now, self.share, self.spent)
        used = [self._value(c, now) for c in counters]
        if request_id in self._reservations:
            return already_admitted(counters, used, now)
        decision = decide(counters, used, now)
        if decision.admitted:
            reservation = _reservation(counters, tokens, now, self.lease)
            for counter in counters:
                if counter.ends is None:
                    self._slots.setdefault(counter.key, {})[request_id] = reservation.lease_until
                else:
                    self._counts[counter.key] = self._counts.get(counter.key, 0) + counter.amount
                    self._ends[counter.key] = counter.ends
            self._reservations[request_id] = reservation
        return decision

    def settle_now(
        self, request_id: str, limits: Sequence[LimitSet], actual: int, now: float
    ) -> None:
        for key in _slot_keys(limits):
            self._slots.get(key, {}).pop(request_id, None)
        reservation = self._reservations.pop(request_id, None)
        if reservation is None:
            return  # settled already, or reserved elsewhere
        delta = max(0, actual) - reservation.tokens
        for key in reservation.token_keys:
            if key in self._counts:
                self._counts[key] = max(0, self._counts[key] + delta)
        for key in reservation.slot_keys:
            self._slots.get(key, {}).pop(request_id, None)

    def note_spent(self, key: str, value: int, ends: float) -> None:
        """What the shared store holds in a window counter (as of this replica's call)."""
        self.spent[key] = value
        self._spent_ends[key] = ends

    def prune(self, now: float) -> None:
        """Forget windows long over and reservations whose lease lapsed (bounded memory)."""
        if now < self._next_prune:
            return
        self._next_prune = now + 10.0
        for key in [k for k, ends in self._ends.items() if ends + WINDOW_GRACE < now]:
            del self._ends[key]
            self._counts.pop(key, None)
        for key in [k for k, ends in self._spent_ends.items() if ends <= now]:
            del self._spent_ends[key]
            self.spent.pop(key, None)
        for rid in [r for r, res in self._reservations.items() if res.lease_until <= now]:
            del self._reservations[rid]
        for key, slots in list(self._slots.items()):
            for rid in [r for r, until in slots.items() if until <= now]:
                del slots[rid]
            if not slots:
                del self._slots[key]

    def drain(self, now: float) -> LocalUsage:
        """Hands over the counts of windows still current and the reservations in flight,
        for a push; until `confirm` or `restore` they still count here (in transit), so
        requests admitted during the push see them. Their settles go to the shared store."""
        usage = LocalUsage(
            counts={
                k: (v, self._ends[k]) for k, v in self._counts.items() if self._ends[k] > now and v
            },
            reservations={r: res for r, res in self._reservations.items() if res.lease_until > now},
        )
        for key, (value, _) in usage.counts.items():
            self._in_transit[key] = self._in_transit.get(key, 0) + value
        self._counts.clear()
        self._ends.clear()
        self._reservations.clear()
        return usage

    def confirm(self, usage: LocalUsage) -> None:
        """The push landed: what it carried is now spent in the shared store."""
        for key, (value, ends) in usage.counts.items():
            self._in_transit[key] = max(0, self._in_transit.get(key, 0) - value)
            if not self._in_transit[key]:
                del self._in_transit[key]
            self.note_spent(key, self.spent.get(key, 0) + value, ends)
        for rid, res in usage.reservations.items():
            for key in res.slot_keys:
                self._slots.get(key, {}).pop(rid, None)

    def restore(self, usage: LocalUsage) -> None:
        """Takes back what `drain` handed over (the push failed)."""
        for key, (value, ends) in usage.counts.items():
            self._in_transit[key] = max(0, self._in_transit.get(key, 0) - value)
            if not self._in_transit[key]:
                del self._in_transit[key]
            self._counts[key] = self._counts.get(key, 0) + value
            self._ends[key] = ends
        for rid, res in usage.reservations.items():
            self._reservations[rid] = res


def _ttl(ends: float, now: float) -> int:
    return max(1, math.ceil(ends - now + WINDOW_GRACE))


class RedisStore:
    """Counters in Redis shared by every replica; `share` (1 / replicas) is used only by
    the local fallback while Redis is unreachable. `url`: redis://host:port/db. The retry
    interval is measured on the `now` the calls pass, like the windows."""

    def __init__(
        self,
        url: str,
        share: float = 1.0,
        *,
        timeout: float = 0.05,
        retry_interval: float = 1.0,
        lease: float = LEASE_SECONDS,
        prefix: str = "hedge:quota:",
        max_connections: int = 64,
        heal: bool = True,
    ) -> None:
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            # Waiting for a pooled connection under load is latency, not an outage.
            timeout=max(1.0, timeout),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # a retry would double the outage's latency
        )
        self._redis = aioredis.Redis(connection_pool=pool)
        self._reserve_script = self._redis.register_script(lua.RESERVE)
        self._settle_script = self._redis.register_script(lua.SETTLE)
        self.fallback = LocalStore(share, lease=lease)
        self.lease = lease
        self.prefix = prefix
        self.retry_interval = retry_interval
        self.shared = True  # False while counting locally
        self._retry_at = -math.inf
        self._reconnecting = False
        #: Reserves that timed out and were admitted locally: the script may have run in
        #: Redis too. Request id -> None while in flight, (reservation, actual) once settled.
        self._ambiguous: dict[str, tuple[Reservation, int] | None] = {}
        self._pending: collections.deque[tuple[str, list[str], int]] = collections.deque(
            maxlen=MAX_PENDING_SETTLES
        )
        # While counting locally, the store is retried without waiting for traffic, so what
        # was counted alone is pushed soon after it returns. Its clock follows the calls'
        # `now` (the windows' clock), moved on by the real time since the last call.
        self.heal = heal  # False: only calls retry the store
        self._healer: asyncio.Task[None] | None = None
        self._last_now = (0.0, 0.0)  # (the last `now` passed, time.monotonic() then)

    async def close(self) -> None:
        if self._healer is not None:
            self._healer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._healer
        await self._redis.aclose(close_connection_pool=True)

    def _now(self) -> float:
        now, at = self._last_now
        return now + (time.monotonic() - at)

    async def _heal(self) -> None:
        while not self.shared:
            await asyncio.sleep(self.retry_interval)
            try:
                await self._reconnect(self._now())
            except Exception:  # never let the healer die: the next call retries too
                log.exception("quota store: retrying the shared store failed")

    def _trip(self, now: float, error: BaseException | None = None) -> None:
        if self.shared:
            log.warning(
                "quota store unreachable (%s); counting locally against share %g until it answers",
                error,
                self.fallback.share,
            )
        self.shared = False
        self._retry_at = now + self.retry_interval
        self._last_now = (now, time.monotonic())
        if self.heal and (self._healer is None or self._healer.done()):
            with contextlib.suppress(RuntimeError):  # no running loop: calls retry alone
                self._healer = asyncio.get_running_loop().create_task(self._heal())

    async def reserve(
        self, request_id: str, limits: Sequence[LimitSet], tokens: int, now: float
    ) -> Decision:
        if self.shared or await self._reconnect(now):
            try:
                return await self._reserve_shared(request_id, limits, tokens, now)
            except _TRANSIENT as exc:
                self._trip(now, exc)
                if isinstance(exc, RedisTimeoutError | TimeoutError):
                    decision = self.fallback.reserve_now(request_id, limits, tokens, now)
                    if decision.admitted and len(self._ambiguous) < MAX_PENDING_SETTLES:
                        self._ambiguous[request_id] = None
                    return decision
        return self.fallback.reserve_now(request_id, limits, tokens, now)

    async def _reserve_shared(
        self, request_id: str, limits: Sequence[LimitSet], tokens: int, now: float
    ) -> Decision:
        self.fallback.prune(now)  # forgets what it noted of windows over
        counters = plan_counters(limits, tokens, now)
        if not counters:
            return decide(counters, [], now)  # no limit applies: no round trip
        windows = [c for c in counters if c.is_window]
        slots = [c for c in counters if not c.is_window]
        reservation = _reservation(counters, tokens, now, self.lease)
        args: list[Any] = [
            now,
            reservation.lease_until,
            len(windows),
            len(slots),
            reservation.payload(self.prefix),
            math.ceil(self.lease),
        ]
        for c in windows:
            args += [c.amount, c.ceiling, _ttl(c.ends or now, now)]
        args += [c.ceiling for c in slots]
        args.append(request_id)
        keys = [self.prefix + c.key for c in (*windows, *slots)]
        keys.append(self._record_key(request_id))
        reply = await self._reserve_script(keys=keys, args=args)
        status, values = int(reply[0]), [int(v) for v in reply[1:]]
        ordered = dict(zip((c.key for c in (*windows, *slots)), values, strict=True))
        used = [ordered[c.key] for c in counters]
        if status == 2:  # a retried reserve that Redis already admitted
            return already_admitted(counters, used, now)
        decision = decide(counters, used, now)
        for c, value in zip(counters, used, strict=True):
            if c.ends is not None:  # what the fallback's share will be of
                held = value + (c.amount if decision.admitted else 0)
                self.fallback.note_spent(c.key, held, c.ends)
        return decision

    def _record_key(self, request_id: str) -> str:
        return f"{self.prefix}req|{request_id}"

    async def settle(
        self, request_id: str, limits: Sequence[LimitSet], reserved: int, actual: int, now: float
    ) -> None:
        reservation = self.fallback.reservation(request_id)
        if reservation is not None:
            self.fallback.settle_now(request_id, limits, actual, now)
            if request_id in self._ambiguous:
                self._ambiguous[request_id] = (reservation, actual)
            return
        slot_keys = [self.prefix + k for k in _slot_keys(limits)]
        if self.shared or await self._reconnect(now):
            try:
                await self._settle_shared(request_id, slot_keys, actual)
                return
            except _TRANSIENT as exc:
                self._trip(now, exc)
        self._pending.append((request_id, slot_keys, actual))

    async def _settle_shared(self, request_id: str, slot_keys: list[str], actual: int) -> None:
        keys = [self._record_key(request_id), *slot_keys]
        await self._settle_script(keys=keys, args=[request_id, max(0, actual)])

    async def _reconnect(self, now: float) -> bool:
        """Whether Redis is back (tried at most every `retry_interval`): pushes what was
        counted locally meanwhile and replays the settles it missed, then switches back.
        One caller tries; the others keep counting locally meanwhile."""
        self._last_now = max(self._last_now, (now, time.monotonic()))
        if self._reconnecting or now < self._retry_at:
            return False
        self._reconnecting = True
        try:
            await self._redis.ping()
            await self._resolve_ambiguous()
            while True:
                while self._pending:
                    request_id, slot_keys, actual = self._pending[0]
                    await self._settle_shared(request_id, slot_keys, actual)
                    self._pending.popleft()
                # Nothing awaits between an empty drain (with no settle pending) and the
                # switch, so nothing counted locally is left behind; settles queued while
                # a push was under way are replayed after it, when their records exist.
                usage = self.fallback.drain(now)
                if not usage:
                    break
                try:
                    await self._push(usage, now)
                except _TRANSIENT:
                    self.fallback.restore(usage)
                    raise
                self.fallback.confirm(usage)
        except _TRANSIENT:
            self._trip(now)
            return False
        finally:
            self._reconnecting = False
        self.shared = True
        log.warning("quota store reachable again; local counts pushed, counting shared")
        return True

    async def _resolve_ambiguous(self) -> None:
        """For each reserve that timed out: if its script ran after all (Redis holds its
        record), Redis's count stands and the local one is taken back, so the push does not
        count it twice; one settled meanwhile is settled in Redis too."""
        if not self._ambiguous:
            return
        ids = list(self._ambiguous)
        pipe = self._redis.pipeline(transaction=False)
        for request_id in ids:
            pipe.exists(self._record_key(request_id))
        held = await pipe.execute()
        for request_id, in_redis in zip(ids, held, strict=True):
            entry = self._ambiguous[request_id]
            if in_redis and entry is None:
                reservation = self.fallback.reservation(request_id)
                if reservation is not None:  # still in flight: it settles in Redis
                    self.fallback.uncount(request_id, reservation, None)
            elif in_redis and entry is not None:
                reservation, actual = entry
                slot_keys = [self.prefix + k for k in reservation.slot_keys]
                await self._settle_shared(request_id, slot_keys, actual)  # first: may fail
                self.fallback.uncount(request_id, reservation, actual)
            # (not in Redis: it never ran there, and the local count is the only one)
            del self._ambiguous[request_id]

    async def _push(self, usage: LocalUsage, now: float) -> None:
        """Adds locally counted usage and reservations to Redis, in one transaction."""
        pipe = self._redis.pipeline(transaction=True)
        for key, (value, ends) in usage.counts.items():
            pipe.incrby(self.prefix + key, value)
            pipe.expire(self.prefix + key, _ttl(ends, now))
        for request_id, res in usage.reservations.items():
            pipe.set(
                self._record_key(request_id), res.payload(self.prefix), ex=math.ceil(self.lease)
            )
            for key in res.slot_keys:
                pipe.zadd(self.prefix + key, {request_id: res.lease_until})
                pipe.expire(self.prefix + key, math.ceil(res.lease_until - now) + 60)
        await pipe.execute()
