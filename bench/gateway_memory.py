"""Gateway memory under churn: RSS stays flat while 1,000 models and backends pass through.

One process runs the gateway (the real `start_gateway`, pooled client, metrics, providers)
and drives it: the routing table is replaced the way Kubernetes discovery does (a complete
list of `RouteSpec`s each time), sliding a window of 20 live models over 1,000 model names,
each on its own backend (1,000 distinct loopback addresses served by a child process),
with a fallback provider of its own. Requests (a quarter streamed, one in ten to a model
whose pod is gone, so it falls back) go to the live models over real sockets on loopback.

RSS is sampled after every 10,000 requests; the claim is that it stops growing once the
working set is warm: the last sample is within a few MiB of the one at 20,000 requests,
and the pool, provider cache and metric series track the live table, not its history.
Bounded: 100,000 requests or 600 s, whichever comes first.

    .venv/bin/python bench/gateway_memory.py [--requests 100000] [--backends 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gateway_bench as gb  # noqa: E402  (the fast canned backend and raw HTTP client)

from hedge_serving.gateway.app import GatewaySettings, start_gateway  # noqa: E402
from hedge_serving.gateway.keys import LocalKeyStore  # noqa: E402
from hedge_serving.gateway.routing import (  # noqa: E402
    ProviderSpec,
    ProviderType,
    RouteSpec,
    RoutingTable,
    SecretRef,
)

WINDOW = 20  # models live at once
DEAD_EVERY = 10  # every 10th model's pod is gone: its requests fall back


def backend_ip(i: int) -> str:
    return f"127.0.{1 + i // 250}.{1 + i % 250}"


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def serve_many(count: int, port: int) -> None:
    """The child process: the canned backend on `count` loopback addresses, one port."""
    loop = asyncio.get_running_loop()
    servers = []
    for i in range(count):
        if i % DEAD_EVERY == DEAD_EVERY - 1:
            continue  # nobody listens: that model's requests fall back
        servers.append(await loop.create_server(gb.BackendProtocol, backend_ip(i), port))
    provider = await loop.create_server(gb.BackendProtocol, "127.0.0.1", port)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    for s in [*servers, provider]:
        s.close()


def specs(first: int, count: int, port: int) -> list[RouteSpec]:
    out = []
    for i in range(first, first + WINDOW):
        b = i % count
        fallback = ProviderSpec(
            ProviderType.OPENAI_COMPATIBLE,
            f"provider-model-{i}",  # a distinct provider per model, as teams configure them
            f"http://127.0.0.1:{port}/v1",
            SecretRef(env="BENCH_KEY"),
        )
        out.append(RouteSpec(f"model-{i}", (f"http://{backend_ip(b)}:{port}",), (fallback,)))
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    child = subprocess.Popen(
        [sys.executable, __file__, "serve", "--backends", str(args.backends), "--port", str(port)],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != b"ready":
            raise RuntimeError("the backends did not start")
        table = RoutingTable()
        table.replace(specs(0, args.backends, port))
        settings = GatewaySettings(port=0, admin_port=None, engine_metrics_interval_s=0)
        if hasattr(settings, "drain_delay_s"):  # (run against older gateways too)
            settings = dataclasses.replace(settings, drain_delay_s=0)
        gw = await start_gateway(table, settings, keys=LocalKeyStore({"BENCH_KEY": "sk"}))
        gc.collect()
        samples: list[tuple[int, float]] = [(0, rss_mib())]
        served = failed = 0
        statuses: dict[int, int] = {}
        first = 0
        deadline = time.monotonic() + args.max_seconds
        conns = [await gb.Conn.open(gw.port) for _ in range(args.concurrency)]
        step = max(1, args.requests // args.backends)  # requests between two table updates
        sent = 0

        async def worker(conn: gb.Conn) -> None:
            nonlocal served, failed, sent
            while sent < args.requests and time.monotonic() < deadline:
                n = sent
                sent += 1
                # Not the window's oldest model: it may leave the table while this is in flight.
                model = f"model-{first + 1 + n % (WINDOW - 1)}"
                body = dict(gb.CHAT, model=model, stream=n % 4 == 0)
                request = gb.post("/v1/chat/completions", body)
                status, _, _ = await asyncio.wait_for(conn.request(request), 30)
                if status == 200:
                    served += 1
                else:
                    failed += 1
                    statuses[status] = statuses.get(status, 0) + 1

        snapshot: Any = None

        async def churn() -> None:
            nonlocal first, snapshot
            next_sample = 10_000
            while sent < args.requests and time.monotonic() < deadline:
                if sent >= (first + 1) * step and first + WINDOW < args.backends + WINDOW:
                    first += 1
                    table.replace(specs(first, args.backends, port))
                if sent >= next_sample:
                    gc.collect()
                    samples.append((sent, rss_mib()))
                    print(f"  {sent:>7} requests  rss {samples[-1][1]:7.1f} MiB", flush=True)
                    if args.tracemalloc and next_sample == 20_000:
                        snapshot = tracemalloc.take_snapshot()
                    next_sample += 10_000
                await asyncio.sleep(0.005)

        await asyncio.gather(churn(), *(worker(c) for c in conns))
        for c in conns:
            c.close()
        gc.collect()
        samples.append((sent, rss_mib()))
        if snapshot is not None:
            print("# biggest allocation growth since 20,000 requests")
            for stat in tracemalloc.take_snapshot().compare_to(snapshot, "lineno")[:12]:
                print("  ", stat)
        pool = gw.upstream
        result = {
            "requests": sent,
            "served": served,
            "failed": failed,
            "failed_by_status": statuses,
            "models_churned": first + WINDOW,
            "rss_mib": {n: round(r, 1) for n, r in samples},
            "rss_growth_after_20k_mib": round(
                samples[-1][1] - next(r for n, r in samples if n >= 20_000), 1
            )
            if sent >= 20_000
            else None,
            "pooled_backends_left": getattr(pool, "hosts", lambda: -1)(),
            "provider_clients_cached": len(gw.gateway.proxy._providers),
            "metric_models": len({k[0] for k in gw.gateway.metrics._request_children}),
        }
        await gw.stop()
        return result
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="cmd")
    serve = sub.add_parser("serve", help="(internal) the backends")
    serve.add_argument("--backends", type=int, required=True)
    serve.add_argument("--port", type=int, required=True)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--backends", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=600)
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("--tracemalloc", action="store_true", help="print where memory grew (slow)")
    args = parser.parse_args()
    import uvloop

    if args.cmd == "serve":
        uvloop.run(serve_many(args.backends, args.port))
        return 0
    print(f"# gateway RSS, {args.requests} requests, {args.backends} models/backends churned")
    if args.tracemalloc:
        tracemalloc.start(4)
    result = uvloop.run(run(args))
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
