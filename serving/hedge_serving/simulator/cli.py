"""`hedge simulator`: run one vLLM engine simulator until SIGTERM or SIGINT.

hedge simulator --host 127.0.0.1 --port 8000 --model llama-3-8b --ttft-ms 50 --itl-ms 15
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from hedge_serving.simulator.config import Faults, SimulatorConfig
from hedge_serving.simulator.server import start_simulator

log = logging.getLogger("hedge.simulator")

_DEFAULTS = SimulatorConfig()


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = "Run a vLLM engine simulator (OpenAI API, /health, /metrics)."
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one")
    parser.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="NAME",
        help="served model name; repeat for aliases, the first is primary (default hedge-sim)",
    )
    parser.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="NAME[=PATH]",
        help="LoRA adapter also served under NAME; repeatable",
    )
    parser.add_argument("--ttft-ms", type=float, default=_DEFAULTS.ttft_ms)
    parser.add_argument("--itl-ms", type=float, default=_DEFAULTS.itl_ms)
    parser.add_argument(
        "--prefill-ms-per-token",
        type=float,
        default=_DEFAULTS.prefill_ms_per_token,
        help="added to TTFT per prompt token missing from the prefix cache",
    )
    parser.add_argument("--max-concurrency", type=int, default=_DEFAULTS.max_concurrency)
    parser.add_argument("--max-model-len", type=int, default=_DEFAULTS.max_model_len)
    parser.add_argument("--default-max-tokens", type=int, default=_DEFAULTS.default_max_tokens)
    parser.add_argument(
        "--prefix-cache-blocks",
        type=int,
        default=_DEFAULTS.prefix_cache_blocks,
        help="prefix cache capacity in blocks of --block-size tokens; 0 disables it",
    )
    parser.add_argument("--block-size", type=int, default=_DEFAULTS.block_size)
    parser.add_argument("--embedding-dim", type=int, default=_DEFAULTS.embedding_dim)
    parser.add_argument("--startup-delay-ms", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    faults = parser.add_argument_group("faults (also settable at runtime: POST /_hedge/sim/faults)")
    faults.add_argument("--fail-health", action="store_true", help="GET /health answers 503")
    faults.add_argument("--error-rate", type=float, default=0.0, help="fraction answered 500")
    faults.add_argument("--error-status", type=int, default=500)
    faults.add_argument("--drop-after-chunks", type=int, default=None)
    faults.add_argument("--hang", action="store_true", help="admitted requests never progress")
    faults.add_argument("--slowdown", type=float, default=1.0, help="multiplies all latencies")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.add_argument("--log-level", default="INFO", help="default %(default)s")


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """The SimulatorConfig the parsed CLI arguments describe; ValueError when one is bad."""
    lora_modules = {}
    for spec in args.lora:
        name, _, path = spec.partition("=")
        lora_modules[name] = path or name
    return SimulatorConfig(
        served_model_names=args.models or list(_DEFAULTS.served_model_names),
        lora_modules=lora_modules,
        max_model_len=args.max_model_len,
        default_max_tokens=args.default_max_tokens,
        ttft_ms=args.ttft_ms,
        itl_ms=args.itl_ms,
        prefill_ms_per_token=args.prefill_ms_per_token,
        max_concurrency=args.max_concurrency,
        block_size=args.block_size,
        prefix_cache_blocks=args.prefix_cache_blocks,
        embedding_dim=args.embedding_dim,
        startup_delay_ms=args.startup_delay_ms,
        seed=args.seed,
        host=args.host,
        port=args.port,
        faults=Faults(
            fail_health=args.fail_health,
            error_rate=args.error_rate,
            error_status=args.error_status,
            drop_after_chunks=args.drop_after_chunks,
            hang=args.hang,
            slowdown=args.slowdown,
        ),
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=str(args.log_level).upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"hedge simulator: {exc}", file=sys.stderr)
        return 2
    access_log = logging.getLogger("hedge.simulator.access") if args.access_log else None
    return _run_loop(_serve(config, access_log))


def _run_loop(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.run(main)
    result: int = uvloop.run(main)
    return result


async def _serve(config: SimulatorConfig, access_log: logging.Logger | None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        running = await start_simulator(config, access_log=access_log)
    except OSError as exc:
        print(
            f"hedge simulator: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr
        )
        return 1
    # Printed (not only logged) so scripts starting it with --port 0 can read the address.
    print(f"hedge simulator serving {config.model_name} on {running.url}", flush=True)
    await stop.wait()
    log.info("stopping")
    await running.stop()
    return 0
