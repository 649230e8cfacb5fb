"""Does I/O (through the lister it is given): the nodes' labels and taints, listed only
while an engine pod cannot be scheduled (to say why: NoMatchingNodes, UntoleratedTaint
naming the taint) and kept a few seconds, so a burst of reconciles of unschedulable
ModelDeployments costs one list.

Without the RBAC to list nodes (a chart with rbac.create false, a locked-down install) the
diagnosis falls back to the scheduler's message alone; the refusal is remembered for a
minute rather than asked again on every reconcile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from hedge_core.kube import ApiError

log = logging.getLogger(__name__)

NodeFacts = Sequence[Mapping[str, Any]]


class NodeLister(Protocol):
    async def list_nodes(self) -> list[dict[str, Any]]: ...


class NodeCache:
    #: Seconds a listing is reused.
    TTL = 5.0
    #: Seconds before a refused (or failed) listing is tried again.
    REFUSED_TTL = 60.0

    def __init__(self, lister: NodeLister, clock: Callable[[], float] = time.monotonic) -> None:
        self._lister = lister
        self._clock = clock
        self._nodes: NodeFacts | None = None
        self._until = float("-inf")
        self._warned = False

    async def nodes(self) -> tuple[NodeFacts | None, int]:
        """Every node's `{labels, taints}` (None: not allowed or failing) and the API
        requests it took (0 from the cache)."""
        if self._clock() < self._until:
            return self._nodes, 0
        try:
            self._nodes = await self._lister.list_nodes()
            self._until = self._clock() + self.TTL
        except ApiError as e:
            if not self._warned:
                log.warning(
                    "cannot list nodes (%s): unschedulable engine pods are diagnosed from the "
                    "scheduler's message alone (grant list on nodes for exact reasons)",
                    e,
                )
                self._warned = True
            self._nodes = None
            self._until = self._clock() + self.REFUSED_TTL
        return self._nodes, 1
