"""Pure: why no node takes an engine pod, said in the accelerator profile's terms.

The kube-scheduler's Unschedulable message counts the nodes per cause (`0/5 nodes are
available: 2 Insufficient nvidia.com/gpu, 3 node(s) didn't match Pod's node
affinity/selector. preemption: ...`). "InsufficientGPUs" for every such pod sent people
to buy GPUs when no node carried the profile's labels, or a taint was not tolerated; the
counts say which it is. The scheduler's own message is always kept in the condition.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hedge_operator.placement.profiles import AcceleratorProfile, matches, tolerates

NO_MATCHING_NODES = "NoMatchingNodes"
INSUFFICIENT_GPUS = "InsufficientGPUs"
UNTOLERATED_TAINT = "UntoleratedTaint"
PRIORITY_CLASS_NOT_FOUND = "PriorityClassNotFound"
SERVICE_ACCOUNT_NOT_FOUND = "ServiceAccountNotFound"

#: `0/5 nodes are available: <count> <cause>, <count> <cause>.` (before `preemption:`).
_HEAD = re.compile(r"(\d+)/(\d+) nodes are available:\s*(.*)", re.DOTALL)
_ITEM = re.compile(r"^(\d+)\s+(.*)$")
_SELECTOR = "didn't match Pod's node affinity/selector"
_TAINT = re.compile(r"had untolerated taint(?:\(s\))?\s*(\{[^}]*\})?")
_INSUFFICIENT = re.compile(r"^Insufficient (\S+)$")


@dataclass(frozen=True)
class SchedulingCauses:
    """The scheduler's per-node verdicts: how many nodes failed for which cause."""

    total: int = 0
    selector: int = 0
    #: Extended or core resource name -> nodes short of it.
    insufficient: Mapping[str, int] = field(default_factory=dict)
    #: Nodes refusing for a taint, and the taints the scheduler named (`{key: value}`).
    tainted: int = 0
    taints: tuple[str, ...] = ()
    other: tuple[str, ...] = ()


def parse_unschedulable(message: str) -> SchedulingCauses | None:
    """The counts of the scheduler's first verdict (not the preemption one); None when the
    message is not in the scheduler's shape."""
    head = _HEAD.search(message)
    if head is None:
        return None
    # The verdicts end at the first ". " (then DRA's and preemption's notes follow).
    body = head.group(3).split(". ", 1)[0].split(" preemption:", 1)[0].strip().rstrip(".")
    selector, tainted = 0, 0
    insufficient: dict[str, int] = {}
    taints: list[str] = []
    other: list[str] = []
    for part in _split_items(body):
        item = _ITEM.match(part)
        if item is None:
            continue
        count, cause = int(item.group(1)), item.group(2).strip()
        short = _INSUFFICIENT.match(cause)
        taint = _TAINT.search(cause)
        if _SELECTOR in cause:
            selector += count
        elif short:
            insufficient[short.group(1)] = insufficient.get(short.group(1), 0) + count
        elif taint:
            tainted += count
            if taint.group(1):
                taints.append(_taint_text(taint.group(1)))
        else:
            other.append(f"{count} {cause}")
    return SchedulingCauses(
        int(head.group(2)), selector, insufficient, tainted, tuple(taints), tuple(other)
    )


def _split_items(body: str) -> list[str]:
    """`a, b {k: v}, c` split on the commas outside braces (a taint value is in braces)."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            items.append(body[start:i].strip())
            start = i + 1
    items.append(body[start:].strip())
    return [i for i in items if i]


def _taint_text(braced: str) -> str:
    """`{sku: gpu}` as kubectl writes a taint's key and value: `sku=gpu`."""
    key, _, value = braced.strip("{}").partition(":")
    value = value.strip()
    return f"{key.strip()}={value}" if value else key.strip()


@dataclass(frozen=True)
class Diagnosis:
    reason: str
    #: What is wrong and what to do, without the scheduler's message (the caller adds it).
    summary: str


@dataclass(frozen=True)
class NodeCensus:
    """What the cluster's nodes say about the pods of one profile (when the operator may
    list nodes): the scheduler's message counts each node once, by the first filter it
    failed (taints before labels), so only the nodes themselves tell "no node has the
    labels" from "the labelled nodes carry a taint", and which taint."""

    #: Nodes whose labels satisfy the profile's selector/affinity and spec.engine.pod's.
    matching: int
    #: Taints (`key=value:effect`) of those nodes the pods do not tolerate.
    untolerated: tuple[str, ...] = ()


