"""The simulated engine: FIFO admission, prefix cache, latency model, text and vectors.

No I/O here; the HTTP layer (`server.py`) drives an `Engine` per simulator. Output is a pure
function of the prompt tokens, the request seed and the choice index, so tests can compare
answers across runs and replicas.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import struct
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from hedge_serving.simulator.config import Faults, SimulatorConfig
from hedge_serving.simulator.metrics import SimulatorMetrics
from hedge_serving.simulator.prefix_cache import PrefixCache, PrefixMatch

# Words the simulated model says; short and distinct so stop-string tests can pick one.
_WORDS = (
    "the quick brown fox jumps over a lazy dog while hedge serves tokens from simulated "
    "engines and routers keep shared prefixes warm so replies arrive sooner under load "
    "with canary rollouts fallback providers circuit breakers queues latency budgets "
    "kubernetes pods scale gently on cheap silicon every day"
)
VOCABULARY: tuple[str, ...] = tuple(_WORDS.split())


class FifoSlots:
    """At most `capacity` holders at once; the rest wait in arrival order.

    asyncio.Semaphore lets a newcomer overtake waiters in some Python versions; vLLM's
    scheduler is first come, first served, and the waiting count must be exact for the
    `vllm:num_requests_waiting` gauge.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self.running < self.capacity and not self._waiters:
            self.running += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over just as we were cancelled
            else:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        # Hand the slot straight to the oldest waiter so `running` never dips and lets a
        # newcomer in ahead of it.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.running -= 1


@dataclass
class Sequence:
    """One choice being generated: a deterministic stream of words, cut by stop strings."""

    index: int
    max_tokens: int
    # The request gave max_tokens: reaching it ends with "length"; otherwise the default
    # length stands for the model emitting EOS, which ends with "stop".
    explicit_limit: bool
    stop: list[str]
    rng: random.Random
    text: str = ""
    generated: int = 0
    finish_reason: str | None = None
    stop_reason: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def step(self) -> str:
        """Generate one token and return the text it adds (possibly "" after a stop cut)."""
        word = VOCABULARY[self.rng.randrange(len(VOCABULARY))]
        delta = word if self.generated == 0 else " " + word
        self.generated += 1
        combined = self.text + delta
        for stop in self.stop:
            # A stop string may start in earlier text and end in this word. The output ends
            # just before it; in a stream, what was already sent stays sent.
            found = combined.find(stop, max(len(self.text) - len(stop) + 1, 0))
            if found >= 0:
                kept = combined[:found]
                delta = kept[len(self.text) :]
                self.text = kept
                self.finish_reason, self.stop_reason = "stop", stop
                return delta
        self.text += delta
        if self.generated >= self.max_tokens:
            self.finish_reason = "length" if self.explicit_limit else "stop"
        return delta


def output_seed(tokens: list[str], seed: int | None, salt: int, index: int) -> int:
    """A stable 64-bit seed from the prompt, so the same prompt gives the same answer anywhere."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{salt}\x00{seed}\x00{index}\x00".encode())
    digest.update("\x00".join(tokens).encode())
    return int.from_bytes(digest.digest(), "little")


def embedding_vector(tokens: list[str], dim: int, salt: int) -> list[float]:
    """A deterministic unit vector for `tokens`."""
    rng = random.Random(output_seed(tokens, None, salt, -1))
    vector = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def truncate_and_normalize(vector: list[float], dim: int) -> list[float]:
    """Matryoshka-style `dimensions`: keep the first `dim` values, renormalized."""
    head = vector[:dim]
    norm = math.sqrt(sum(v * v for v in head)) or 1.0
    return [v / norm for v in head]


def float32_base64(vector: list[float]) -> bytes:
    """Little-endian float32 bytes, as OpenAI and vLLM encode `encoding_format: base64`."""
    return struct.pack(f"<{len(vector)}f", *vector)


class Engine:
    """State of one simulated vLLM engine: capacity, prefix cache, faults, metrics."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.faults: Faults = config.faults
        self.slots = FifoSlots(config.max_concurrency)
        self.cache = PrefixCache(config.prefix_cache_blocks, config.block_size)
        self.metrics = SimulatorMetrics(
            config.model_name,
            running=lambda: self.slots.running,
            waiting=lambda: self.slots.waiting,
            cache_usage=lambda: self.cache.usage,
        )
        self._rng = random.Random(config.seed)
        self._faults_changed = asyncio.Event()
        self._ready_at = 0.0

    # --- lifecycle and faults -------------------------------------------------------------

    def mark_started(self) -> None:
        loop = asyncio.get_running_loop()
        self._ready_at = loop.time() + self.config.startup_delay_ms / 1000.0

    @property
    def loading(self) -> bool:
        return asyncio.get_running_loop().time() < self._ready_at

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults
        # Wake requests parked by `hang` so they re-read the faults.
        changed, self._faults_changed = self._faults_changed, asyncio.Event()
        changed.set()

    def draw_error(self) -> bool:
        rate = self.faults.error_rate
        return rate >= 1.0 or (rate > 0.0 and self._rng.random() < rate)

    async def wait_while_hung(self) -> None:
        while self.faults.hang:
            await self._faults_changed.wait()

    # --- models ------------------------------------------------------------------------------

    def served_names(self) -> list[str]:
        return [*self.config.served_model_names, *self.config.lora_modules]

    def resolve_model(self, requested: str | None) -> str | None:
        """The name to answer with (vLLM: the adapter's or the primary name); None if unknown."""
        if requested is None or requested in self.config.served_model_names:
            return self.config.model_name
        if requested in self.config.lora_modules:
            return requested
        return None

    # --- scheduling and latency --------------------------------------------------------------

    @asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """Hold one of the `max_concurrency` slots; wait FIFO for it."""
        await self.slots.acquire()
        try:
            yield
        finally:
            self.slots.release()

    def prefill(self, prompts: list[list[str]]) -> PrefixMatch:
        """Look up (and then cache) each prompt; count it the way vLLM's counters do."""
        queried = hits = 0
        for tokens in prompts:
            match = self.cache.match_and_store(tokens)
            queried += match.queried_tokens
            hits += match.hit_tokens
        if self.cache.enabled:
            self.metrics.prefix_cache_queries.inc(queried)
            self.metrics.prefix_cache_hits.inc(hits)
        self.metrics.prompt_tokens.inc(queried)
        return PrefixMatch(queried_tokens=queried, hit_tokens=hits)

    def ttft_seconds(self, uncached_tokens: int) -> float:
        ms = self.config.ttft_ms + self.config.prefill_ms_per_token * uncached_tokens
        return ms * self.faults.slowdown / 1000.0

    def itl_seconds(self) -> float:
        return self.config.itl_ms * self.faults.slowdown / 1000.0

    def new_sequences(
        self, prompts: list[list[str]], n: int, limits: list[int], explicit: bool,
        stop: list[str], seed: int | None,
    ) -> list[Sequence]:  # fmt: skip
        """`n` choices per prompt, indexed prompt-major as vLLM does; `limits` per prompt."""
        sequences = []
        for p, (tokens, limit) in enumerate(zip(prompts, limits, strict=True)):
            for j in range(n):
                rng = random.Random(output_seed(tokens, seed, self.config.seed, j))
                sequences.append(Sequence(p * n + j, limit, explicit, stop, rng))
        return sequences
