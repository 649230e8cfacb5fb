"""The quota engine: is a tenant's limit exact across 1, 3 and 6 gateway replicas, and what
does a reserve + settle cost, Local vs Redis.

One run, one machine, one real redis-server on loopback (hedge_dev.redis, Debian's build in
the cache). For each replica count, bounded load at 3x a tokens-per-minute limit over a few
simulated minutes (`now` is stepped, no real minute waits), through three setups side by
side:

- redis: RedisStores sharing the real redis-server (what the gateways run);
- local-share: LocalStores at share 1/N each (what they fall back to with Redis down);
- local-whole: LocalStores at share 1 each (no coordination: N limits, the failure mode).

Per window it reports admitted tokens / limit, and the cost of each call (reserve, and
settle when admitted) in microseconds, p50 and p99, with N x 4 concurrent callers. Every loop
is bounded in count and wrapped in a wall-clock timeout. Usage:

    .venv/bin/python bench/quota_bench.py [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from hedge_dev.redis import RedisServer
from hedge_serving.gateway.quota.limits import MINUTE, LimitSet
from hedge_serving.gateway.quota.store import LocalStore, QuotaStore, RedisStore

T0 = 1_800_000_000.0  # a minute boundary
WORKERS_PER_REPLICA = 4
RUN_TIMEOUT = 120.0  # seconds of wall clock per setup


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def limits_for(limit: int) -> list[LimitSet]:
    """A request meets three scopes, as in the gateway: tenant (the tight one), key, model."""
    return [
        LimitSet("tenant/team-a/policy", requests_per_minute=10**6, tokens_per_minute=limit),
        LimitSet("key/team-a/policy/ci-bot", tokens_per_minute=10 * limit, concurrent_requests=64),
        LimitSet("model/team-a/policy/llama", tokens_per_day=10**9),
    ]


async def drive_window(
    stores: list[QuotaStore], limits: list[LimitSet], start: float, demand: list[int], seed: int
) -> tuple[int, list[float]]:
    """(tokens admitted, per-call microseconds) of one simulated minute from `start`."""
    rng = random.Random(seed)
    queue = iter(enumerate(demand))
    costs: list[float] = []
    admitted = 0

    async def caller(store: QuotaStore, name: str) -> None:
        nonlocal admitted
        for i, tokens in queue:
            now = start + 59.0 * i / len(demand)
            rid = f"{name}-{start}-{i}"
            t0 = time.perf_counter_ns()
            decision = await store.reserve(rid, limits, tokens, now)
            costs.append((time.perf_counter_ns() - t0) / 1000)
            if not decision.admitted:
                # LocalStore never suspends: yield, or one caller would take the whole queue
                # once its replica is full (the others' demand, not the store, would differ).
                await asyncio.sleep(0)
                continue
            actual = rng.randint(tokens // 2, tokens)
            await asyncio.sleep(0)  # in flight while the others call
            t0 = time.perf_counter_ns()
            await store.settle(rid, limits, tokens, actual, now + 0.5)
            costs.append((time.perf_counter_ns() - t0) / 1000)
            admitted += actual

    async with asyncio.timeout(RUN_TIMEOUT):
        await asyncio.gather(
            *(
                caller(store, f"r{n}w{w}")
                for n, store in enumerate(stores)
                for w in range(WORKERS_PER_REPLICA)
            )
        )
    return admitted, costs


async def drive(
    stores: list[QuotaStore], limit: int, windows: int, seed: int
) -> tuple[list[float], list[float]]:
    """(admitted / limit per window, per-call microseconds) under 3x demand."""
    rng = random.Random(seed)
    limits = limits_for(limit)
    ratios: list[float] = []
    costs: list[float] = []
    for window in range(windows):
        demand: list[int] = []
        while sum(demand) < 3 * limit:
            demand.append(rng.randint(50, 300))
        start = T0 + window * MINUTE
        admitted, window_costs = await drive_window(stores, limits, start, demand, seed + window)
        ratios.append(admitted / limit)
        costs += window_costs
    return ratios, costs


async def sequential_cost(store: QuotaStore, calls: int) -> list[float]:
    """Microseconds of one reserve + settle, one caller, nothing else running."""
    limits = limits_for(10**9)
    costs: list[float] = []
    for i in range(calls):
        now = T0 + i * 0.001
        t0 = time.perf_counter_ns()
        await store.reserve(f"seq-{i}", limits, 100, now)
        await store.settle(f"seq-{i}", limits, 100, 80, now)
        costs.append((time.perf_counter_ns() - t0) / 1000)
    return costs


def _setups(url: str, replicas: int) -> dict[str, list[QuotaStore]]:
    # Each setup counts under its own key prefix, so no run sees another's windows.
    prefix = f"bench:{replicas}:"
    return {
        "redis": [RedisStore(url, 1 / replicas, prefix=prefix) for _ in range(replicas)],
        "local-share": [LocalStore(1 / replicas) for _ in range(replicas)],
        "local-whole": [LocalStore(1.0) for _ in range(replicas)],
    }


async def _close(stores: list[QuotaStore]) -> None:
    for store in stores:
        if isinstance(store, RedisStore):
            await store.close()


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"limit_tokens_per_minute": args.limit, "windows": args.windows}
    rows: list[dict[str, Any]] = []
    with RedisServer() as server:
        for replicas in (1, 3, 6):
            for setup, stores in _setups(server.url, replicas).items():
                ratios, costs = await drive(stores, args.limit, args.windows, seed=replicas)
                row = {
                    "replicas": replicas,
                    "store": setup,
                    "ratios": [round(r, 4) for r in ratios],
                    "ratio_min": round(min(ratios), 4),
                    "ratio_max": round(max(ratios), 4),
                    "calls": len(costs),
                    "call_us_p50": round(pct(costs, 50), 1),
                    "call_us_p99": round(pct(costs, 99), 1),
                    "fell_back": any(isinstance(s, RedisStore) and not s.shared for s in stores),
                }
                await _close(stores)
                rows.append(row)
                print_row(row)
        print("\n# one caller, reserve + settle (3 scopes, 4 counters + 1 slot), µs")
        for name, store in (
            ("local", LocalStore()),
            ("redis", RedisStore(server.url, prefix="bench:seq:")),
        ):
            costs = await sequential_cost(store, args.sequential)
            await _close([store])
            p50, p99 = round(pct(costs, 50), 1), round(pct(costs, 99), 1)
            results[f"sequential_{name}_us"] = {"p50": p50, "p99": p99, "calls": len(costs)}
            print(f"  {name:<6} p50 {p50:>8.1f}   p99 {p99:>8.1f}   ({len(costs)} pairs)")
    results["rows"] = rows
    return results


def print_header() -> None:
    print(
        f"{'replicas':>8}  {'store':<12} {'admitted/limit per window':<40} "
        f"{'min':>6} {'max':>6} {'calls':>7} {'p50 µs':>8} {'p99 µs':>8}",
        flush=True,
    )


def print_row(row: dict[str, Any]) -> None:
    shown = " ".join(f"{r:.3f}" for r in row["ratios"])
    note = "  (fell back to local!)" if row["fell_back"] else ""
    print(
        f"{row['replicas']:>8}  {row['store']:<12} {shown:<40} {row['ratio_min']:>6.3f} "
        f"{row['ratio_max']:>6.3f} {row['calls']:>7} {row['call_us_p50']:>8.1f} "
        f"{row['call_us_p99']:>8.1f}{note}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="2 windows and a 6000 limit")
    parser.add_argument("--limit", type=int, default=60_000, help="tokens per minute")
    parser.add_argument("--windows", type=int, default=5, help="simulated minutes per setup")
    parser.add_argument("--sequential", type=int, default=2000, help="pairs timed one by one")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    if args.quick:
        args.limit, args.windows, args.sequential = 6000, 2, 300
    try:
        import uvloop

        run: Callable[[Coroutine[Any, Any, dict[str, Any]]], dict[str, Any]] = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run
    print(
        f"# quota: 3x demand on a {args.limit} tokens/min limit, {args.windows} simulated "
        f"minutes, {WORKERS_PER_REPLICA} callers per replica; goal: redis 0.95-1.02",
        flush=True,
    )
    print_header()
    results = run(bench(args))
    redis_rows = [r for r in results["rows"] if r["store"] == "redis"]
    ok = all(r["ratio_min"] >= 0.95 and r["ratio_max"] <= 1.02 for r in redis_rows)
    print(f"\nredis within 0.95-1.02 of the limit in every window: {'yes' if ok else 'NO'}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
