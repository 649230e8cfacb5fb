"""kopf handlers: thin glue between kopf's watches and the Reconciler.

- spec changes (create, update of .spec, operator start) reconcile at once, through kopf, so
  bad specs end as PermanentError and missing Secrets as TemporaryError;
- a resync timer repairs anything a lost watch event would have left behind;
- kopf indexes keep the children (Deployments, Services, PDBs, cache PVCs, engine pods) in
  memory, so reconciles read nothing from the API server, and every change of a child
  nudges its ModelDeployment: one coalesced reconcile shortly after.

Status has one writer, the reconciler (through kube.py, guarded by resourceVersion), for
the kopf handlers and the nudges alike: kopf's own patch, applied after a handler returns,
could otherwise land after a newer status and undo it. Handlers return None.

kopf logs in with the same credentials as kube.py (`login`): one client, one notion of
credentials, re-loaded (exec plugins run again) whenever kopf or kube.py gets a 401.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
import kopf

from hedge_core.api import (
    COMPONENT_LABEL,
    ENGINE_COMPONENT,
    ENGINE_PORT,
    FIELD_MANAGER,
    GROUP,
    MANAGED_BY_LABEL,
    MD_LABEL,
    PLURAL,
    VERSION,
    ModelDeployment,
    SpecError,
)
from hedge_operator import metrics
from hedge_operator.autoscaling.step import (
    DELETION_COST,
    TICK,
    ModelScaler,
    deletion_costs,
    pods_of,
)
from hedge_operator.budget.windows import BudgetWindows
from hedge_operator.config import OperatorConfig
from hedge_operator.dataplane.discovery import DataPlane, engine_urls
from hedge_operator.dataplane.signals import RevisionStats, Snapshot
from hedge_operator.kube import Kube
from hedge_operator.provisioning.names import Claim, claim_of
from hedge_operator.provisioning.observed import Observed, PodSummary, strip, summarize_pod
from hedge_operator.provisioning.validation import Problem
from hedge_operator.reconcile.reconciler import Outcome, Reconciler, RetryableError
from hedge_operator.rollout.convert import cumulative

log = logging.getLogger(__name__)

MD = (GROUP, VERSION, PLURAL)
CHILD_LABELS = {MANAGED_BY_LABEL: FIELD_MANAGER}
CHILD_SELECTOR = f"{MANAGED_BY_LABEL}={FIELD_MANAGER}"
CHILD_RESOURCES = (
    ("apps", "v1", "deployments"),
    ("v1", "services"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("v1", "persistentvolumeclaims"),
    ("v1", "pods"),
)
RESYNC_SECONDS = 60.0
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

    def __init__(self, run: Callable[[Key], Awaitable[None]], delay: float = NUDGE_DELAY):
        self._run = run
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
        try:
            await self._run(key)
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
    nudger: Nudger = field(init=False)

    def __post_init__(self) -> None:
        self.nudger = Nudger(self.reconcile_key)
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
        autoscaling = await self._autoscale(md, key, status, snapshot)
        fallback_budget = None
        if budget is not None:
            windows = self.budgets.setdefault(md.uid, BudgetWindows.new())
            total = None
            if snapshot is not None and snapshot.gateways_read:
                total = snapshot.counters.total(("fallback_tokens", *key))
            block, write = windows.step(
                budget, total, status.get("fallbackBudget") or {}, time.time()
            )
            metrics.FALLBACK_TOKENS.labels(*key, "minute").set(block.get("minuteTokens", 0))
            metrics.FALLBACK_TOKENS.labels(*key, "day").set(block.get("dayTokens", 0))
            metrics.FALLBACK_BUDGET_EXHAUSTED.labels(*key).set(int("exhaustedUntil" in block))
            fallback_budget = block if write else None
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

    async def _autoscale(
        self, md: ModelDeployment, key: Key, status: Mapping[str, Any], snapshot: Snapshot | None
    ) -> dict[str, Any] | None:
        """The autoscaler's decision; the status.autoscaling to write now, or None."""
        if md.spec.autoscaling is None or self.indexes is None:
            return None
        scaler = self.scalers.setdefault(md.uid, ModelScaler())
        signals = snapshot.model(key) if snapshot is not None else None
        pods = list(self.indexes.pods.get(key, ()))
        capacity = pods_of(pods)
        metrics.READY_REPLICAS.labels(*key).set(capacity.ready)
        step = scaler.step(
            md,
            status,
            signals,
            snapshot.gateways_failed if snapshot is not None else [],
            capacity,
            time.time(),
        )
        decision = step.decision
        metrics.AUTOSCALE_DECISIONS.labels(decision.reason).inc()
        metrics.DESIRED_REPLICAS.labels(*key).set(decision.desired)
        if decision.demand is not None:
            metrics.DEMAND.labels(*key).set(decision.demand)
        if signals is not None and signals.demand is not None:
            for state in ("self_hosted", "held", "fallback"):
                metrics.DEMAND_IN_FLIGHT.labels(*key, state).set(signals.by_state.get(state, 0.0))
        if not step.write:
            return None
        if step.scales_down and snapshot is not None:
            # The ReplicaSet controller removes the pod with the lowest cost first: the one
            # with the least work on its engine.
            costs = deletion_costs(pods, snapshot.engines, ENGINE_PORT)
            results = await asyncio.gather(
                *(
                    self.kube.annotate_pod(key[0], name, {DELETION_COST: str(cost)})
                    for name, cost in costs.items()
                ),
                return_exceptions=True,
            )
            for name, result in zip(costs, results, strict=True):
                if isinstance(result, Exception):  # best effort: the scale-down goes on
                    log.warning("%s/%s: could not set the deletion cost of pod %s: %s",
                                *key, name, result)  # fmt: skip
        return step.status

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


