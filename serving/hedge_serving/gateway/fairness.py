"""Pure: who goes first when a model is full — a request's priority, what to do with it
when every self-hosted backend is over its queue limit, and the weighted fair order in
which requests held in the gateway are released (issue 18, item 4).

No I/O, no event loop, no clock: times are passed in. The gateway asks
`effective_priority` once per request (app) and `when_full` when every self-hosted backend
is over its queue limit (proxy, with `can_hold=False` for now); one `FairQueue` per model
for the requests `when_full` says to HOLD is the next step, not applied yet.

The fair order is self-clocked fair queueing (SCFQ, Golestani 1994; the virtual-finish-time
form of WFQ): each held request gets a finish tag
``max(virtual_now, its tenant's last finish) + cost / weight`` and the smallest tag is
released next; ``virtual_now`` is the tag of the request released last. So a tenant's own
requests leave in arrival order, backlogged tenants share releases in proportion to their
weights, and a tenant that was idle starts at ``virtual_now``: it banks no credit while away.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from enum import StrEnum

from hedge_core.api.clientpolicy import Priority

__all__ = [
    "HEADER_PRIORITY",
    "PRIORITY_ORDER",
    "Action",
    "BadHeader",
    "FairQueue",
    "QueueFull",
    "effective_priority",
    "when_full",
]

#: The request header a client sends to lower its own request's priority.
HEADER_PRIORITY = "x-hedge-priority"

#: Priorities from first served to first shed.
PRIORITY_ORDER: tuple[Priority, ...] = (Priority.CRITICAL, Priority.STANDARD, Priority.SHEDDABLE)
_RANK = {p: i for i, p in enumerate(PRIORITY_ORDER)}


# ------------------------------------------------------------------------ the header


@dataclass(frozen=True, slots=True)
class BadHeader:
    """An `x-hedge-priority` value that is not a priority; the gateway answers 400 with
    `message` (and `param` as the OpenAI error's `param`)."""

    value: str
    header: str = HEADER_PRIORITY

    @property
    def allowed(self) -> tuple[str, ...]:
        return tuple(p.value for p in PRIORITY_ORDER)

    @property
    def param(self) -> str:
        return self.header

    @property
    def message(self) -> str:
        return (
            f"header {self.header}: {self.value!r} is not a priority; "
            f"use one of {', '.join(self.allowed)}"
        )


def effective_priority(policy: Priority | None, header: str | None) -> Priority | BadHeader:
    """The priority a request is served at.

    The tenant's ClientPolicy sets it (no policy: standard). The `x-hedge-priority` header
    may lower it, never raise it: a sheddable tenant asking for critical stays sheddable, a
    critical tenant may mark its batch jobs sheddable. The header is matched without regard
    to case or surrounding blanks; any other value (an empty one too) is a `BadHeader`,
    returned rather than raised so the caller must handle it.
    """
    ceiling = policy if policy is not None else Priority.STANDARD
    if header is None:
        return ceiling
    try:
        asked = Priority(header.strip().lower())
    except ValueError:
        return BadHeader(header)
    return asked if _RANK[asked] > _RANK[ceiling] else ceiling


# ------------------------------------------------------------------------ when full


class Action(StrEnum):
    """What to do with a request when every self-hosted backend of its model is full."""

    SPILL = "Spill"  # serve it from the paid fallback (FallbackReason.OVERLOADED)
    QUEUE_AT_PODS = "QueueAtPods"  # send it to a backend anyway: it waits in vLLM's queue
    HOLD = "Hold"  # wait in the gateway's FairQueue for capacity
    REFUSE = "Refuse"  # 429 with Retry-After


def when_full(
    priority: Priority,
    *,
    fallback_allowed: bool,
    has_fallback: bool,
    budget_open: bool,
    can_hold: bool,
) -> Action:
    """The action for a request that finds every self-hosted backend full.

    "May spill" is `fallback_allowed` (its ClientPolicy's `fallback.allowed`) and
    `has_fallback` (the model has a fallback provider) and `budget_open` (the model's
    fallback budget and the tenant's fallback quota have room). `can_hold`: the model
    holds requests (`serving.holdSeconds` > 0) and its FairQueue has room. Rules, in order:

    ==========  =========  ========  ===============
    priority    may spill  can_hold  action
    ==========  =========  ========  ===============
    sheddable   any        any       REFUSE
    critical    yes        any       SPILL
    critical    no         any       QUEUE_AT_PODS
    standard    yes        any       SPILL
    standard    no         yes       HOLD
    standard    no         no        QUEUE_AT_PODS
    ==========  =========  ========  ===============

    Sheddable never spills: it must not spend the paid fallback while others wait.
    Critical never holds: it goes to the pods' queue, ahead of everything held.
    """
    if priority is Priority.SHEDDABLE:
        return Action.REFUSE
    if fallback_allowed and has_fallback and budget_open:
        return Action.SPILL
    if priority is Priority.STANDARD and can_hold:
        return Action.HOLD
    return Action.QUEUE_AT_PODS


# ------------------------------------------------------------------------ fair release


class QueueFull(Exception):
    """A push onto a FairQueue that already holds `max_items` requests."""


@dataclass(frozen=True, slots=True)
class _Held:
    tenant: str
    start: float  # virtual start tag
    finish: float  # virtual finish tag: the release order
    seq: int  # arrival order: breaks ties, and tells a live heap entry from a stale one
    enqueued_at: float


@dataclass(slots=True)
class _Lane:
    """One tenant's state: how many of its requests are held, and its last finish tag."""

    count: int
    last_finish: float


class FairQueue:
    """Held requests of one model, released in weighted fair order (module docstring).

    `push`, `pop` and `remove` are O(log n): a heap of finish tags with lazy deletion
    (removed entries are skipped on pop and compacted away once they outnumber the live
    ones). At most `max_items` are held; per-tenant state lives only while the tenant has
    requests held, so memory is bounded by `max_items`.

    `cost` is a request's size in whatever unit the caller picks (1 per request, or the
    tokens it reserved); a tenant's share of releases is its weight over the sum of the
    backlogged tenants' weights, in that unit. Removing a held request (it gave up or timed
    out) does not move the tenant's other held requests; if it was the tenant's newest, the
    tenant's next push starts where that one started.
    """

    __slots__ = ("_heap", "_items", "_lanes", "_seq", "_virtual_now", "max_items")

    def __init__(self, max_items: int = 10_000) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, not {max_items}")
        self.max_items = max_items
        self._heap: list[tuple[float, int, str]] = []
        self._items: dict[str, _Held] = {}
        self._lanes: dict[str, _Lane] = {}
        self._seq = 0
        self._virtual_now = 0.0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    @property
    def virtual_now(self) -> float:
        """The finish tag of the request released last (0 before the first)."""
        return self._virtual_now

    def counts(self) -> dict[str, int]:
        """Held requests per tenant (tenants with none are absent)."""
        return {tenant: lane.count for tenant, lane in self._lanes.items()}

    def count(self, tenant: str) -> int:
        lane = self._lanes.get(tenant)
        return lane.count if lane is not None else 0

    def enqueued_at(self, item_id: str) -> float | None:
        """The `now` a held request was pushed at (for its waiting time), or None."""
        held = self._items.get(item_id)
        return held.enqueued_at if held is not None else None

    def push(self, tenant: str, weight: int, item_id: str, cost: float, now: float) -> None:
        """Hold `item_id` for `tenant`. Raises QueueFull when `max_items` are held, and
        ValueError for a weight below 1, a cost that is not a positive finite number, or
        an `item_id` already held."""
        if len(self._items) >= self.max_items:
            raise QueueFull(
                f"fair queue is full: {self.max_items} requests held (max_items); "
                f"cannot hold {item_id!r} for {tenant}"
            )
        if weight < 1:
            raise ValueError(f"weight must be at least 1, not {weight}")
        if not (math.isfinite(cost) and cost > 0):
            raise ValueError(f"cost must be a positive finite number, not {cost}")
        if item_id in self._items:
            raise ValueError(f"{item_id!r} is already held")
        lane = self._lanes.get(tenant)
        if lane is None:  # idle until now: starts at virtual_now, no credit banked
            lane = self._lanes[tenant] = _Lane(0, self._virtual_now)
        start = max(self._virtual_now, lane.last_finish)
        finish = start + cost / weight
        self._seq += 1
        self._items[item_id] = _Held(tenant, start, finish, self._seq, now)
        heapq.heappush(self._heap, (finish, self._seq, item_id))
        lane.count += 1
        lane.last_finish = finish

    def pop(self) -> str | None:
        """Release the held request with the smallest finish tag; None when none is held."""
        while self._heap:
            finish, seq, item_id = heapq.heappop(self._heap)
            held = self._items.get(item_id)
            if held is None or held.seq != seq:
                continue  # removed (and perhaps pushed again since): a stale entry
            del self._items[item_id]
            self._virtual_now = max(self._virtual_now, finish)
            self._leave(held)
            return item_id
        return None

    def remove(self, item_id: str) -> bool:
        """Drop a held request (it gave up or timed out); False if it was not held."""
        held = self._items.pop(item_id, None)
        if held is None:
            return False
        lane = self._lanes[held.tenant]
        if lane.last_finish == held.finish:  # its newest: give the tenant that time back
            lane.last_finish = held.start
        self._leave(held)
        if len(self._heap) > 2 * len(self._items) + 16:
            self._compact()
        return True

    def _leave(self, held: _Held) -> None:
        lane = self._lanes[held.tenant]
        lane.count -= 1
        if lane.count == 0:  # idle again: forget it, so it banks nothing
            del self._lanes[held.tenant]

    def _compact(self) -> None:
        self._heap = [(h.finish, h.seq, item_id) for item_id, h in self._items.items()]
        heapq.heapify(self._heap)
