"""CPU time the gateway process spends per request, streamed and not, optionally beside the
gateway of another checkout.

Throughput on a shared machine moves with whatever else runs; the CPU seconds a process
used (utime + stime from /proc) per request do not, so this is how a change to the request
path is costed. Each gateway serves 20,000 requests (16 at a time, one-token answers from
the canned backend of gateway_bench.py), after 2,000 to warm up; gateways alternate, twice.

    .venv/bin/python bench/gateway_cpu.py [--compare-with DIR] [--requests 20000] [--canary]

`--canary` adds this checkout's gateway once more with the two backends labelled as two
revisions and 20 % of the requests split to the second (a canary rollout's request path:
the weighted choice and the per-revision counters).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gateway_bench as gb  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(port: int, n: int, concurrency: int, body: dict[str, object]) -> None:
    request = gb.post("/v1/chat/completions", body)
    left = n

    async def worker() -> None:
        nonlocal left
        conn = await gb.Conn.open(port)
        try:
            while left > 0:
                left -= 1
                status, _, _ = await asyncio.wait_for(conn.request(request), 30)
                if status != 200:
                    raise RuntimeError(f"HTTP {status}")
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def run(args: argparse.Namespace) -> None:
    ports = [gb.free_port(), gb.free_port()]
    backends = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench/gateway_bench.py"),
            "backends",
            "--ports",
            ",".join(map(str, ports)),
        ]
    )
    routes = Path(f"/tmp/hedge-gateway-cpu-{os.getpid()}.yaml")
    canary_routes = Path(f"/tmp/hedge-gateway-cpu-{os.getpid()}-canary.yaml")
    try:
        for p in ports:
            await gb.wait_http(p)
        urls = ", ".join(f"http://{gb.HOST}:{p}" for p in ports)
        routes.write_text(f"models:\n  - name: {gb.MODEL}\n    backends: [{urls}]\n")
        canary_routes.write_text(
            routes.read_text()
            + "    revisions: [stable, canary]\n    canary: {revision: canary, weight: 20}\n"
        )
        contenders: list[tuple[str, Path | None, Path]] = [("this", None, routes)]
        if args.compare_with:
            contenders.insert(0, ("compared", args.compare_with, routes))
        if args.canary:
            contenders.append(("canary", None, canary_routes))
        for _ in range(2):
            for name, src, routes_file in contenders:
                port = gb.free_port()
                cmd = [sys.executable, "-m", "hedge_core.cli", "gateway", "--routes"]
                cmd += [str(routes_file), "--port", str(port), "--admin-port", "-1"]
                cmd += ["--log-level", "WARNING"]
                if "--drain-delay" in gb.hedge_flags(src):
                    cmd += ["--drain-delay", "0"]
                gateway = subprocess.Popen(
                    cmd, cwd=src or ROOT, env={**os.environ, **gb.source_env(src)}
                )
                try:
                    await gb.wait_http(port, "/v1/models", proc=gateway)
                    for label, body in (
                        ("unstreamed", gb.CHAT),
                        ("streamed", {**gb.CHAT, "stream": True}),
                    ):
                        await load(port, 2000, 16, body)
                        before = cpu_seconds(gateway.pid)
                        started = time.perf_counter()
                        await load(port, args.requests, 16, body)
                        used = cpu_seconds(gateway.pid) - before
                        elapsed = time.perf_counter() - started
                        print(
                            f"  {name:9} {label:11} cpu/request "
                            f"{used / args.requests * 1e6:6.1f} us"
                            f"   ({args.requests / elapsed:6.0f} requests/s)",
                            flush=True,
                        )
                finally:
                    gateway.terminate()
                    gateway.wait(30)
    finally:
        backends.terminate()
        backends.wait(10)
        routes.unlink(missing_ok=True)
        canary_routes.unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument(
        "--compare-with", type=Path, metavar="DIR", help="also measure the gateway of this checkout"
    )
    parser.add_argument(
        "--canary",
        action="store_true",
        help="also measure this gateway splitting 20%% of the requests to a canary revision",
    )
    args = parser.parse_args()
    import uvloop

    print("# gateway CPU per request (one-token answers, 16 at a time)")
    uvloop.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
