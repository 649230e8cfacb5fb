"""The simulator's model of vLLM's automatic prefix caching: an LRU of hashed token blocks.

As in vLLM, a prompt is cut into full blocks of `block_size` tokens and each block is keyed by a
hash chained over every block before it, so a block only matches when the whole prefix up to it
matches. A lookup walks the chain from the start and stops at the first miss. Only full blocks
are cached, and the last prompt token is always recomputed (vLLM needs its logits), so a repeated
prompt hits at most `(tokens - 1) // block_size` blocks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PrefixMatch:
    """Outcome of one prompt's lookup, in tokens (the unit of vLLM's prefix-cache counters)."""

    queried_tokens: int
    hit_tokens: int

    @property
    def uncached_tokens(self) -> int:
        return self.queried_tokens - self.hit_tokens


class PrefixCache:
    """LRU of block hashes with a fixed capacity in blocks; capacity 0 disables caching."""

    def __init__(self, capacity_blocks: int, block_size: int = 16) -> None:
        if capacity_blocks < 0 or block_size < 1:
            raise ValueError("capacity_blocks must be >= 0 and block_size >= 1")
        self.capacity_blocks = capacity_blocks
        self.block_size = block_size
        # block hash -> None, least recently used first
        self._blocks: OrderedDict[int, None] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.capacity_blocks > 0

    @property
    def used_blocks(self) -> int:
        return len(self._blocks)

    @property
    def usage(self) -> float:
        """Occupancy in 0..1, what the simulator reports as `vllm:kv_cache_usage_perc`."""
        return len(self._blocks) / self.capacity_blocks if self.capacity_blocks else 0.0

    def block_hashes(self, tokens: Sequence[str]) -> list[int]:
        """Chained hashes of the full blocks of `tokens`.

        Python's `hash` is salted per process, which is fine: the cache lives in one process.
        """
        hashes: list[int] = []
        parent = 0
        size = self.block_size
        for start in range(0, len(tokens) - size + 1, size):
            parent = hash((parent, tuple(tokens[start : start + size])))
            hashes.append(parent)
        return hashes

    def match_and_store(self, tokens: Sequence[str]) -> PrefixMatch:
        """Count the cached prefix of `tokens`, then cache all of its full blocks."""
        if not self.enabled:
            return PrefixMatch(queried_tokens=len(tokens), hit_tokens=0)
        hashes = self.block_hashes(tokens)
        matchable = max(len(tokens) - 1, 0) // self.block_size
        hit_blocks = 0
        for block_hash in hashes[:matchable]:
            if block_hash not in self._blocks:
                break
            hit_blocks += 1
        # Touch the chain tail first so the head ends up most recently used: under pressure a
        # prompt loses its last blocks before its first ones, as vLLM's free-block queue does.
        for block_hash in reversed(hashes):
            self._blocks[block_hash] = None
            self._blocks.move_to_end(block_hash)
        while len(self._blocks) > self.capacity_blocks:
            self._blocks.popitem(last=False)
        return PrefixMatch(queried_tokens=len(tokens), hit_tokens=hit_blocks * self.block_size)
