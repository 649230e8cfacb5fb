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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
import kopf

from hedge_core.api import (
    COMPONENT_LABEL,
    ENGINE_COMPONENT,
    FIELD_MANAGER,
    GROUP,
    MANAGED_BY_LABEL,
    MD_LABEL,
    PLURAL,
    VERSION,
)
from hedge_operator.config import OperatorConfig
from hedge_operator.kube import Kube
from hedge_operator.names import Claim, claim_of
from hedge_operator.observed import Observed, PodSummary, strip, summarize_pod
from hedge_operator.reconciler import Outcome, Reconciler, RetryableError
from hedge_operator.validation import Problem

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
    nudger: Nudger = field(init=False)

    def __post_init__(self) -> None:
        self.nudger = Nudger(self.reconcile_key)

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
        rt.reconciler.forget(uid)
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
