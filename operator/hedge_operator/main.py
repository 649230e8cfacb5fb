"""Does I/O: `hedge operator` runs the ModelDeployment operator (kopf) and its metrics
endpoint."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import kopf
import prometheus_client

from hedge_operator.config import (
    DEFAULT_GCS_DOWNLOADER_IMAGE,
    DEFAULT_S3_DOWNLOADER_IMAGE,
    NetworkPolicyConfig,
    OperatorConfig,
)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NAMESPACE",
        help="watch only this namespace (repeatable; globs allowed); default: all namespaces",
    )
    parser.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="kubeconfig file(s), separated like KUBECONFIG "
        "(default: in-cluster, then $KUBECONFIG, then ~/.kube/config)",
    )
    parser.add_argument(
        "--accelerator-profiles",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="YAML file of accelerator profiles (acceleratorProfiles: {name: profile}), "
        "merged over the shipped catalog by name (repeatable; later files win); see "
        "docs/placement.md",
    )
    parser.add_argument(
        "--replace-accelerator-profiles",
        action="store_true",
        help="use only the --accelerator-profiles files, not the shipped catalog",
    )
    parser.add_argument(
        "--default-accelerator-profile",
        metavar="NAME",
        help="the profile of GPU pods whose spec.resources.gpuType is unset "
        "(default: any nvidia.com/gpu)",
    )
    parser.add_argument(
        "--print-accelerator-profiles",
        action="store_true",
        help="print the profiles this configuration resolves to, as YAML, and exit",
    )
    parser.add_argument(
        "--gpu-types",
        type=Path,
        metavar="FILE",
        help="(before profiles) YAML mapping of GPU type -> nvidia.com/gpu.product label; "
        "each entry becomes a GPU-operator profile",
    )
    parser.add_argument(
        "--replace-gpu-types",
        action="store_true",
        help="with --gpu-types: use only that file, not the shipped catalog",
    )
    parser.add_argument(
        "--s3-downloader-image",
        default=DEFAULT_S3_DOWNLOADER_IMAGE,
        help="image of the init step that copies s3:// weights",
    )
    parser.add_argument(
        "--gcs-downloader-image",
        default=DEFAULT_GCS_DOWNLOADER_IMAGE,
        help="image of the init step that copies gs:// weights",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=9090, help="Prometheus metrics port (0 disables)"
    )
    parser.add_argument(
        "--health-port",
        type=int,
        default=8080,
        help="liveness endpoint http://BIND-ADDRESS:PORT/healthz (0 disables)",
    )
    parser.add_argument(
        "--peering",
        metavar="NAME",
        help="coordinate several operator replicas through this KopfPeering object; "
        "default: run standalone (one replica)",
    )
    parser.add_argument(
        "--peering-priority",
        type=int,
        default=None,
        help="this replica's peering priority; the highest runs, the others stand by. "
        "Default: random, so replicas never tie (kopf pauses every peer on a tie)",
    )
    parser.add_argument(
        "--bind-address",
        default="0.0.0.0",
        help="address of the metrics and liveness endpoints (default: all addresses)",
    )
    parser.add_argument(
        "--watch-timeout",
        type=int,
        default=300,
        help="seconds after which the API server closes each watch",
    )
    parser.add_argument(
        "--gateway-service",
        metavar="NAMESPACE/NAME",
        help="headless Service of the gateways' admin port: the autoscaler reads every gateway "
        "replica's /metrics through its EndpointSlices (the Helm chart sets this)",
    )
    parser.add_argument(
        "--gateway-metrics-url",
        action="append",
        default=[],
        metavar="URL",
        help="a gateway's /metrics URL to read as well (repeatable; gateways outside the "
        "cluster, the local demo)",
    )
    parser.add_argument(
        "--no-network-policy",
        action="store_true",
        help="do not write a NetworkPolicy per ModelDeployment (default: one that admits only "
        "the gateways, the operator and spec.serving.allowFrom to the engine pods)",
    )
    parser.add_argument(
        "--gateway-namespace",
        metavar="NAMESPACE",
        help="namespace of the gateway pods the engine NetworkPolicy admits (default: that of "
        "--gateway-service; neither: any namespace)",
    )
    parser.add_argument(
        "--gateway-pod-label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label of the gateway pods the engine NetworkPolicy admits (repeatable; "
        "default: app.kubernetes.io/component=gateway)",
    )
    parser.add_argument(
        "--operator-namespace",
        metavar="NAMESPACE",
        help="namespace of the operator pods the engine NetworkPolicy admits, for engine "
        "/metrics (default: $HEDGE_POD_NAMESPACE; unset: any namespace)",
    )
    parser.add_argument(
        "--operator-pod-label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label of the operator pods the engine NetworkPolicy admits (repeatable; "
        "default: app.kubernetes.io/component=operator)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _labels(flag: str, pairs: list[str]) -> dict[str, str] | None:
    if not pairs:
        return None
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} must be KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def network_policy_config(args: argparse.Namespace) -> NetworkPolicyConfig | None:
    if args.no_network_policy:
        return None
    gateway_ns = args.gateway_namespace
    if gateway_ns is None and args.gateway_service:
        gateway_ns = str(args.gateway_service).split("/", 1)[0]
    default = NetworkPolicyConfig()
    return NetworkPolicyConfig(
        gateway_namespace=gateway_ns,
        gateway_pod_labels=_labels("--gateway-pod-label", args.gateway_pod_label)
        or default.gateway_pod_labels,
        operator_namespace=args.operator_namespace or os.environ.get("HEDGE_POD_NAMESPACE") or None,
        operator_pod_labels=_labels("--operator-pod-label", args.operator_pod_label)
        or default.operator_pod_labels,
    )


def build_config(args: argparse.Namespace) -> OperatorConfig:
    config = OperatorConfig(
        s3_downloader_image=args.s3_downloader_image,
        gcs_downloader_image=args.gcs_downloader_image,
        network_policy=network_policy_config(args),
    )
    replace_table = args.replace_accelerator_profiles
    if args.gpu_types is not None:
        config = config.with_gpu_file(args.gpu_types, replace_table=args.replace_gpu_types)
        replace_table = replace_table and not args.replace_gpu_types
    for i, path in enumerate(args.accelerator_profiles):
        config = config.with_profiles_file(path, replace_table=replace_table and i == 0)
    config = replace(config, default_accelerator_profile=args.default_accelerator_profile)
    config.check()
    return config


def profiles_yaml(config: OperatorConfig) -> str:
    """The resolved profiles as the YAML file `--accelerator-profiles` reads."""
    import yaml

    from hedge_operator.placement.profiles import profile_json

    doc: dict[str, Any] = {
        "acceleratorProfiles": {
            name: profile_json(p) for name, p in sorted(config.accelerator_profiles.items())
        }
    }
    if config.default_accelerator_profile:
        doc["defaultAcceleratorProfile"] = config.default_accelerator_profile
    return str(yaml.safe_dump(doc, sort_keys=False, width=100))


def registry() -> kopf.OperatorRegistry:
    """kopf's registry with Hedge's handlers on it (importing `handlers` registers them)."""
    from hedge_operator import handlers

    assert handlers.MD  # the module is what registers; this keeps the import in use
    return kopf.get_default_registry()


async def serve(args: argparse.Namespace, config: OperatorConfig) -> int:
    from hedge_core.kube import KubeConfigError
    from hedge_operator.dataplane.discovery import DataPlane
    from hedge_operator.kube import Kube
    from hedge_operator.reconcile.reconciler import Reconciler
    from hedge_operator.runtime import Runtime
    from hedge_operator.standby import PeeringGate

    kube = Kube(args.kubeconfig)
    try:
        await kube.client.login()  # fail fast and clearly; kopf would retry for ever
    except KubeConfigError as exc:
        await kube.close()
        logging.error("%s", exc)
        return 2
    await check_crd(kube)
    priority = (
        args.peering_priority
        if args.peering_priority is not None
        else secrets.randbelow(1_000_000) + 1
    )
    # One identity for kopf's peering record and for the gate that reads it (kopf's own
    # default adds a timestamp we could not know).
    identity = os.environ.get("POD_ID") or (f"{kube.instance}/{os.getpid()}/{secrets.token_hex(3)}")
    kube.gate = PeeringGate(
        kube.client,
        identity=identity,
        priority=priority,
        peering=args.peering,
        namespaces=args.namespace,
    )
    rt = Runtime(
        config=config,
        kube=kube,
        reconciler=Reconciler(kube, config, nodes=kube),
        watch_timeout=args.watch_timeout,
        dataplane=DataPlane(
            kube, gateway_service=args.gateway_service, gateway_urls=args.gateway_metrics_url
        ),
        peering_priority=priority,
        gate=kube.gate,
    )
    liveness = (
        f"http://{args.bind_address}:{args.health_port}/healthz" if args.health_port else None
    )
    await kopf.operator(
        registry=registry(),
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=args.peering is None,
        peering_name=args.peering,
        identity=cast(Any, identity),
        liveness_endpoint=liveness,
        memo=kopf.Memo(hedge=rt),
    )
    return 0


async def check_crd(kube: Any) -> None:
    """Logs (and exports) a CRD that is not the one this binary was built for."""
    from hedge_core.kube import TRANSIENT, ApiError
    from hedge_operator import metrics
    from hedge_operator.crdcheck import skew

    try:
        problem = skew(await kube.get_crd())
    except (ApiError, *TRANSIENT) as exc:  # e.g. no RBAC to read CRDs: say so, run on
        logging.warning("could not read the ModelDeployment CRD: %s", exc)
        return
    logging.info("ModelDeployment CRD: %s", problem or "current")
    metrics.CRD_CURRENT.set(0 if problem else 1)
    if problem:
        logging.error("%s", problem)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # kopf logs every handler call (one per watch event of every child) at INFO; the
        # reconciler logs what it changes, so keep only kopf's warnings and errors.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        config = build_config(args)
        if args.gateway_service is not None:
            from hedge_operator.dataplane.discovery import parse_service

            args.gateway_service = parse_service(args.gateway_service)
        for url in args.gateway_metrics_url:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"--gateway-metrics-url must be an http(s) URL, got {url!r}")
    except (OSError, ValueError) as e:
        logging.error("%s", e)
        return 2
    if args.print_accelerator_profiles:
        print(profiles_yaml(config), end="")
        return 0
    if args.metrics_port:
        prometheus_client.start_http_server(args.metrics_port, addr=args.bind_address)
    return asyncio.run(serve(args, config))
