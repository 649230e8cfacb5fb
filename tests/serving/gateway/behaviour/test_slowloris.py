"""Unauthenticated connections cannot exhaust the gateway (issue 16, High-4): half-sent heads
meet a byte budget and a deadline, connections over the per-address cap are closed at accept,
idle keep-alive ends, and an authenticated openai SDK client is served throughout.

All traffic is loopback. Attackers use source addresses 127.0.0.2-127.0.0.9 (Linux routes all
of 127.0.0.0/8 to lo), the served client 127.0.0.1, so the per-address cap is what it is in
production. Every loop below is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import resource
import time
from pathlib import Path

import pytest

from hedge_serving.gateway.routing import RouteSpec
from tests.serving.gateway.behaviour.test_cli import start_cli
from tests.serving.gateway_stubs.engines import Engine
from tests.serving.gateway_stubs.harness import Clients, start_test_gateway

MODEL = "llama-3-8b"
KEY = "sk-client-slowloris"
ATTACKERS = 1000
HEADER = b"a" * 8000  # per header line (aiohttp's per-line limit here is 16 KiB)
HEADERS_PER_CONNECTION = 24  # 192 KB each if nothing stops them
PACE_S = 0.5  # between header lines: the attack's own pace, not a wait for a condition
RSS_GROWTH_BOUND_MIB = 96  # default limits: 1,000 x 32 KiB heads at most, plus connections
SERVED_LATENCY_BOUND_S = 2.0


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _enough_files(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        if hard != resource.RLIM_INFINITY and hard < n:
            pytest.skip(f"needs {n} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))


async def _slow_head(port: int, source: str, outcome: list[bytes]) -> None:
    """One attacker: a request line, then big header lines slowly, never the final CRLF."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    except OSError:
        outcome.append(b"refused")
        return
    answer = asyncio.ensure_future(reader.read(4096))
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n")
        for i in range(HEADERS_PER_CONNECTION):
            done, _ = await asyncio.wait({answer}, timeout=PACE_S)
            if done:
                break
            writer.write(b"X-Pad-%d: %s\r\n" % (i, HEADER))
            await writer.drain()
        if not answer.done():
            await asyncio.wait({answer}, timeout=0)
        outcome.append(answer.result()[:12] if answer.done() else b"still open")
    except (ConnectionError, OSError):
        outcome.append(b"reset")
    finally:
        answer.cancel()
        writer.close()


async def _served_client(client: Clients, url: str, stop: asyncio.Event) -> list[float]:
    import openai

    c = openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=10.0)
    latencies: list[float] = []
    try:
        for _ in range(200):  # bounded; ends when the attack does
            if stop.is_set():
                break
            started = time.perf_counter()
            done = await c.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}]
            )
            assert done.choices[0].message.content
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.1)  # a client's think time, not a wait for a condition
    finally:
        await c.close()
    return latencies


async def test_a_thousand_half_sent_heads_leave_rss_bounded_and_clients_served(
    tmp_path: Path, client: Clients
) -> None:
    _enough_files(4 * ATTACKERS)
    engine = await Engine("e0", MODEL).start()
    routes = tmp_path / "routes.yaml"
    routes.write_text(f"models:\n  - name: {MODEL}\n    backends: [{engine.url}]\n")
    keys = tmp_path / "keys"
    keys.write_text(KEY + "\n")
    proc, url = await start_cli(
        "--routes", str(routes), "--api-keys-file", str(keys), "--port", "0",
        "--admin-port", "-1", "--drain-delay", "0",
    )  # fmt: skip
    port = int(url.rsplit(":", 1)[1])
    try:
        stop = asyncio.Event()
        served = asyncio.ensure_future(_served_client(client, url, stop))
        await asyncio.sleep(0.5)  # a few requests served: the baseline includes a warm path
        baseline = _rss_mib(proc.pid)
        peak = baseline
        outcome: list[bytes] = []
        attack = asyncio.gather(
            *(_slow_head(port, f"127.0.0.{2 + i % 4}", outcome) for i in range(ATTACKERS))
        )
        deadline = time.monotonic() + HEADERS_PER_CONNECTION * PACE_S + 30
        while not attack.done() and time.monotonic() < deadline:
            peak = max(peak, _rss_mib(proc.pid))
            await asyncio.wait({attack}, timeout=0.1)
        assert attack.done(), "the attack did not end in time"
        stop.set()
        latencies = await served
        growth = peak - baseline
        print(f"RSS {baseline:.0f} MiB -> peak {peak:.0f} MiB; served {len(latencies)} "
              f"requests, slowest {max(latencies):.2f}s; attackers: "
              f"{ {o: outcome.count(o) for o in set(outcome)} }")  # fmt: skip
        assert growth < RSS_GROWTH_BOUND_MIB, f"RSS grew {growth:.0f} MiB"
        assert len(latencies) >= 10 and max(latencies) < SERVED_LATENCY_BOUND_S, latencies
        # Each half-sent head was answered with a 431 (over the budget), not held.
        assert outcome.count(b"HTTP/1.1 431") >= ATTACKERS * 0.9, outcome[:5]
    finally:
        proc.kill()
        await proc.wait()
        await engine.stop()


