"""`hedge gateway`: run the OpenAI-compatible gateway.

From a static routes file (`--routes routes.yaml`) or, without one, from the
ModelDeployments and EndpointSlices of the Kubernetes cluster it runs in (or the one
KUBECONFIG points at). SIGTERM/SIGINT drain in-flight requests and streams, then exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

from hedge_serving.gateway import streams
from hedge_serving.gateway.admission import Quotas
from hedge_serving.gateway.app import GatewaySettings, start_gateway
from hedge_serving.gateway.auth import (
    ClientAuth,
    ClientKey,
    KeysConfigError,
    parse_keys_file,
)
from hedge_serving.gateway.bodies import BodyLimits
from hedge_serving.gateway.breaker import CircuitBreaker
from hedge_serving.gateway.config import RoutesFileError, load_routes
from hedge_serving.gateway.egress import DEFAULT_PROVIDER_HOSTS, EgressPolicy
from hedge_serving.gateway.fallback_limits import FallbackLimits
from hedge_serving.gateway.keys import LocalKeyStore, SecretCache
from hedge_serving.gateway.proxy import ProxySettings
from hedge_serving.gateway.routing import RoutingTable
from hedge_serving.gateway.tenants import split_keys

if TYPE_CHECKING:
    from hedge_serving.gateway.quota.store import QuotaStore

log = logging.getLogger("hedge.gateway")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0] if __doc__ else None
    src = parser.add_argument_group("routing source")
    src.add_argument(
        "--routes",
        metavar="FILE",
        help="static routes file (YAML); without it, "
        "routes come from Kubernetes ModelDeployments and EndpointSlices",
    )
    src.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    src.add_argument(
        "--namespace",
        action="append",
        metavar="NS",
        help="watch only this namespace (repeatable; default: all namespaces)",
    )
    net = parser.add_argument_group("listening")
    net.add_argument("--host", default="127.0.0.1", help="API address (default: %(default)s)")
    net.add_argument("--port", type=int, default=8080, help="API port (default: %(default)s)")
    net.add_argument("--admin-host", default=None, help="admin address (default: --host)")
    net.add_argument(
        "--admin-port",
        type=int,
        default=9090,
        help="port of /metrics, /healthz, /readyz; -1 disables (default: %(default)s)",
    )
    lim = parser.add_argument_group(
        "limits before authentication (docs/gateway.md, Limits; 0 turns a cap off)"
    )
    lim.add_argument(
        "--head-timeout",
        type=float,
        default=10.0,
        help="seconds for a request head to arrive whole, from the connection or the head's "
        "first byte; then 408 and close (default: %(default)s)",
    )
    lim.add_argument(
        "--max-head-bytes",
        type=int,
        default=32 * 1024,
        help="request line and headers together; over it, 431 and close (default: %(default)s)",
    )
    lim.add_argument(
        "--keepalive-timeout",
        type=float,
        default=75.0,
        help="seconds an idle keep-alive connection stays open (default: %(default)s)",
    )
    lim.add_argument(
        "--max-connections",
        type=int,
        default=4096,
        help="open client connections; more are closed at accept (default: %(default)s)",
    )
    lim.add_argument(
        "--max-connections-per-ip",
        type=int,
        default=512,
        help="open client connections from one address; raise it (or 0) behind a proxy that "
        "all clients share (default: %(default)s)",
    )
    lim.add_argument(
        "--max-json-depth",
        type=int,
        default=64,
        help="nesting of a request body's objects and arrays (default: %(default)s)",
    )
    lim.add_argument(
        "--max-json-containers",
        type=int,
        default=65_536,
        help="objects and arrays in a request body (default: %(default)s)",
    )
    lim.add_argument(
        "--max-json-values",
        type=int,
        default=1_048_576,
        help="array elements and object members in a request body (default: %(default)s)",
    )
    sec = parser.add_argument_group("client authentication (optional)")
    sec.add_argument(
        "--api-keys-env",
        metavar="VAR",
        help="environment variable holding accepted client keys (comma separated)",
    )
    sec.add_argument(
        "--api-keys-file",
        metavar="FILE",
        help="file of accepted client keys, one per line; `KEY ns1,ns2` binds a key to "
        "namespaces (it reaches only their models)",
    )
    sec.add_argument(
        "--api-keys-secret",
        metavar="NS/NAME",
        help="Kubernetes Secret whose values are the accepted client keys (watched); keys "
        "under a data key `namespace.<ns>` are bound to that namespace",
    )
    sec.add_argument(
        "--client-policies",
        action="store_true",
        help="authenticate the keys of ClientPolicies in the watched namespaces (their "
        "Secrets labelled hedge.dev/client-key=true) and enforce their limits; turns "
        "authentication on even while no policy exists yet",
    )
    quota = parser.add_argument_group("tenant limits (ClientPolicy)")
    quota.add_argument(
        "--quota-redis-url-env",
        metavar="VAR",
        help="environment variable holding the redis:// or rediss:// URL of the Redis or "
        "Valkey server the gateway replicas share their counts in; without it each replica "
        "counts alone against --quota-share of each limit",
    )
    quota.add_argument(
        "--quota-share",
        type=float,
        default=1.0,
        help="the fraction of each ClientPolicy limit this gateway admits on its own count "
        "(without the shared store, or while it is unreachable), e.g. 1/replicas "
        "(default: %(default)s)",
    )
    tune = parser.add_argument_group("tuning")
    tune.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024)
    tune.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="seconds to let in-flight requests finish on shutdown",
    )
    tune.add_argument(
        "--drain-delay",
        type=float,
        default=5.0,
        help="seconds to keep serving after SIGTERM, unready, while endpoints drop the pod "
        "(default: %(default)s)",
    )
    tune.add_argument(
        "--max-attempts",
        type=int,
        default=3,
        help="self-hosted backends tried per request before falling back",
    )
    tune.add_argument(
        "--connect-timeout",
        type=float,
        default=2.0,
        help="seconds to connect to a self-hosted backend",
    )
    hung = parser.add_argument_group("hung engines (self-hosted backends)")
    hung.add_argument(
        "--first-token-timeout",
        type=float,
        default=10.0,
        help="seconds to the first token of a short prompt before the engine counts as stalled "
        "(default: %(default)s)",
    )
    hung.add_argument(
        "--first-token-timeout-per-1k-tokens",
        type=float,
        default=1.0,
        help="seconds added per 1,000 prompt tokens, estimated from the request's size "
        "(default: %(default)s)",
    )
    hung.add_argument(
        "--first-token-timeout-per-queued",
        type=float,
        default=1.0,
        help="seconds added per request waiting in the engine's queue (default: %(default)s)",
    )
    hung.add_argument(
        "--idle-timeout",
        type=float,
        default=15.0,
        help="seconds of silence between tokens before a stream counts as stalled "
        "(default: %(default)s)",
    )
    hung.add_argument(
        "--response-head-timeout",
        type=float,
        default=30.0,
        help="seconds to the answer of endpoints that cannot stream (embeddings, pooling, "
        "tokenizer), plus the per-1k-tokens allowance (default: %(default)s)",
    )
    hung.add_argument(
        "--max-response-bytes",
        type=int,
        default=64 * 1024 * 1024,
        help="largest answer held in memory; larger ones are a 502 (default: %(default)s)",
    )
    hung.add_argument(
        "--max-reassembly-bytes",
        type=int,
        default=256 * 1024 * 1024,
        help="what all answers being re-assembled from streams hold together, logprobs "
        "weighted 6x; over it, a 502 (default: %(default)s)",
    )
    hung.add_argument(
        "--upstream-client",
        choices=("pooled", "aiohttp"),
        default="pooled",
        help="HTTP client for self-hosted backends: the lean pooled one, or aiohttp's "
        "(slower; kept to measure against) (default: %(default)s)",
    )
    hung.add_argument(
        "--upstream-max-connections",
        type=int,
        default=1024,
        help="open connections per backend; more requests wait for one (default: %(default)s)",
    )
    tune.add_argument(
        "--breaker-failures",
        type=int,
        default=3,
        help="consecutive failures that open a backend's circuit",
    )
    tune.add_argument(
        "--breaker-open-seconds",
        type=float,
        default=1.0,
        help="seconds an open circuit waits before its half-open probe",
    )
    tune.add_argument(
        "--affinity-prefix-chars",
        type=int,
        default=256,
        help="prompt characters hashed for prefix affinity; 0 disables",
    )
    tune.add_argument(
        "--affinity-slack",
        type=int,
        default=4,
        help="extra in-flight requests a preferred backend may carry",
    )
    tune.add_argument(
        "--engine-metrics-interval",
        type=float,
        default=1.0,
        help="seconds between scrapes of backends' vLLM /metrics; 0 disables",
    )
    out = parser.add_argument_group(
        "fallback providers: where calls may go and what they may spend (see docs/gateway.md)"
    )
    out.add_argument(
        "--egress-allow-host",
        action="append",
        metavar="[NAMESPACE=]PATTERN",
        help="a host pattern provider base URLs may name (repeat; NAMESPACE= limits it to "
        "that namespace's ModelDeployments); given, it replaces the default "
        f"{', '.join(DEFAULT_PROVIDER_HOSTS)}; '*' allows any public host",
    )
    out.add_argument(
        "--egress-allow-http",
        action="append",
        default=[],
        metavar="[NAMESPACE=]PATTERN",
        help="a host that may be reached over plain http:// (repeat; else https only)",
    )
    out.add_argument(
        "--egress-allow-cidr",
        action="append",
        default=[],
        metavar="CIDR",
        help="a non-public destination range provider calls may connect to (repeat; by "
        "default loopback, link-local, private, CGNAT and cluster ranges are refused)",
    )
    out.add_argument(
        "--cluster-cidr",
        action="append",
        default=[],
        metavar="CIDR",
        help="the cluster's pod or Service range, refused to provider calls (repeat)",
    )
    out.add_argument(
        "--fallback-max-n",
        type=int,
        default=FallbackLimits().max_n,
        help="largest `n` (and `best_of`) a fallback request may ask for; more is a 400 "
        "(default: %(default)s)",
    )
    out.add_argument(
        "--fallback-max-tokens",
        type=int,
        default=FallbackLimits().max_tokens,
        help="largest output-token limit a fallback request may ask for; more is a 400, "
        "none is this with a budget (default: %(default)s)",
    )
    out.add_argument(
        "--fallback-budget-share",
        type=float,
        default=1.0,
        help="the fraction of a fallback budget this gateway spends on its own count, "
        "e.g. 1/replicas (default: %(default)s)",
    )
    parser.add_argument("--log-level", default="INFO")


def settings_from_args(args: argparse.Namespace) -> GatewaySettings:
    """The settings the flags give; SystemExit naming a bad egress or fallback value."""
    try:
        egress = EgressPolicy.parse(
            args.egress_allow_host, args.egress_allow_http, args.egress_allow_cidr,
            args.cluster_cidr,
        )  # fmt: skip
    except ValueError as exc:
        raise SystemExit(f"hedge gateway: {exc}") from None
    if args.fallback_max_n < 1 or args.fallback_max_tokens < 1:
        raise SystemExit("hedge gateway: --fallback-max-n and --fallback-max-tokens must be >= 1")
    if not 0 < args.fallback_budget_share <= 1:
        raise SystemExit("hedge gateway: --fallback-budget-share must be in (0, 1]")
    return GatewaySettings(
        host=args.host,
        port=args.port,
        admin_host=args.admin_host,
        admin_port=None if args.admin_port < 0 else args.admin_port,
        max_body_bytes=args.max_body_bytes,
        head_timeout_s=args.head_timeout,
        max_head_bytes=args.max_head_bytes,
        keepalive_timeout_s=args.keepalive_timeout,
        max_connections=args.max_connections,
        max_connections_per_ip=args.max_connections_per_ip,
        body_limits=BodyLimits(
            max_depth=args.max_json_depth,
            max_containers=args.max_json_containers,
            max_values=args.max_json_values,
        ),
        drain_timeout_s=args.drain_timeout,
        drain_delay_s=args.drain_delay,
        upstream_max_conns=args.upstream_max_connections,
        upstream_client=args.upstream_client,
        breaker_failures=args.breaker_failures,
        breaker_open_s=args.breaker_open_seconds,
        affinity_slack=args.affinity_slack,
        engine_metrics_interval_s=args.engine_metrics_interval,
        proxy=ProxySettings(
            max_attempts=max(1, args.max_attempts),
            connect_timeout_s=args.connect_timeout,
            affinity_prefix_chars=args.affinity_prefix_chars,
            first_token_timeout_s=args.first_token_timeout,
            first_token_timeout_per_1k_tokens_s=args.first_token_timeout_per_1k_tokens,
            first_token_timeout_per_queued_s=args.first_token_timeout_per_queued,
            idle_timeout_s=args.idle_timeout,
            response_head_timeout_s=args.response_head_timeout,
            max_response_bytes=args.max_response_bytes,
            egress=egress,
            fallback_limits=FallbackLimits(args.fallback_max_n, args.fallback_max_tokens),
            fallback_budget_share=args.fallback_budget_share,
        ),
    )


def _client_keys(args: argparse.Namespace) -> list[ClientKey]:
    keys: list[ClientKey] = []
    if args.api_keys_env:
        keys += [(k, None) for k in split_keys(os.environ.get(args.api_keys_env, ""))]
        if not keys:
            raise SystemExit(f"hedge gateway: ${args.api_keys_env} holds no API keys")
    if args.api_keys_file:
        with open(args.api_keys_file, encoding="utf-8") as f:
            try:
                keys += parse_keys_file(f.read(), args.api_keys_file)
            except KeysConfigError as exc:
                raise SystemExit(f"hedge gateway: {exc}") from None
    return keys


def _quota_store(args: argparse.Namespace) -> QuotaStore:
    """The shared Redis store when a URL is given (its variable must hold one), else this
    gateway's own count against its share."""
    from hedge_serving.gateway.quota.store import LocalStore, RedisStore

    if not args.quota_redis_url_env:
        return LocalStore(share=args.quota_share)
    url = os.environ.get(args.quota_redis_url_env, "").strip()
    if not url:
        raise SystemExit(f"hedge gateway: ${args.quota_redis_url_env} holds no Redis URL")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        # Never echo the value: it may carry a password.
        raise SystemExit(
            f"hedge gateway: ${args.quota_redis_url_env} is not a redis://, rediss:// or "
            "unix:// URL"
        )
    return RedisStore(url, share=args.quota_share)