# ----------------------------------------------------------------------- operator-level


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    rt = runtime(memo)
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # Silent watch streams are a known kopf failure mode: make the server close them.
    settings.watching.server_timeout = rt.watch_timeout
    settings.watching.client_timeout = rt.watch_timeout + 60
    settings.watching.connect_timeout = 30
    # The operator posts its own Events on transitions; kopf's are only for failures.
    settings.posting.level = logging.WARNING
    # With peering, the highest priority runs and the rest stand by; equal priorities would
    # make every replica pause, so each replica gets its own (random unless set).
    settings.peering.priority = rt.peering_priority
    for resource in CHILD_RESOURCES:
        settings.watching.label_selectors[resource] = CHILD_SELECTOR
    if rt.dataplane is not None:
        await rt.dataplane.start()


@kopf.on.login()
async def login(memo: Any, **_: Any) -> kopf.AiohttpSession:
    """kopf's session on kube.py's credentials, loaded afresh: kopf calls this at start and
    again when the API server refuses the current credentials or they expire."""
    client = runtime(memo).kube.client
    creds = await client.login()
    log.info("logged in to %s (%s)", creds.server, creds.source)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ssl=creds.ssl_context or False),
        headers={**creds.headers(), "User-Agent": "hedge-operator (kopf)"},
        proxy=creds.proxy,
        trust_env=True,
    )
    return kopf.AiohttpSession(
        server=creds.server,
        aiohttp_session=session,
        default_namespace=creds.namespace,
        expiration=creds.expiration,
    )


@kopf.on.cleanup()
async def cleanup(memo: Any, **_: Any) -> None:
    rt = runtime(memo)
    await rt.nudger.close()
    if rt.dataplane is not None:
        await rt.dataplane.stop()
    await rt.kube.close()


@kopf.on.probe(id="models")
def probe_models(memo: Any, **_: Any) -> int:
    rt = runtime(memo)
    return 0 if rt.indexes is None else len(rt.indexes.models)


# ------------------------------------------------------------------------------ indexes


def _child_entry(namespace: str | None, labels: Mapping[str, str], body: Any) -> dict[Key, Any]:
    md = labels.get(MD_LABEL)
    return {(namespace or "", md): strip(body)} if md else {}


@kopf.index(*MD)
def hedge_models(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Key, Any]:
    return {(namespace or "", name): strip(body)}


@kopf.index("apps", "v1", "deployments", labels=CHILD_LABELS)
def hedge_deployments(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Key, Any]:
    return _child_entry(namespace, labels, body)


@kopf.index("v1", "services", labels=CHILD_LABELS)
def hedge_services(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Key, Any]:
    return _child_entry(namespace, labels, body)


@kopf.index("policy", "v1", "poddisruptionbudgets", labels=CHILD_LABELS)
def hedge_pdbs(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Key, Any]:
    return _child_entry(namespace, labels, body)


@kopf.index("v1", "persistentvolumeclaims", labels=CHILD_LABELS)
def hedge_pvcs(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Key, Any]:
    return _child_entry(namespace, labels, body)