def node_census(
    nodes: Iterable[Mapping[str, Any]],
    profile: AcceleratorProfile,
    pod_node_selector: Mapping[str, str],
    pod_node_affinity: Mapping[str, Any] | None,
    tolerations: Sequence[Mapping[str, Any]],
) -> NodeCensus:
    """Count the nodes the pods could go to by labels, and the taints that keep them off.
    `nodes`: `{"labels": {...}, "taints": [...]}` per node (Kube.list_nodes)."""
    spec = AcceleratorProfile(
        name="", node_selector=pod_node_selector, node_affinity=pod_node_affinity
    )
    matching = 0
    untolerated: set[str] = set()
    for node in nodes:
        labels = node.get("labels") or {}
        if not (matches(profile, labels) and matches(spec, labels)):
            continue
        matching += 1
        for taint in node.get("taints") or []:
            blocking = taint.get("effect") in ("NoSchedule", "NoExecute")
            if blocking and not tolerates(tolerations, taint):
                untolerated.add(_taint_name(taint))
    return NodeCensus(matching, tuple(sorted(untolerated)))


def _taint_name(taint: Mapping[str, Any]) -> str:
    """A taint as kubectl taint writes it: `key=value:effect` (`key:effect` without one)."""
    value = f"={taint['value']}" if taint.get("value") else ""
    return f"{taint.get('key', '')}{value}:{taint.get('effect', '')}"


def diagnose(
    causes: SchedulingCauses,
    profile: AcceleratorProfile,
    pod_selector: str = "",
    census: NodeCensus | None = None,
) -> Diagnosis | None:
    """The most useful reason: nodes with the labels exist but are full (InsufficientGPUs)
    before a taint, before no matching node at all; None: a cause Hedge has no advice for
    (the raw Unschedulable stays). `pod_selector`: spec.engine.pod's selector/affinity."""
    named = f"accelerator profile {profile.name!r}" if profile.name else "the default profile"
    wanted = profile.selector_text() + (f", and {pod_selector}" if pod_selector else "")
    short = causes.insufficient.get(profile.resource, 0)
    others = _others(causes, profile.resource)
    if census is not None:
        found = _by_census(census, named, wanted, short)
        if found is not None:
            return found
    if short:
        return Diagnosis(INSUFFICIENT_GPUS, f"{short} node(s) match but lack {profile.resource}")
    if causes.tainted:
        taints = ", ".join(causes.taints) or "not named by the scheduler"
        return Diagnosis(
            UNTOLERATED_TAINT,
            f"{causes.tainted} node(s) have a taint the pods do not tolerate ({taints}); "
            "the scheduler checks taints before labels, so whether they carry the labels of "
            f"{named} ({wanted}) is not known from its message: if they are its nodes, "
            "tolerate the taint in spec.engine.pod.tolerations or the profile's tolerations"
            + (f"; the other nodes: {others}" if others else ""),
        )
    if causes.total and causes.selector == causes.total:
        return Diagnosis(NO_MATCHING_NODES, f"no node matches {named} ({wanted})")
    return None


def _by_census(census: NodeCensus, named: str, wanted: str, short: int) -> Diagnosis | None:
    """What the nodes themselves show: none with the labels, or the labelled ones tainted;
    None: they match and tolerate (the scheduler's counts say the rest)."""
    if census.matching == 0:
        return Diagnosis(NO_MATCHING_NODES, f"no node matches {named} ({wanted})")
    if census.untolerated and not short:
        return Diagnosis(
            UNTOLERATED_TAINT,
            f"{census.matching} node(s) match {named} ({wanted}) but have taint(s) the pods "
            f"do not tolerate: {', '.join(census.untolerated)}; tolerate them in "
            "spec.engine.pod.tolerations or the profile's tolerations",
        )
    return None


def _others(causes: SchedulingCauses, resource: str) -> str:
    """The causes besides the resource and taint, said for completeness."""
    parts = [f"{n} lack {r}" for r, n in sorted(causes.insufficient.items()) if r != resource]
    if causes.selector:
        parts.append(f"{causes.selector} do not match the node selector/affinity")
    return ", ".join(parts + list(causes.other))


#: The API server's admission refusals of a pod, as a ReplicaSet's FailedCreate says them.
_REFUSALS = (
    (
        re.compile(r"no PriorityClass with name (\S+) was found"),
        PRIORITY_CLASS_NOT_FOUND,
        "priority class {0!r} (spec.engine.pod.priorityClassName) does not exist",
    ),
    (
        re.compile(r'serviceaccount "([^"]+)" not found'),
        SERVICE_ACCOUNT_NOT_FOUND,
        "service account {0!r} (spec.engine.pod.serviceAccountName) does not exist",
    ),
)


def creation_refusal(message: str) -> Diagnosis | None:
    """A ReplicaFailure message naming a missing priority class or service account."""
    for pattern, reason, text in _REFUSALS:
        found = pattern.search(message)
        if found:
            return Diagnosis(reason, text.format(found.group(1)))
    return None