async def _serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    streams.GATEWAY_HELD.limit = args.max_reassembly_bytes  # one per process
    table = RoutingTable(lambda: CircuitBreaker(settings.breaker_failures, settings.breaker_open_s))
    if not 0 < args.quota_share <= 1:
        raise SystemExit("hedge gateway: --quota-share must be in (0, 1]")
    auth = ClientAuth(
        _client_keys(args), required=bool(args.api_keys_secret or args.client_policies)
    )
    quotas = Quotas(_quota_store(args))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)

    if args.routes:
        if args.api_keys_secret or args.client_policies:
            print(
                "hedge gateway: --api-keys-secret and --client-policies need Kubernetes "
                "discovery, not --routes",
                file=sys.stderr,
            )
            return 2
        try:
            table.replace(load_routes(args.routes))
        except RoutesFileError as exc:
            print(f"hedge gateway: {exc}", file=sys.stderr)
            return 2
        running = await start_gateway(
            table, settings, keys=LocalKeyStore(), auth=auth, quotas=quotas
        )
        watcher = None
    else:
        from hedge_core.kube import Kube, KubeConfigError
        from hedge_serving.gateway.discovery import KubernetesDiscovery

        secrets = SecretCache()
        kube = Kube(args.kubeconfig, user_agent="hedge-gateway")
        try:
            await kube.login()
            watcher = KubernetesDiscovery(
                table,
                secrets,
                kube,
                namespaces=args.namespace,
                client_keys_secret=args.api_keys_secret,
                auth=auth,
                client_policies=args.client_policies,
            )
        except KubeConfigError as exc:
            await kube.close()
            print(f"hedge gateway: {exc} (or pass --routes FILE)", file=sys.stderr)
            return 2
        await watcher.start()
        running = await start_gateway(
            table, settings, keys=secrets, auth=auth, ready=watcher.synced, quotas=quotas
        )
    # Everything allocated so far lives as long as the process: keep it out of the cyclic
    # GC's scans, and collect young objects less often, which trims the latency tail.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 100)
    log.info(
        "gateway listening on http://%s:%d (admin port %s), %d model(s)",
        settings.host,
        running.port,
        running.admin_port,
        len(table.routes()),
    )
    await stop.wait()
    log.info(
        "stopping: unready, serving %.0fs more while endpoints update, then draining in-flight "
        "requests (up to %.0fs)",
        settings.drain_delay_s,
        settings.drain_timeout_s,
    )
    await running.stop()
    if watcher is not None:
        await watcher.stop()
        await watcher.kube.close()
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        import uvloop

        return int(uvloop.run(_serve(args)))
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(_serve(args))
