"""Does I/O: what the kopf handlers share, in kopf's memo as `memo.hedge`.

- `Indexes`: kopf's in-memory indexes of the ModelDeployments and their children, keyed by
  (namespace, name), so reconciles read nothing from the API server;
- `Nudger`: coalesces bursts of child events into one reconcile per ModelDeployment;
- `Runtime`: the reconciler, the data plane and the per-model loops (autoscaler, budget),
  and the sequencing of one autoscale tick.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from hedge_core.api import ModelDeployment, SpecError
from hedge_operator import metrics
from hedge_operator.autoscaling import loop as autoscaling_loop
from hedge_operator.autoscaling.step import ModelScaler
from hedge_operator.budget import loop as budget_loop
from hedge_operator.budget.windows import BudgetWindows
from hedge_operator.config import OperatorConfig
from hedge_operator.dataplane.discovery import DataPlane, engine_urls
from hedge_operator.dataplane.signals import RevisionStats, TenantTotals, tenant_totals
from hedge_operator.errors import RetryableError
from hedge_operator.kube import Kube
from hedge_operator.provisioning.names import Claim, claim_of
from hedge_operator.provisioning.observed import Observed, PodSummary
from hedge_operator.reconcile.reconciler import Outcome, Reconciler
from hedge_operator.rollout.convert import cumulative
from hedge_operator.standby import PeeringGate, Standby
from hedge_operator.tenants.usage import UsageWindows

log = logging.getLogger(__name__)

NUDGE_DELAY = 0.2
RETRY_DELAY = 5.0

Key = tuple[str, str]


@dataclass
class Indexes:
    """kopf's in-memory indexes, keyed by (namespace, ModelDeployment name)."""

    models: Mapping[Key, Any]
    deployments: Mapping[Key, Any]
    services: Mapping[Key, Any]
    pdbs: Mapping[Key, Any]
    pvcs: Mapping[Key, Any]
    pods: Mapping[Key, Any]
    netpols: Mapping[Key, Any] = field(default_factory=dict)
    _claims: dict[Key, tuple[str, Claim | None]] = field(default_factory=dict)

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> Indexes:
        return cls(
            models=kwargs["hedge_models"],
            deployments=kwargs["hedge_deployments"],
            services=kwargs["hedge_services"],
            pdbs=kwargs["hedge_pdbs"],
            pvcs=kwargs["hedge_pvcs"],
            pods=kwargs["hedge_pods"],
            netpols=kwargs.get("hedge_netpols", {}),
        )

    def observed(self, key: Key) -> Observed:
        def by_name(index: Mapping[Key, Any]) -> dict[str, Mapping[str, Any]]:
            return {str(b["metadata"]["name"]): b for b in index.get(key, ())}

        pods: list[PodSummary] = list(self.pods.get(key, ()))
        return Observed(
            deployments=by_name(self.deployments),
            services=by_name(self.services),
            pdbs=by_name(self.pdbs),
            pvcs=by_name(self.pvcs),
            pods=pods,
            netpols=by_name(self.netpols),
        )

    def claims(self) -> list[Claim]:
        """The model names each ModelDeployment claims, parsed once per resourceVersion."""
        out: list[Claim] = []
        for key, bodies in self.models.items():
            body = next(iter(bodies), None)
            if body is None:
                continue
            version = str((body.get("metadata") or {}).get("resourceVersion", ""))
            cached = self._claims.get(key)
            if cached is None or cached[0] != version:
                cached = self._claims[key] = (version, claim_of(body))
            if cached[1] is not None:
                out.append(cached[1])
        for key in [k for k in self._claims if k not in self.models]:
            del self._claims[key]
        return out

    def sharing_names(self, key: Key, body: Mapping[str, Any]) -> list[Key]:
        """Other ModelDeployments claiming a name `body` claims (their conflicts may change)."""
        mine = claim_of(body, deleting=True)
        if mine is None:
            return []
        return [
            (c.namespace, c.name)
            for c in self.claims()
            if (c.namespace, c.name) != key and c.names & mine.names
        ]

    def model(self, key: Key) -> Mapping[str, Any] | None:
        return next(iter(self.models.get(key, ())), None)


