"""Every shipped accelerator profile against a node shaped like its platform's GPU node
(hedge_dev.platforms, written from the platforms' docs): without that node the
ModelDeployment says which nodes it is looking for; once the node joins, the real scheduler
puts the engine pod on it and the ModelDeployment becomes Ready.

Profiles are batched per platform (one namespace, one operator, the platform's nodes added
together) to keep the simulators few: one replica each, deleted once Ready.

The session cluster's own GFD nodes (gpu-a100-0, gpu-h100-0) match `nvidia-a100-80gb` and
`nvidia-h100-80gb`; while a batch runs, the labels a batch's profile selects on are taken
off those nodes (and put back afterwards), so "no such node" and "lands on the platform
node" hold for those two as for the rest.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hedge_core.kube import MERGE_PATCH, NotFound
from hedge_dev.cluster import DEFAULT_NODES
from hedge_dev.platforms import FIRST_SUBNET, all_platform_nodes, profile_nodes
from hedge_operator.placement.catalog import shipped_profiles
from hedge_operator.placement.profiles import AcceleratorProfile, matches

from .conftest import API, E2ECluster, Operator, condition, get_md, wait_for, wait_ready
from .test_placement import engine_pods, model_deployment, octet

PROFILES = shipped_profiles()
NODES = {node.name: node for node in all_platform_nodes()}
SUBNETS = {node.name: FIRST_SUBNET + i for i, node in enumerate(all_platform_nodes())}


def batches() -> dict[str, list[str]]:
    """Platform -> the shipped profiles whose node is on it (profiles without a shape are
    caught by tests/dev/test_platforms.py)."""
    out: dict[str, list[str]] = {}
    for name, node in profile_nodes().items():
        if name in PROFILES:
            out.setdefault(NODES[node].platform, []).append(name)
    return out


BATCHES = batches()


def md_name(profile: str) -> str:
    return f"md-{profile}"[:63]


@contextlib.contextmanager
def default_nodes_unmatched(cluster: E2ECluster, profiles: list[str]) -> Iterator[None]:
    """Takes off the session's default nodes the selector labels of any batch profile that
    matches them, and puts them back (the base cluster has an A100 and an H100 GFD node)."""
    taken: dict[str, dict[str, str]] = {}
    for spec in DEFAULT_NODES:
        labels = cluster.get(f"/api/v1/nodes/{spec.name}")["metadata"]["labels"]
        for name in profiles:
            profile = PROFILES[name]
            if matches(profile, labels):
                taken.setdefault(spec.name, {}).update(
                    {k: labels[k] for k in profile.node_selector if k in labels}
                )
    try:
        for node, labels in taken.items():
            patch_labels(cluster, node, dict.fromkeys(labels))
        yield
    finally:
        for node, labels in taken.items():
            patch_labels(cluster, node, labels)


def patch_labels(cluster: E2ECluster, node: str, labels: dict[str, Any]) -> None:
    body = {"metadata": {"labels": labels}}
    cluster.api.request("PATCH", f"/api/v1/nodes/{node}", body, content_type=MERGE_PATCH)


@contextlib.contextmanager
def platform_nodes_added(cluster: E2ECluster, names: list[str]) -> Iterator[None]:
    """Adds the kwok nodes (waits until each is Ready) and deletes them afterwards."""
    try:
        for name in names:
            manifest = NODES[name].spec(SUBNETS[name]).manifest(octet(cluster))
            cluster.api.request("POST", "/api/v1/nodes", manifest)
        for name in names:
            wait_for(
                lambda n=name: (
                    condition(cluster.get(f"/api/v1/nodes/{n}"), "Ready").get("status") == "True"
                ),
                30,
                f"node {name} Ready",
            )
        yield
    finally:
        for name in names:
            with contextlib.suppress(NotFound):
                cluster.api.request("DELETE", f"/api/v1/nodes/{name}")


def create_mds(cluster: E2ECluster, namespace: str, profiles: list[str]) -> None:
    cluster.apply(
        [
            model_deployment(md_name(p), replicas=1, resources={"gpus": 1, "gpuType": p})
            for p in profiles
        ],
        namespace,
    )


def delete_md(cluster: E2ECluster, namespace: str, profile: str) -> None:
    with contextlib.suppress(NotFound):
        cluster.api.request(
            "DELETE", f"{API}/namespaces/{namespace}/modeldeployments/{md_name(profile)}"
        )


def no_matching_nodes(
    cluster: E2ECluster, namespace: str, profile: AcceleratorProfile
) -> dict[str, Any] | None:
    ready = condition(get_md(cluster, namespace, md_name(profile.name)), "Ready")
    return ready if ready.get("reason") == "NoMatchingNodes" else None


@pytest.mark.parametrize("platform", sorted(BATCHES))
def test_without_its_node_a_profile_says_no_matching_nodes(
    cluster: E2ECluster, namespace: str, operator: Operator, platform: str
) -> None:
    """Before the platform's node exists: Ready=False, reason NoMatchingNodes, and the
    message names the selector (kubectl syntax) the pods are waiting for; within 30 s."""
    profiles = BATCHES[platform]
    with default_nodes_unmatched(cluster, profiles):
        created = time.monotonic()
        create_mds(cluster, namespace, profiles)
        for name in profiles:
            profile = PROFILES[name]
            ready = wait_for(  # 30 s from creation, for the last profile of the batch too
                lambda p=profile: no_matching_nodes(cluster, namespace, p),
                max(0.5, created + 30 - time.monotonic()),
                f"{md_name(name)} Ready=False NoMatchingNodes",
            )
            assert ready["status"] == "False"
            assert profile.selector_text() in ready["message"]
        for name in profiles:
            delete_md(cluster, namespace, name)


@pytest.mark.parametrize("platform", sorted(BATCHES))
def test_a_profile_lands_on_its_platform_node(
    cluster: E2ECluster, namespace: str, operator: Operator, platform: str
) -> None:
    """The ModelDeployments wait (no such node yet); once the platform's nodes join, each
    engine pod lands on its profile's node and the ModelDeployment becomes Ready."""
    profiles = BATCHES[platform]
    nodes = profile_nodes()
    with default_nodes_unmatched(cluster, profiles):
        create_mds(cluster, namespace, profiles)
        for name in profiles:
            assert not (get_md(cluster, namespace, md_name(name)).get("status") or {}).get(
                "readyReplicas"
            )
        with platform_nodes_added(cluster, [nodes[p] for p in profiles]):
            for name in profiles:
                wait_ready(cluster, namespace, md_name(name), replicas=1, timeout=90)
            placed = {
                p["metadata"]["labels"]["hedge.dev/model-deployment"]: p["spec"]["nodeName"]
                for p in engine_pods(cluster, namespace)
            }
            assert placed == {md_name(p): nodes[p] for p in profiles}
            for name in profiles:
                delete_md(cluster, namespace, name)
            wait_for(lambda: not engine_pods(cluster, namespace), 60, "engine pods gone")
