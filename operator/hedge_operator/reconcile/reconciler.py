"""Does I/O: one reconcile of one ModelDeployment, as a sequence of the capabilities' steps.

    parse        hedge_core.api                    the spec, or InvalidSpec
    validate     provisioning.validation           what the spec cannot do here
    Secrets      provisioning.secrets              every referenced key exists (cached)
    rollout      rollout.driver                    pods per revision, weight, status.rollout
    plan         provisioning.plan                 desired children vs observed -> actions
    write        provisioning.executor             the actions, concurrently
    status       reconcile.status                  conditions, counts, printer columns
    events       events                            every capability's Events, deduplicated
    status write reconcile.writer                  guarded by resourceVersion, 409 -> again

The decisions are the capabilities' pure functions; this module only sequences them and
performs the writes through a `KubeAPI` (kube.Kube in the operator, a fake in tests).
Reconciles of the same object are serialised; different objects run concurrently. While a
rollout is under way the object is reconciled again every `ROLLOUT_TICK` seconds
(`Outcome.recheck_after`), which is how step pauses end, waits time out and the tripwire is
checked.

Status has one writer: `reconcile(..., write_status=True)` writes it inside the object's
lock (see reconcile.writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from hedge_core.api import ModelDeployment, SpecError
from hedge_core.clock import utc_now
from hedge_core.kube import TRANSIENT
from hedge_operator import metrics
from hedge_operator.autoscaling import step as autoscaling
from hedge_operator.budget import windows as budget
from hedge_operator.config import OperatorConfig
from hedge_operator.errors import RetryableError
from hedge_operator.events import WARNING, Dedup, Event
from hedge_operator.placement.diagnosis import NodeCensus, node_census
from hedge_operator.placement.nodes import NodeCache, NodeLister
from hedge_operator.placement.pod import tolerations as placement_tolerations
from hedge_operator.placement.profiles import AcceleratorProfile
from hedge_operator.provisioning.builders import accelerator_profile, revision_of
from hedge_operator.provisioning.executor import ChildWriter, Executor
from hedge_operator.provisioning.names import Claim, claim_of, conflict
from hedge_operator.provisioning.observed import Observed, owned_only
from hedge_operator.provisioning.plan import Action, desired_children, drift_events, plan
from hedge_operator.provisioning.secrets import SecretKeys, SecretReader
from hedge_operator.provisioning.validation import (
    INVALID_SPEC,
    Problem,
    check_secrets,
    missing_pull_secrets,
    validate_static,
)
from hedge_operator.reconcile import writer
from hedge_operator.reconcile.outcome import Outcome
from hedge_operator.reconcile.status import (
    ObjectRef,
    PlacementFacts,
    compute_status,
    status_patch,
    transition_events,
)
from hedge_operator.reconcile.writer import ATTEMPTS, StatusAPI, Versions
from hedge_operator.rollout.driver import Move, RevisionSource, RolloutDriver

__all__ = ["KubeAPI", "Outcome", "Reconciler", "RetryableError"]

log = logging.getLogger(__name__)


class KubeAPI(ChildWriter, SecretReader, StatusAPI, Protocol):
    async def post_event(
        self, involved: Mapping[str, Any], type_: str, reason: str, message: str
    ) -> None: ...


@dataclass
class _Memory:
    """What the reconciler remembers of one ModelDeployment between reconciles."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    events: Dedup = field(default_factory=Dedup)
    versions: Versions = field(default_factory=Versions)
    #: The autoscaler's latest status.autoscaling: every reconcile sizes the Deployments
    #: from it and writes it, whatever triggered the reconcile.
    autoscaling: dict[str, Any] | None = None
    #: The budget windows' newest status.fallbackBudget, written the same way.
    fallback_budget: dict[str, Any] | None = None


