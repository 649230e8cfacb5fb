"""Hedge's gateway against the backend called directly, the LiteLLM proxy and vllm-router.

One run, one machine, loopback only; every loop is bounded in count and time. Prints the
numbers and the ratios the gateway issue (#4) sets as goals:

- added latency over calling the backend directly, one request at a time (p50, p99);
- added inter-chunk gap p99 under 64 concurrent streams;
- throughput of one process (hedge vs LiteLLM with one worker vs vllm-router);
- routing quality on 4 simulated vLLM replicas with a prefix cache and a shared-prefix
  workload: p90 TTFT of hedge vs vllm-router `cache_aware` and `round_robin`;
- failover: engines killed under load with a fallback configured (failed requests), then
  restarted (seconds until traffic is back on self-hosted).

Peers are installed into a separate virtualenv (~/.cache/hedge/bench-venv) on first use;
they never become project dependencies. Usage:

    .venv/bin/python bench/gateway_bench.py [--quick] [--only latency,throughput,...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH_VENV = Path(os.environ.get("HEDGE_BENCH_VENV", Path.home() / ".cache/hedge/bench-venv"))
PEERS = ["litellm[proxy]", "vllm-router"]
MODEL = "llama-3-8b"
HOST = "127.0.0.1"

# ----------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def ensure_peers() -> Path:
    """The peers' virtualenv, created and filled on first use."""
    marker = BENCH_VENV / ".hedge-peers"
    if marker.exists():
        return BENCH_VENV
    print(f"installing benchmark peers into {BENCH_VENV} (first run only) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
    pip = [
        str(BENCH_VENV / "bin/python"),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]
    subprocess.run([*pip, *PEERS], check=True)
    marker.write_text("\n".join(PEERS) + "\n")
    return BENCH_VENV


class Procs:
    """Child processes, each in its own process group, all ended on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logdir = Path(tempfile.mkdtemp(prefix="hedge-bench-"))

    def start(
        self, name: str, cmd: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{name}.log", "wb")  # noqa: SIM115
        p = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            cwd=ROOT,
        )
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, sig)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)

    def close(self) -> None:
        for p in reversed(self.procs):
            self.stop(p)


async def wait_http(
    port: int,
    path: str = "/health",
    timeout: float = 90.0,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}; see its log")
        try:
            conn = await Conn.open(port)
            try:
                status, _, _ = await asyncio.wait_for(conn.request(get(path)), 2)
            finally:
                conn.close()
            if status < 500:
                return
        except (OSError, TimeoutError, ConnectionError):
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError(f"nothing answered on port {port}{path} within {timeout}s")


# ------------------------------------------------------------- minimal HTTP/1.1 client


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


def post(path: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer sk-bench\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode() + data


class Conn(asyncio.Protocol):
    """One keep-alive connection; one request at a time; records when bytes arrive."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes, bytes]] | None = None
        self.arrivals: list[float] = []
        self.first_event: float | None = None  # when the first SSE event arrived
        self.closed = asyncio.get_running_loop().create_future()
        self._head_end = -1
        self._length: int | None = None
        self._chunked = False

    @classmethod
    async def open(cls, port: int) -> Conn:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(cls, HOST, port)
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def request(self, data: bytes) -> asyncio.Future[tuple[int, bytes, bytes]]:
        if self.transport is None:
            raise ConnectionError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.buf.clear()
        self.arrivals.clear()
        self.first_event = None
        self._head_end = -1
        self.transport.write(data)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.arrivals.append(now)
        if self.first_event is None and b"data: " in data:
            self.first_event = now
        self.buf += data
        if self._head_end < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self._head_end = end + 4
            head = bytes(self.buf[:end]).lower()
            self._length = None
            self._chunked = b"transfer-encoding: chunked" in head
            i = head.find(b"content-length:")
            if i >= 0:
                self._length = int(
                    head[i + 15 : head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None]
                )
        body_len = len(self.buf) - self._head_end
        if self._length is not None:
            done = body_len >= self._length
        elif self._chunked:
            done = self.buf.endswith(b"0\r\n\r\n")
        else:
            done = False
        if done and self.waiter is not None and not self.waiter.done():
            head = bytes(self.buf[: self._head_end])
            status = int(head.split(b" ", 2)[1])
            self.waiter.set_result((status, head, bytes(self.buf[self._head_end :])))


# ------------------------------------------------------------------------ fast backend

CHAT_RESPONSE = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ok"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
).encode()
MODELS_RESPONSE = json.dumps(
    {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "vllm"}]}
).encode()
METRICS_RESPONSE = b'vllm:num_requests_waiting{model_name="llama-3-8b"} 0.0\n'


