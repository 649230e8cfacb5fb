"""Does I/O: one autoscaler tick of one ModelDeployment.

Feeds the data plane's latest reading and the model's pods into its `ModelScaler` (the pure
step), keeps the autoscaling metrics, and before a scale-down sets each ready pod's
pod-deletion-cost from its engine's queue, so the ReplicaSet controller removes the pod with
the least work first. Returns the status.autoscaling the reconciler must write now (it is
the one status writer), or None.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from hedge_core.api import ENGINE_PORT, ModelDeployment
from hedge_core.contracts import DEMAND_STATES
from hedge_operator import metrics
from hedge_operator.autoscaling.step import DELETION_COST, ModelScaler, deletion_costs, pods_of
from hedge_operator.dataplane.signals import Snapshot
from hedge_operator.provisioning.observed import PodSummary

log = logging.getLogger(__name__)

Key = tuple[str, str]


class PodAnnotator(Protocol):
    async def annotate_pod(
        self, namespace: str, name: str, annotations: Mapping[str, str]
    ) -> None: ...


async def tick(
    scaler: ModelScaler,
    md: ModelDeployment,
    key: Key,
    status: Mapping[str, Any],
    snapshot: Snapshot | None,
    pods: Sequence[PodSummary],
    kube: PodAnnotator,
    now: float,
) -> dict[str, Any] | None:
    """The autoscaler's decision; the status.autoscaling to write now, or None."""
    signals = snapshot.model(key) if snapshot is not None else None
    capacity = pods_of(pods)
    metrics.READY_REPLICAS.labels(*key).set(capacity.ready)
    step = scaler.step(
        md,
        status,
        signals,
        snapshot.gateways_failed if snapshot is not None else [],
        capacity,
        now,
    )
    decision = step.decision
    metrics.AUTOSCALE_DECISIONS.labels(decision.reason).inc()
    metrics.DESIRED_REPLICAS.labels(*key).set(decision.desired)
    if decision.demand is not None:
        metrics.DEMAND.labels(*key).set(decision.demand)
    if signals is not None and signals.demand is not None:
        for state in DEMAND_STATES:
            metrics.DEMAND_IN_FLIGHT.labels(*key, state).set(signals.by_state.get(state, 0.0))
    if not step.write:
        return None
    if step.scales_down and snapshot is not None:
        await set_deletion_costs(kube, key, pods, snapshot)
    return step.status


async def set_deletion_costs(
    kube: PodAnnotator, key: Key, pods: Sequence[PodSummary], snapshot: Snapshot
) -> None:
    """The ReplicaSet controller removes the pod with the lowest cost first: the one with
    the least work on its engine. Best effort: the scale-down goes on without it."""
    costs = deletion_costs(pods, snapshot.engines, ENGINE_PORT)
    results = await asyncio.gather(
        *(
            kube.annotate_pod(key[0], name, {DELETION_COST: str(cost)})
            for name, cost in costs.items()
        ),
        return_exceptions=True,
    )
    for name, result in zip(costs, results, strict=True):
        if isinstance(result, Exception):
            log.warning("%s/%s: could not set the deletion cost of pod %s: %s", *key, name, result)