class Reconciler:
    #: Seconds a write is trusted before the watch must show it.
    IN_FLIGHT_TTL = Executor.IN_FLIGHT_TTL
    #: Seconds before Secrets are looked up again (found / missing).
    SECRETS_FOUND_TTL = SecretKeys.FOUND_TTL
    SECRETS_MISSING_TTL = SecretKeys.MISSING_TTL
    #: The same Event is not posted twice within this many seconds.
    EVENT_DEDUP = 60.0
    #: Status writes tried per reconcile when the object keeps changing underneath.
    STATUS_ATTEMPTS = ATTEMPTS
    #: Seconds between reconciles while a rollout is under way (steps end, waits time out and
    #: the tripwire is checked on this beat).
    ROLLOUT_TICK = 1.0

    def __init__(
        self,
        kube: KubeAPI,
        config: OperatorConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], str] = utc_now,
        wall: Callable[[], float] = time.time,
        revisions: RevisionSource | None = None,
        nodes: NodeLister | None = None,
    ) -> None:
        self.kube = kube
        self.config = config
        self._clock = clock
        self._now = now
        self._memory: dict[str, _Memory] = {}
        self._secrets = SecretKeys(kube, clock)
        #: Node labels and taints for the diagnosis of unschedulable pods (None: the
        #: scheduler's message alone).
        self._nodes = NodeCache(nodes, clock) if nodes is not None else None
        self._executor = Executor(kube, clock)
        self._rollouts = RolloutDriver(wall, now, revisions)
        #: The model names every ModelDeployment in the operator's scope claims (the
        #: handlers read them from kopf's index), for name conflicts between namespaces.
        self.claims: Callable[[], Iterable[Claim]] = tuple

    @property
    def revision_source(self) -> RevisionSource | None:
        """Where the canary analysis reads each revision's numbers (the data plane)."""
        return self._rollouts.source

    @revision_source.setter
    def revision_source(self, source: RevisionSource | None) -> None:
        self._rollouts.source = source

    def forget(self, uid: str) -> None:
        self._memory.pop(uid, None)
        self._secrets.forget(uid)
        self._executor.forget(uid)
        self._rollouts.forget(uid)

    def _mem(self, uid: str) -> _Memory:
        mem = self._memory.get(uid)
        if mem is None:
            mem = self._memory[uid] = _Memory(events=Dedup(self.EVENT_DEDUP))
        return mem

    async def reconcile(
        self,
        body: Mapping[str, Any],
        observed: Observed,
        *,
        trigger: str,
        write_status: bool = False,
        autoscaling: dict[str, Any] | None = None,
        fallback_budget: dict[str, Any] | None = None,
    ) -> Outcome:
        """Brings the children in line with the spec and returns the new status (written
        too, with `write_status`). `autoscaling` is the autoscaler's newest
        status.autoscaling. Raises RetryableError when the API server had trouble."""
        uid = str((body.get("metadata") or {}).get("uid", ""))
        mem = self._mem(uid)
        started = time.perf_counter()
        result = "error"
        try:
            async with mem.lock:
                if autoscaling is not None:
                    mem.autoscaling = autoscaling
                if fallback_budget is not None:
                    mem.fallback_budget = fallback_budget
                if write_status:
                    body = mem.versions.caught_up(body)
                outcome = await self._reconcile(body, observed, mem)
                if write_status:

                    async def again(fresh: Mapping[str, Any]) -> Outcome:
                        return await self._reconcile(fresh, observed, mem)

                    outcome = await writer.write_status(
                        self.kube, body, outcome, mem.versions, again, self.STATUS_ATTEMPTS
                    )
            result = "ok" if outcome.problem is None else outcome.problem.reason
            if outcome.problem is not None:
                metrics.RECONCILE_ERRORS.labels(outcome.problem.reason).inc()
            metrics.RECONCILE_WRITES.labels(trigger).observe(outcome.requests)
            return outcome
        except RetryableError:
            metrics.RECONCILE_ERRORS.labels("RetryableAPIError").inc()
            raise
        finally:
            metrics.RECONCILES.labels(trigger, result).inc()
            metrics.RECONCILE_DURATION.labels(trigger).observe(time.perf_counter() - started)

    async def _reconcile(
        self, body: Mapping[str, Any], observed: Observed, mem: _Memory
    ) -> Outcome:
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid", ""))
        ref = ObjectRef(
            str(meta.get("name")), str(meta.get("namespace")), int(meta.get("generation") or 0)
        )
        previous: Mapping[str, Any] = body.get("status") or {}
        if meta.get("deletionTimestamp"):
            # Being deleted (e.g. foreground cascading): the garbage collector removes the
            # children; recreating them would fight it.
            return Outcome(status=dict(previous), patch={}, problem=None, actions=[], requests=0)
        observed = owned_only(observed, uid)
        md: ModelDeployment | None = None
        problem: Problem | None = None
        try:
            md = ModelDeployment.from_body(body)
        except SpecError as e:
            problem = Problem(INVALID_SPEC, str(e))
        self._remember_capabilities(md, mem)

        requests = 0
        actions: list[Action] = []
        revision: str | None = None
        moved: Move | None = None
        missing_pulls: tuple[str, ...] = ()
        replicas = 0
        if md is not None:
            replicas = autoscaling.effective_replicas(md, self._autoscaling(md, previous, mem, ""))
            problem = validate_static(md, self.config)
            if problem is None:
                secrets, looked_up = await self._secrets.lookup(md)
                requests += looked_up
                problem = check_secrets(md, secrets)
                missing_pulls = missing_pull_secrets(md, secrets)
            if problem is None:
                revision = revision_of(md, self.config)
                moved = await self._rollouts.move(md, meta, previous, observed, revision, replicas)
                desired = desired_children(md, self.config, moved.decision.replicas)
                in_flight = self._executor.in_flight(uid, observed)
                actions = plan(desired, observed, in_flight=in_flight)
                problem = await self._executor.execute(md, actions)
                requests += len(actions)

        profile = self._profile(md)
        census, listed = await self._census(md, profile, observed, problem)
        requests += listed
        now = self._now()
        mine = claim_of(body) if md is not None and problem is None else None
        status = compute_status(
            ref,
            md,
            observed,
            revision=revision,
            problem=problem,
            previous=previous,
            now=now,
            desired_replicas=replicas,
            rollout=moved.status if moved else None,
            report=moved.report if moved else None,
            name_conflict=None if mine is None else conflict(mine, self.claims()),
            autoscaling=self._autoscaling(md, previous, mem, now),
            fallback_budget=budget.current_status(md, previous, mem.fallback_budget),
            placement=PlacementFacts(profile, missing_pulls, census),
        )
        events = list(moved.events if moved else [])
        events += transition_events(previous, status)
        events += autoscaling.autoscaling_events(previous, status)
        if md is not None and md.spec.fallback is not None:
            events += budget.budget_events(md.spec.fallback.budget, previous, status)
        events += drift_events(actions, previous, ref.generation)
        requests += await self._post_events(meta, events, mem)
        recheck = self.IN_FLIGHT_TTL + 1 if self._executor.pending(uid) else None
        if moved is not None and moved.report.active:
            recheck = min(recheck or self.ROLLOUT_TICK, self.ROLLOUT_TICK)
        return Outcome(
            status=status,
            patch=status_patch(previous, status),
            problem=problem,
            actions=actions,
            requests=requests,
            recheck_after=recheck,
        )

    async def _census(
        self,
        md: ModelDeployment | None,
        profile: AcceleratorProfile | None,
        observed: Observed,
        problem: Problem | None,
    ) -> tuple[NodeCensus | None, int]:
        """What the nodes show about the engine pods, only while one of them is
        Unschedulable and the status will explain it (no spec-level problem, GPUs asked
        for): the census and the API requests it took."""
        waiting = any(
            p.problem is not None and p.problem.reason == "Unschedulable" for p in observed.pods
        )
        wanted = md is not None and problem is None and md.spec.resources.gpus > 0
        if self._nodes is None or md is None or profile is None or not (waiting and wanted):
            return None, 0
        nodes, requests = await self._nodes.nodes()
        if nodes is None:
            return None, requests
        pod = md.spec.engine.pod
        affinity: Mapping[str, Any] = pod.affinity or {}
        census = node_census(
            nodes,
            profile,
            pod.node_selector,
            affinity.get("nodeAffinity"),
            placement_tolerations(md, profile),
        )
        return census, requests

    def _profile(self, md: ModelDeployment | None) -> AcceleratorProfile | None:
        """The engine pods' accelerator profile, None when there is none to name (no GPUs,
        an unknown gpuType: validation says so)."""
        try:
            return None if md is None else accelerator_profile(md, self.config)
        except ValueError:
            return None

    @staticmethod
    def _remember_capabilities(md: ModelDeployment | None, mem: _Memory) -> None:
        """A spec without autoscaling or a budget drops what their loops last said."""
        if md is None:
            return
        if md.spec.autoscaling is None:
            mem.autoscaling = None
        if md.spec.fallback is None or md.spec.fallback.budget is None:
            mem.fallback_budget = None

    @staticmethod
    def _autoscaling(
        md: ModelDeployment | None, previous: Mapping[str, Any], mem: _Memory, now: str
    ) -> dict[str, Any] | None:
        return autoscaling.current_status(md, previous, mem.autoscaling, now)

    async def _post_events(self, meta: Mapping[str, Any], events: list[Event], mem: _Memory) -> int:
        fresh = mem.events.fresh(events, self._clock())
        for event in fresh:
            log.log(
                logging.WARNING if event.type == WARNING else logging.INFO,
                "%s/%s: %s: %s",
                meta.get("namespace"),
                meta.get("name"),
                event.reason,
                event.message,
            )

        async def post(event: Event) -> None:
            # An Event is best effort: never fail a reconcile for it.
            with contextlib.suppress(*TRANSIENT):
                await self.kube.post_event(meta, event.type, event.reason, event.message)

        await asyncio.gather(*(post(e) for e in fresh))
        return len(fresh)