def _event(data: bytes) -> bytes:
    """One SSE event as one HTTP chunk."""
    event = b"data: " + data + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


def _chunk_event(delta: dict[str, Any], finish: str | None = None) -> bytes:
    ev = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return _event(json.dumps(ev, separators=(",", ":")).encode())  # compact, as vLLM writes


USAGE_EVENT = _event(
    json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": MODEL,
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        },
        separators=(",", ":"),
    ).encode()
)
DONE_EVENT = _event(b"[DONE]") + b"0\r\n\r\n"
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)
ROLE_EVENT = _chunk_event({"role": "assistant", "content": ""})
# A one-token answer, all of it ready at once (the common case in the throughput test).
ONE_TOKEN_STREAM = (STREAM_HEAD + ROLE_EVENT + _chunk_event({"content": "ok"}, "stop"), DONE_EVENT)


_MAX_TOKENS = re.compile(rb'"max_tokens": ?(\d+)')
_INCLUDE_USAGE = re.compile(rb'"include_usage": ?true')


class BackendProtocol(asyncio.Protocol):
    """A canned-answer OpenAI server: as fast as Python gets, so routers are what we measure."""

    chunks = 20
    chunk_interval = 0.01

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end])
            lower = head.lower()
            length = 0
            i = lower.find(b"content-length:")
            if i >= 0:
                j = lower.find(b"\r\n", i)
                length = int(lower[i + 15 : j if j > 0 else None])
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            self.respond(head.split(b" ", 2)[1], body)

    def _send(self, status: bytes, body: bytes, ctype: bytes = b"application/json") -> None:
        if self.transport is not None:
            self.transport.write(
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Type: "
                + ctype
                + b"\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )

    def respond(self, path: bytes, body: bytes) -> None:
        if path.startswith(b"/v1/chat/completions") or path.startswith(b"/v1/completions"):
            if b'"stream": true' in body or b'"stream":true' in body:
                # As vLLM: one event per token, `max_tokens` of them (the same tokens a
                # non-streamed answer would carry), then the usage event if asked for.
                # Read without parsing the JSON: the backend stays cheap, the routers are measured.
                found = _MAX_TOKENS.search(body)
                tokens = int(found.group(1)) if found else self.chunks
                self.stream(tokens, _INCLUDE_USAGE.search(body) is not None)
            else:
                self._send(b"200 OK", CHAT_RESPONSE)
        elif path == b"/health":
            self._send(b"200 OK", b"", b"text/plain")
        elif path == b"/v1/models":
            self._send(b"200 OK", MODELS_RESPONSE)
        elif path == b"/metrics":
            self._send(b"200 OK", METRICS_RESPONSE, b"text/plain")
        else:
            self._send(b"404 Not Found", b'{"error": {"message": "not found"}}')

    def stream(self, tokens: int, usage: bool) -> None:
        if self.transport is None:
            return
        if tokens == 1:
            first, done = ONE_TOKEN_STREAM
            self.transport.write(first + (USAGE_EVENT if usage else b"") + done)
            return
        self.transport.write(STREAM_HEAD + ROLE_EVENT)
        loop = asyncio.get_running_loop()
        start = loop.time()

        def send(i: int) -> None:
            if self.transport is None:
                return
            last = i == tokens - 1
            out = _chunk_event(
                {"content": "ok" if tokens == 1 else f" t{i}"}, "stop" if last else None
            )
            if not last:
                self.transport.write(out)
                loop.call_at(start + (i + 1) * self.chunk_interval, send, i + 1)
                return
            self.transport.write(out + (USAGE_EVENT if usage else b"") + DONE_EVENT)

        send(0)


async def serve_backends(ports: list[int], chunks: int, interval_ms: float) -> None:
    BackendProtocol.chunks = chunks
    BackendProtocol.chunk_interval = interval_ms / 1000
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_server(BackendProtocol, HOST, p, backlog=2048, reuse_address=True)
        for p in ports
    ]
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for s in servers:
        s.close()