class Nudger:
    """Coalesces bursts of child events into one reconcile per ModelDeployment.

    At most one reconcile is pending per key, due at the earliest time any nudge asked for:
    a long re-check (e.g. waiting out an in-flight write) must not swallow the short nudge of
    a child event that arrives meanwhile, or status would lag by the re-check's delay.
    """

    def __init__(
        self,
        run: Callable[[Key], Awaitable[None]],
        delay: float = NUDGE_DELAY,
        may_run: Callable[[], bool] = lambda: True,
    ):
        self._run = run
        self._may_run = may_run
        self._delay = delay
        self._pending: dict[Key, tuple[float, asyncio.Task[None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def nudge(self, key: Key, delay: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        wait = self._delay if delay is None else delay
        due = loop.time() + wait
        pending = self._pending.get(key)
        if pending is not None:
            if pending[0] <= due:
                return
            pending[1].cancel()  # the new nudge is due sooner: replace the later one
        task = loop.create_task(self._later(key, wait))
        self._pending[key] = (due, task)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _later(self, key: Key, delay: float) -> None:
        await asyncio.sleep(delay)
        self._pending.pop(key, None)  # events from now on schedule another round
        if not self._may_run():
            # A peering standby: kopf paused, and re-lists and reconciles all on resume.
            log.debug("standby: dropped the nudge of %s/%s", *key)
            return
        try:
            await self._run(key)
        except Standby as e:
            log.info("reconcile of %s/%s stopped: %s", *key, e)  # kopf resumes it
        except RetryableError as e:
            log.warning("reconcile of %s/%s will be retried: %s", *key, e)
            self.nudge(key, RETRY_DELAY)
        except Exception:
            log.exception("reconcile of %s/%s failed", *key)
            self.nudge(key, RETRY_DELAY)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass
class Runtime:
    """Everything the handlers share; lives in kopf's memo as `memo.hedge`."""

    config: OperatorConfig
    kube: Kube
    reconciler: Reconciler
    watch_timeout: int = 300
    peering_priority: int = 0
    indexes: Indexes | None = None
    #: The gateways' and engines' /metrics (one scraper for the autoscaler and rollouts).
    dataplane: DataPlane | None = None
    #: The autoscaler's windows and the fallback budget's, per ModelDeployment uid.
    scalers: dict[str, ModelScaler] = field(default_factory=dict)
    budgets: dict[str, BudgetWindows] = field(default_factory=dict)
    #: Each ClientPolicy's usage windows, per uid.
    usages: dict[str, UsageWindows] = field(default_factory=dict)
    #: Closed while this replica is a peering standby (kube.Kube refuses writes then too).
    gate: PeeringGate | None = None
    nudger: Nudger = field(init=False)

    def __post_init__(self) -> None:
        gate = self.gate
        self.nudger = Nudger(
            self.reconcile_key, may_run=gate.is_open if gate is not None else lambda: True
        )
        if self.dataplane is not None:
            self.dataplane.set_engines(self.autoscaled_engines)
            self.reconciler.revision_source = self.revision_numbers

    async def revision_numbers(self, namespace: str, name: str) -> dict[str, RevisionStats] | None:
        """Each revision's numbers summed over the gateways, for the canary analysis (None:
        no gateway to read, or none could be read: the analysis waits)."""
        plane = self.dataplane
        if plane is None or not plane.configured:
            return None
        snapshot = await plane.snapshot()
        if snapshot is None or not snapshot.gateways_read:
            return None
        return cumulative(snapshot.counters, namespace, name)

    async def tenant_totals(self) -> dict[str, TenantTotals] | None:
        """Every tenant's counters summed over the gateways, for status.usage (None: no
        gateway to read, or none could be read: usage is left as it is)."""
        plane = self.dataplane
        if plane is None or not plane.configured:
            return None
        snapshot = await plane.snapshot()
        if snapshot is None or not snapshot.gateways_read:
            return None
        return tenant_totals(snapshot.counters)

    def usage_windows(self, uid: str) -> UsageWindows:
        return self.usages.setdefault(uid, UsageWindows.new())

    def autoscaled_engines(self) -> dict[Key, list[str]]:
        """Engine /metrics of the models that autoscale (the only ones that need them)."""
        if self.indexes is None:
            return {}
        wanted = [
            key
            for key, bodies in self.indexes.models.items()
            for body in bodies
            if (body.get("spec") or {}).get("autoscaling")
        ]
        return engine_urls(self.indexes.pods, wanted)

    async def reconcile_key(self, key: Key) -> None:
        """A reconcile triggered by a child (or by our own status write settling)."""
        if self.indexes is None:
            return
        body = self.indexes.model(key)
        if body is None:
            return
        outcome = await self.reconciler.reconcile(
            body, self.indexes.observed(key), trigger="child", write_status=True
        )
        self.recheck(key, outcome)

    async def tick(self, key: Key, body: Mapping[str, Any]) -> None:
        """One tick of the model's autoscaler and fallback budget: read the data plane,
        decide, and hand what status must now say to the reconciler (which sizes the
        Deployments from it and writes it)."""
        if self.indexes is None:
            return
        try:
            md = ModelDeployment.from_body(body)
        except SpecError:
            return  # the reconcile reports it
        budget = md.spec.fallback.budget if md.spec.fallback is not None else None
        if md.spec.autoscaling is None and self.scalers.pop(md.uid, None) is not None:
            metrics.forget_model(*key)
        if budget is None:
            self.budgets.pop(md.uid, None)
        if md.spec.autoscaling is None and budget is None:
            return
        plane = self.dataplane
        snapshot = await plane.snapshot() if plane is not None and plane.configured else None
        status = body.get("status") or {}
        autoscaling = None
        if md.spec.autoscaling is not None:
            autoscaling = await autoscaling_loop.tick(
                self.scalers.setdefault(md.uid, ModelScaler()),
                md,
                key,
                status,
                snapshot,
                list(self.indexes.pods.get(key, ())),
                self.kube,
                time.time(),
            )
        fallback_budget = None
        if budget is not None:
            windows = self.budgets.setdefault(md.uid, BudgetWindows.new())
            fallback_budget = budget_loop.tick(windows, budget, key, status, snapshot, time.time())
        if autoscaling is None and fallback_budget is None:
            return
        outcome = await self.reconciler.reconcile(
            body,
            self.indexes.observed(key),
            trigger="autoscale",
            write_status=True,
            autoscaling=autoscaling,
            fallback_budget=fallback_budget,
        )
        self.recheck(key, outcome)

    def forget(self, uid: str, key: Key) -> None:
        self.reconciler.forget(uid)
        self.scalers.pop(uid, None)
        self.budgets.pop(uid, None)
        metrics.forget_model(*key)

    def recheck(self, key: Key, outcome: Outcome) -> None:
        if outcome.recheck_after is not None:
            self.nudger.nudge(key, outcome.recheck_after)


def runtime(memo: Any, kwargs: Mapping[str, Any] | None = None) -> Runtime:
    rt = cast(Runtime, memo["hedge"])
    if kwargs is not None and rt.indexes is None and "hedge_models" in kwargs:
        indexes = rt.indexes = Indexes.from_kwargs(kwargs)
        rt.reconciler.claims = indexes.claims
    return rt