async def test_connections_over_the_per_address_cap_are_closed_at_accept(
    client: Clients,
) -> None:
    _enough_files(2048)
    engine = await Engine("e0", MODEL).start()
    gw = await start_test_gateway([RouteSpec(MODEL, (engine.url,))], api_keys=(KEY,))
    held: list[asyncio.StreamWriter] = []
    try:
        readers = []
        for _ in range(600):  # the default cap is 512 per address
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", gw.port, local_addr=("127.0.0.9", 0)
            )
            readers.append(reader)
            held.append(writer)
        # The 88 over the cap see EOF (closed at accept) well before the 10 s head deadline.
        eofs = [asyncio.ensure_future(r.read()) for r in readers]
        done, _ = await asyncio.wait(eofs, timeout=3.0)
        assert len(done) == 600 - 512, len(done)
        assert all(f.result() == b"" for f in done)
        started = time.perf_counter()
        answer = await client(gw, KEY).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].message.content
        assert time.perf_counter() - started < SERVED_LATENCY_BOUND_S
        for f in eofs:
            f.cancel()
    finally:
        for w in held:
            w.close()
        await gw.stop()
        await engine.stop()


async def test_a_trickled_head_gets_a_408_at_the_head_deadline() -> None:
    engine = await Engine("e0", MODEL).start()
    gw = await start_test_gateway([RouteSpec(MODEL, (engine.url,))], api_keys=(KEY,))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        started = time.monotonic()
        answer = asyncio.ensure_future(reader.read())
        head = b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nX-Slow: " + b"a" * 200
        for byte in head:  # one byte every 50 ms: within every byte budget, never done
            writer.write(bytes([byte]))
            done, _ = await asyncio.wait({answer}, timeout=0.05)
            if done or time.monotonic() - started > 15:
                break
        got = await asyncio.wait_for(answer, 5)
        elapsed = time.monotonic() - started
        assert got.startswith(b"HTTP/1.1 408"), got[:80]
        assert b'"message": "The request head was not received within 10s."' in got
        assert 9.5 < elapsed < 12, elapsed  # the default head deadline is 10 s
        writer.close()
    finally:
        await gw.stop()
        await engine.stop()


async def test_idle_keepalive_and_the_global_cap_are_settings() -> None:
    engine = await Engine("e0", MODEL).start()
    gw = await start_test_gateway(
        [RouteSpec(MODEL, (engine.url,))],
        api_keys=(KEY,),
        keepalive_timeout_s=0.5,
        max_connections=3,
    )
    try:
        conns = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in range(4)]
        fourth = await asyncio.wait_for(conns[3][0].read(), 2)
        assert fourth == b""  # over the global cap of 3: closed at accept
        reader, writer = conns[0]
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " +
                     KEY.encode() + b"\r\n\r\n")  # fmt: skip
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert head.startswith(b"HTTP/1.1 200")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # idle keep-alive ended
        assert time.monotonic() - started < 2.0
        for _, w in conns:
            w.close()
    finally:
        await gw.stop()
        await engine.stop()