async def serve_simulators(ports: list[int], cache_blocks: int, concurrency: int) -> None:
    from hedge_serving.simulator.server import SimulatorConfig, start_simulator

    sims = []
    for i, port in enumerate(ports):
        cfg = SimulatorConfig(
            served_model_names=[MODEL],
            ttft_ms=10.0,
            itl_ms=5.0,
            prefill_ms_per_token=0.1,
            max_concurrency=concurrency,
            prefix_cache_blocks=cache_blocks,
            block_size=16,
            default_max_tokens=4,
            seed=i,
        )
        sims.append(await start_simulator(cfg, HOST, port))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for s in sims:
        await s.stop()


# --------------------------------------------------------------------------- routers


@dataclass
class Router:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    health: str = "/health"


def source_env(src: Path | None) -> dict[str, str]:
    """Environment that runs `hedge` from another checkout (`--compare-with`)."""
    if src is None:
        return {}
    return {"PYTHONPATH": os.pathsep.join(str(src / d) for d in ("core", "serving", "operator"))}


def hedge_flags(src: Path | None = None) -> str:
    """`hedge gateway --help`: what a gateway accepts (an older one lacks some flags)."""
    out = subprocess.run(
        [sys.executable, "-m", "hedge_core.cli", "gateway", "--help"],
        capture_output=True,
        text=True,
        cwd=src or ROOT,
        env={**os.environ, **source_env(src)},
        check=True,
    )
    return out.stdout


def start_hedge(
    procs: Procs,
    backends: list[str],
    *,
    fallback: str | None = None,
    name: str = "hedge",
    extra: tuple[str, ...] = (),
    src: Path | None = None,
) -> Router:
    port = free_port()
    routes = procs.logdir / f"{name}-routes.yaml"
    lines = ["models:", f"  - name: {MODEL}", f"    backends: [{', '.join(backends)}]"]
    if fallback:
        lines += [
            "    fallback:",
            f"      - {{type: openai-compatible, model: {MODEL}, baseURL: {fallback}/v1}}",
        ]
    routes.write_text("\n".join(lines) + "\n")
    cmd = [
        sys.executable,
        "-m",
        "hedge_core.cli",
        "gateway",
        "--routes",
        str(routes),
        "--host",
        HOST,
        "--port",
        str(port),
        "--admin-port",
        "0",
        "--log-level",
        "WARNING",
        *extra,
    ]
    flags = hedge_flags(src)
    if "--drain-delay" in flags:
        cmd += ["--drain-delay", "0"]  # stopping a contender need not wait for endpoints
    if fallback and "--egress-allow-http" in flags:
        # The stub provider is on loopback over http: allowed here as a platform admin would.
        cmd += ["--egress-allow-http", HOST, "--egress-allow-cidr", "127.0.0.0/8"]
    p = procs.start(name, cmd, source_env(src))
    return Router(name, port, p, health="/v1/models")


