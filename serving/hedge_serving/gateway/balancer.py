"""Backend choice: least outstanding requests, with prefix affinity for vLLM's prefix cache.

Pure: it reads each candidate's `outstanding` count and `affinity_seed` and returns one
of them; it does no I/O and keeps no per-request state beyond a tie-breaking counter.

Affinity uses rendezvous (highest-random-weight) hashing of the request's prompt prefix,
so requests sharing a prefix prefer the same pod and only the prefixes of a pod that goes
away move. The preferred pod yields when it is much busier than the least loaded
candidate (bounded-load hashing): among the candidates whose load is within
`max(affinity_slack, least * (affinity_ratio - 1))` of the least loaded one, the one with
the highest hash weight wins. So a hot prefix spills to its second choice, which warms
the same prefix, rather than to a random pod.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Protocol, TypeVar

_MASK64 = (1 << 64) - 1


class Balanceable(Protocol):
    @property
    def outstanding(self) -> int: ...

    @property
    def affinity_seed(self) -> int: ...


B = TypeVar("B", bound=Balanceable)


def stable_hash(data: str) -> int:
    """A hash that is the same in every gateway process (unlike `hash()` on str)."""
    return zlib.crc32(data.encode("utf-8", "surrogatepass"))


def _weight(key: int, seed: int) -> int:
    # splitmix64 finaliser over key^seed: cheap and well mixed for rendezvous hashing.
    z = ((key << 32) ^ seed) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


class Balancer:
    """Least outstanding requests with prefix affinity that yields under imbalance."""

    __slots__ = ("_turn", "affinity_ratio", "affinity_slack")

    def __init__(self, affinity_slack: int = 4, affinity_ratio: float = 1.5) -> None:
        self.affinity_slack = affinity_slack
        self.affinity_ratio = affinity_ratio
        self._turn = 0

    def pick(self, candidates: Sequence[B], affinity_key: int | None = None) -> B | None:
        n = len(candidates)
        if n == 0:
            return None
        if n == 1:
            return candidates[0]
        if affinity_key is None:
            return self._least_loaded(candidates)
        least = min(c.outstanding for c in candidates)
        limit = least + max(self.affinity_slack, int(least * (self.affinity_ratio - 1.0)))
        best: B | None = None
        best_weight = -1
        for c in candidates:
            if c.outstanding <= limit:
                w = _weight(affinity_key, c.affinity_seed)
                if w > best_weight:
                    best, best_weight = c, w
        return best

    def _least_loaded(self, candidates: Sequence[B]) -> B:
        # Start the scan at a rotating offset so that ties spread evenly over backends.
        n = len(candidates)
        self._turn = start = (self._turn + 1) % n
        best = candidates[start]
        best_load = best.outstanding
        for i in range(1, n):
            c = candidates[(start + i) % n]
            load = c.outstanding
            if load < best_load:
                best, best_load = c, load
        return best