@kopf.index("v1", "pods", labels={**CHILD_LABELS, COMPONENT_LABEL: ENGINE_COMPONENT})
def hedge_pods(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Key, Any]:
    md = labels.get(MD_LABEL)
    return {(namespace or "", md): summarize_pod(body)} if md else {}


# ---------------------------------------------------------------------------- reconcile


def _raise_for(outcome: Outcome) -> None:
    problem: Problem | None = outcome.problem
    if problem is None:
        return
    if problem.waiting:
        raise kopf.TemporaryError(f"{problem.reason}: {problem.message}", delay=15)
    raise kopf.PermanentError(f"{problem.reason}: {problem.message}")


async def _reconcile_into(rt: Runtime, body: kopf.Body, key: Key, trigger: str) -> Outcome:
    """One reconcile; the reconciler writes its status (see the module docstring)."""
    assert rt.indexes is not None
    try:
        return await rt.reconciler.reconcile(
            body, rt.indexes.observed(key), trigger=trigger, write_status=True
        )
    except RetryableError as e:
        raise kopf.TemporaryError(str(e), delay=RETRY_DELAY) from e


@kopf.on.resume(*MD, id="reconcile")
@kopf.on.create(*MD, id="reconcile")
@kopf.on.update(*MD, field="spec", id="reconcile")
async def reconcile(
    body: kopf.Body,
    namespace: str | None,
    name: str,
    memo: Any,
    **kwargs: Any,
) -> None:
    rt = runtime(memo, kwargs)
    key = (namespace or "", name)
    outcome = await _reconcile_into(rt, body, key, "spec")
    rt.recheck(key, outcome)
    _raise_for(outcome)


@kopf.timer(*MD, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS, id="resync")
async def resync(
    body: kopf.Body,
    namespace: str | None,
    name: str,
    memo: Any,
    **kwargs: Any,
) -> None:
    await _reconcile_into(runtime(memo, kwargs), body, (namespace or "", name), "resync")


def _scaled_or_budgeted(spec: Mapping[str, Any], **_: Any) -> bool:
    return bool(spec.get("autoscaling") or (spec.get("fallback") or {}).get("budget"))


@kopf.timer(*MD, interval=TICK, sharp=True, when=_scaled_or_budgeted, id="autoscale")
async def autoscale(
    body: kopf.Body,
    namespace: str | None,
    name: str,
    memo: Any,
    **kwargs: Any,
) -> None:
    """The autoscaler's and the fallback budget's tick (kopf runs timers on the active
    peer only)."""
    rt = runtime(memo, kwargs)
    try:
        await rt.tick((namespace or "", name), body)
    except RetryableError as e:
        log.warning("autoscaling %s/%s: %s (next tick retries)", namespace, name, e)


# -------------------------------------------------------------------------------- nudges


@kopf.on.event(*MD, id="model-event")
async def model_event(
    body: kopf.Body,
    type: str,
    namespace: str | None,
    name: str,
    uid: str,
    memo: Any,
    **kwargs: Any,
) -> None:
    rt = runtime(memo, kwargs)
    key = (namespace or "", name)
    if rt.indexes is not None:
        # Whoever shares a model name with this object may gain or lose that name now.
        for other in rt.indexes.sharing_names(key, body):
            rt.nudger.nudge(other)
    if type == "DELETED":
        rt.forget(uid, (namespace or "", name))
        metrics.forget_rollout(namespace or "", name)
        return
    # Spec changes go to `reconcile`; this re-checks status after other writes settle (a
    # status written by a slower path must not stay stale).
    generation = body.get("metadata", {}).get("generation")
    if body.get("status", {}).get("observedGeneration") == generation:
        rt.nudger.nudge((namespace or "", name))


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_LABELS, id="child-event")
@kopf.on.event("v1", "services", labels=CHILD_LABELS, id="child-event")
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=CHILD_LABELS, id="child-event")
@kopf.on.event("v1", "persistentvolumeclaims", labels=CHILD_LABELS, id="child-event")
@kopf.on.event("v1", "pods", labels=CHILD_LABELS, id="child-event")
async def child_event(
    labels: Mapping[str, str], namespace: str | None, memo: Any, **kwargs: Any
) -> None:
    rt = runtime(memo, kwargs)
    md = labels.get(MD_LABEL)
    if md:
        rt.nudger.nudge((namespace or "", md))