def start_litellm(procs: Procs, venv: Path, backends: list[str]) -> Router:
    port = free_port()
    cfg = procs.logdir / "litellm.yaml"
    model_list = [
        {
            "model_name": MODEL,
            "litellm_params": {"model": f"openai/{MODEL}", "api_base": b + "/v1", "api_key": "x"},
        }
        for b in backends
    ]
    cfg.write_text(
        json.dumps(
            {
                "model_list": model_list,
                "litellm_settings": {"drop_params": True, "set_verbose": False, "num_retries": 0},
                "general_settings": {"disable_spend_logs": True, "master_key": "sk-bench"},
                "router_settings": {"routing_strategy": "least-busy"},
            }
        )
    )
    cmd = [
        str(venv / "bin/litellm"),
        "--config",
        str(cfg),
        "--host",
        HOST,
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    env = {"LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "DISABLE_ADMIN_UI": "True"}
    p = procs.start("litellm", cmd, env)
    return Router("litellm", port, p, health="/health/liveliness")


def start_vllm_router(procs: Procs, venv: Path, backends: list[str], policy: str) -> Router:
    port = free_port()
    cmd = [
        str(venv / "bin/vllm-router"),
        "--host",
        HOST,
        "--port",
        str(port),
        "--policy",
        policy,
        "--worker-urls",
        *backends,
        "--log-level",
        "warning",
        "--prometheus-port",
        str(free_port()),
    ]
    p = procs.start(f"vllm-router-{policy}", cmd)
    return Router(f"vllm-router/{policy}", port, p, health="/health")


# -------------------------------------------------------------------------- measures

# One token ("ok"): the backend answers at once whether asked to stream or not.
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say ok."}], "max_tokens": 1}


async def sequential_latency(port: int, n: int, budget_s: float) -> list[float]:
    conn = await Conn.open(port)
    req = post("/v1/chat/completions", CHAT)
    out: list[float] = []
    deadline = time.monotonic() + budget_s
    try:
        for i in range(n + 50):
            t0 = time.perf_counter()
            status, _, _ = await asyncio.wait_for(conn.request(req), 10)
            dt = time.perf_counter() - t0
            if status != 200:
                raise RuntimeError(f"HTTP {status} from port {port}")
            if i >= 50:  # warm-up
                out.append(dt * 1000)
            if time.monotonic() > deadline:
                break
    finally:
        conn.close()
    return out


async def throughput(port: int, concurrency: int, seconds: float) -> tuple[float, int]:
    req = post("/v1/chat/completions", CHAT)
    done = 0
    errors = 0
    stop_at = 0.0

    async def worker() -> None:
        nonlocal done, errors
        conn = await Conn.open(port)
        try:
            while time.perf_counter() < stop_at:
                try:
                    status, _, _ = await asyncio.wait_for(conn.request(req), 30)
                except (ConnectionError, TimeoutError):
                    errors += 1
                    conn.close()
                    conn = await Conn.open(port)
                    continue
                if status == 200:
                    done += 1
                else:
                    errors += 1
        finally:
            conn.close()

    # warm-up, then the measured window
    stop_at = time.perf_counter() + 1.0
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    done = errors = 0
    t0 = time.perf_counter()
    stop_at = t0 + seconds
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - t0), errors


async def stream_gaps(port: int, concurrency: int, rounds: int) -> list[float]:
    body = dict(CHAT, stream=True, max_tokens=20)
    req = post("/v1/chat/completions", body)
    gaps: list[float] = []

    rng = random.Random(5)

    async def worker() -> None:
        conn = await Conn.open(port)
        try:
            for _ in range(rounds):
                # Streams start at independent times, as clients' do (not all in one tick).
                await asyncio.sleep(rng.uniform(0, 0.05))
                status, _, _ = await asyncio.wait_for(conn.request(req), 30)
                if status != 200:
                    raise RuntimeError(f"stream HTTP {status}")
                times = conn.arrivals[1:]  # the first read carries the headers and first event
                gaps.extend((b - a) * 1000 for a, b in itertools.pairwise(times))
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return gaps


def shared_prefix_workload(
    n: int, prompts: int, prompt_words: int, seed: int = 7
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    systems = [
        " ".join(f"s{p}w{rng.randrange(10_000)}" for _ in range(prompt_words))
        for p in range(prompts)
    ]
    reqs = []
    for i in range(n):
        user = " ".join(f"u{i}w{rng.randrange(10_000)}" for _ in range(30))
        reqs.append(
            {
                "model": MODEL,
                "stream": True,
                "max_tokens": 4,
                "messages": [
                    {"role": "system", "content": systems[rng.randrange(prompts)]},
                    {"role": "user", "content": user},
                ],
            }
        )
    return reqs


async def ttft_run(port: int, reqs: list[dict[str, Any]], concurrency: int) -> list[float]:
    queue = list(reversed(reqs))
    ttfts: list[float] = []

    async def worker() -> None:
        conn = await Conn.open(port)
        try:
            while queue:
                data = post("/v1/chat/completions", queue.pop())
                t0 = time.perf_counter()
                status, _head, body = await asyncio.wait_for(conn.request(data), 60)
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
                # time to the first event (routers may send headers before it)
                assert conn.first_event is not None
                ttfts.append((conn.first_event - t0) * 1000)
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ttfts


# ------------------------------------------------------------------------------- main


@dataclass
class Results:
    data: dict[str, Any] = field(default_factory=dict)

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        print(f"  {key}: {value}", flush=True)


async def bench(args: argparse.Namespace) -> Results:
    res = Results()
    only = (
        set(args.only.split(","))
        if args.only
        else {"latency", "throughput", "stream", "routing", "failover"}
    )
    need_peers = bool(only & {"latency", "throughput", "routing"}) and not args.no_peers
    venv = ensure_peers() if need_peers else None
    procs = Procs()
    print(f"logs: {procs.logdir}", flush=True)
    q = args.quick
    py = sys.executable
    try:
        if only & {"latency", "throughput", "stream"}:
            bports = [free_port(), free_port()]
            procs.start(
                "backends",
                [
                    py,
                    __file__,
                    "backends",
                    "--ports",
                    ",".join(map(str, bports)),
                    "--chunks",
                    "20",
                    "--chunk-ms",
                    "10",
                ],
            )
            for p in bports:
                await wait_http(p)
            urls = [f"http://{HOST}:{p}" for p in bports]
            # The same gateway with aiohttp's client on the engine path: the measurement that
            # keeps (or retires) the hand-written pooled client.
            routers = [start_hedge(procs, urls)]
            if args.compare_with:
                # The same gateway at another revision, measured in this same run.
                routers.append(start_hedge(procs, urls, name="hedge-before", src=args.compare_with))
            if "--upstream-client" in hedge_flags():
                routers.append(
                    start_hedge(
                        procs, urls, name="hedge-aiohttp", extra=("--upstream-client", "aiohttp")
                    )
                )
            if venv is not None:
                routers.append(start_vllm_router(procs, venv, urls, "round_robin"))
                routers.append(start_litellm(procs, venv, urls))
            for r in routers:
                await wait_http(r.port, r.health, timeout=180, proc=r.proc)

            if "latency" in only:
                print("\n# added latency, one request at a time (ms)", flush=True)
                n = 300 if q else 2000
                direct = await sequential_latency(bports[0], n, 30)
                res.put("direct_p50_ms", round(pct(direct, 50), 3))
                res.put("direct_p99_ms", round(pct(direct, 99), 3))
                for r in routers:
                    m = await sequential_latency(r.port, 200 if r.name == "litellm" else n, 30)
                    res.put(f"{r.name}_added_p50_ms", round(pct(m, 50) - pct(direct, 50), 3))
                    res.put(f"{r.name}_added_p99_ms", round(pct(m, 99) - pct(direct, 99), 3))

            if "throughput" in only:
                print("\n# throughput, 64 connections (requests/s)", flush=True)
                secs = 3.0 if q else 6.0
                for r in routers:
                    rps, errs = await throughput(r.port, 64, secs)
                    res.put(f"{r.name}_rps", round(rps, 1))
                    if errs:
                        res.put(f"{r.name}_errors", errs)

            if "stream" in only:
                print(
                    "\n# inter-chunk gap, 64 concurrent streams, 10 ms apart at the source (ms)",
                    flush=True,
                )
                rounds = 2 if q else 5
                direct_gaps = await stream_gaps(bports[0], 64, rounds)
                res.put("direct_gap_p99_ms", round(pct(direct_gaps, 99), 3))
                hedge_gaps = await stream_gaps(routers[0].port, 64, rounds)
                res.put("hedge_gap_p99_ms", round(pct(hedge_gaps, 99), 3))
                res.put(
                    "hedge_added_gap_p99_ms", round(pct(hedge_gaps, 99) - pct(direct_gaps, 99), 3)
                )
                res.put("stream_gaps_measured", len(hedge_gaps))
                if args.compare_with:
                    before = next(r for r in routers if r.name == "hedge-before")
                    before_gaps = await stream_gaps(before.port, 64, rounds)
                    res.put("hedge-before_gap_p99_ms", round(pct(before_gaps, 99), 3))
                    res.put(
                        "hedge-before_added_gap_p99_ms",
                        round(pct(before_gaps, 99) - pct(direct_gaps, 99), 3),
                    )
            for r in routers:
                procs.stop(r.proc)

        if "routing" in only:
            print(
                "\n# routing quality: 4 simulated replicas with prefix cache, TTFT (ms)", flush=True
            )
            sports = [free_port() for _ in range(4)]
            urls = [f"http://{HOST}:{p}" for p in sports]
            reqs = shared_prefix_workload(120 if q else 400, prompts=8, prompt_words=1500)
            starters: list[Callable[[], Router]] = [
                lambda: start_hedge(procs, urls, name="hedge-routing")
            ]
            if venv is not None:
                starters.append(lambda: start_vllm_router(procs, venv, urls, "cache_aware"))
                starters.append(lambda: start_vllm_router(procs, venv, urls, "round_robin"))
            ttft: dict[str, float] = {}
            for starter in starters:
                # fresh simulators (cold prefix caches) for every contender
                sims = procs.start(
                    "simulators",
                    [
                        py,
                        __file__,
                        "simulators",
                        "--ports",
                        ",".join(map(str, sports)),
                        "--cache-blocks",
                        "600",
                        "--concurrency",
                        "8",
                    ],
                )
                for p in sports:
                    await wait_http(p)
                r = starter()
                await wait_http(r.port, r.health, timeout=120, proc=r.proc)
                values = await ttft_run(r.port, reqs, concurrency=16)
                ttft[r.name] = pct(values, 90)
                res.put(f"{r.name}_ttft_p90_ms", round(ttft[r.name], 1))
                res.put(f"{r.name}_ttft_p50_ms", round(pct(values, 50), 1))
                procs.stop(r.proc)
                procs.stop(sims)
            res.data["_ttft"] = ttft

        if "failover" in only:
            print("\n# failover: engines killed under load, fallback configured", flush=True)
            await failover(procs, res, q)
    finally:
        procs.close()
    return res


async def failover(procs: Procs, res: Results, quick: bool) -> None:
    py = sys.executable
    eports = [free_port(), free_port()]
    pport = free_port()

    def start_engines() -> subprocess.Popen[bytes]:
        return procs.start(
            "engines", [py, __file__, "backends", "--ports", ",".join(map(str, eports))]
        )

    engines = start_engines()
    procs.start("provider", [py, __file__, "backends", "--ports", str(pport)])
    for p in [*eports, pport]:
        await wait_http(p)
    hedge = start_hedge(
        procs,
        [f"http://{HOST}:{p}" for p in eports],
        fallback=f"http://{HOST}:{pport}",
        name="hedge-failover",
    )
    await wait_http(hedge.port, hedge.health)
    req = post("/v1/chat/completions", CHAT)
    served: list[tuple[float, bytes]] = []  # (time, served-by)
    failures = 0
    stop_at = time.perf_counter() + (6 if quick else 10)

    async def worker() -> None:
        nonlocal failures
        conn = await Conn.open(hedge.port)
        try:
            while time.perf_counter() < stop_at:
                try:
                    status, head, _ = await asyncio.wait_for(conn.request(req), 15)
                except (ConnectionError, TimeoutError):
                    failures += 1
                    conn = await Conn.open(hedge.port)
                    continue
                if status != 200:
                    failures += 1
                    continue
                i = head.find(b"x-hedge-served-by: ")
                who = head[i + 19 : head.find(b"\r\n", i)] if i >= 0 else b"?"
                served.append((time.perf_counter(), who))
        finally:
            conn.close()

    async def chaos() -> tuple[float, float]:
        await asyncio.sleep(1.5)
        procs.stop(engines, signal.SIGKILL)  # every engine pod dies at once
        killed = time.perf_counter()
        await asyncio.sleep(2.0 if quick else 3.0)
        start_engines()
        for p in eports:
            await wait_http(p, timeout=20)
        return killed, time.perf_counter()

    results = await asyncio.gather(chaos(), *(worker() for _ in range(8)))
    killed, ready = results[0]
    after_kill = [who for t, who in served if killed < t < ready]
    back = next((t for t, who in served if t > ready and who == b"self-hosted"), None)
    res.put("failover_requests", len(served) + failures)
    res.put("failover_failed_requests", failures)
    res.put(
        "failover_served_by_fallback_while_down",
        sum(1 for w in after_kill if w == b"openai-compatible"),
    )
    res.put("failover_recovery_s", round(back - ready, 3) if back else None)


def report(res: Results) -> None:
    d = res.data
    print("\n# ratios and goals (issue #4)")

    def line(label: str, value: float | None, goal: str, ok: bool | None) -> None:
        mark = "n/a" if ok is None else ("PASS" if ok else "MISS")
        shown = "n/a" if value is None else f"{value:.3f}"
        print(f"  {label:<52} {shown:>10}   goal {goal:<10} {mark}")

    def get(k: str) -> float | None:
        v = d.get(k)
        return float(v) if isinstance(v, int | float) else None

    a50, a99 = get("hedge_added_p50_ms"), get("hedge_added_p99_ms")
    line("hedge added latency p50 (ms)", a50, "<= 0.5", None if a50 is None else a50 <= 0.5)
    line("hedge added latency p99 (ms)", a99, "<= 2", None if a99 is None else a99 <= 2)
    g = get("hedge_added_gap_p99_ms")
    line(
        "hedge added inter-chunk gap p99, 64 streams (ms)",
        g,
        "<= 0.5",
        None if g is None else g <= 0.5,
    )
    h, lite, vr = get("hedge_rps"), get("litellm_rps"), get("vllm-router/round_robin_rps")
    r1 = h / lite if h and lite else None
    r2 = h / vr if h and vr else None
    line("throughput hedge / litellm", r1, ">= 30", None if r1 is None else r1 >= 30)
    line("throughput hedge / vllm-router", r2, ">= 0.25", None if r2 is None else r2 >= 0.25)
    hb = get("hedge-before_rps")
    if hb is not None:
        line("throughput hedge / hedge before (same run)", h / hb if h else None, "", None)
        for k in ("added_p50_ms", "added_p99_ms", "added_gap_p99_ms"):
            line(f"hedge before: {k}", get(f"hedge-before_{k}"), "", None)
    ha = get("hedge-aiohttp_rps")
    r3 = ha / vr if ha and vr else None
    line("throughput hedge (aiohttp client) / vllm-router", r3, ">= 0.25", None)
    r4 = h / ha if h and ha else None
    line("throughput pooled client / aiohttp client", r4, "> 1", None if r4 is None else r4 > 1)
    ttft = d.get("_ttft") or {}
    hh, ca, rr = (
        ttft.get("hedge-routing"),
        ttft.get("vllm-router/cache_aware"),
        ttft.get("vllm-router/round_robin"),
    )
    q1 = hh / ca if hh and ca else None
    q2 = rr / hh if hh and rr else None
    line("TTFT p90 hedge / vllm-router cache_aware", q1, "<= 1", None if q1 is None else q1 <= 1)
    line("TTFT p90 round_robin / hedge", q2, ">= 2", None if q2 is None else q2 >= 2)
    f = get("failover_failed_requests")
    line("failover: failed client requests", f, "== 0", None if f is None else f == 0)
    rec = get("failover_recovery_s")
    line(
        "failover: back on self-hosted after ready (s)",
        rec,
        "<= 5",
        None if rec is None else rec <= 5,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="cmd")
    b = sub.add_parser("backends", help="(internal) canned-answer OpenAI servers")
    b.add_argument("--ports", required=True)
    b.add_argument("--chunks", type=int, default=20)
    b.add_argument("--chunk-ms", type=float, default=10.0)
    s = sub.add_parser("simulators", help="(internal) hedge engine simulators")
    s.add_argument("--ports", required=True)
    s.add_argument("--cache-blocks", type=int, default=600)
    s.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="fewer requests, shorter windows")
    parser.add_argument("--only", help="comma list of: latency,throughput,stream,routing,failover")
    parser.add_argument("--no-peers", action="store_true", help="skip LiteLLM and vllm-router")
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument(
        "--compare-with",
        type=Path,
        metavar="DIR",
        help="also run the gateway from this checkout (e.g. `git archive main | tar -x -C DIR`) "
        "in the latency, throughput and stream sections, side by side",
    )
    args = parser.parse_args()
    try:
        import uvloop

        run: Callable[[Awaitable[Any]], Any] = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run
    if args.cmd == "backends":
        run(serve_backends([int(p) for p in args.ports.split(",")], args.chunks, args.chunk_ms))
        return 0
    if args.cmd == "simulators":
        run(
            serve_simulators(
                [int(p) for p in args.ports.split(",")], args.cache_blocks, args.concurrency
            )
        )
        return 0
    res = run(bench(args))
    report(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res.data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
