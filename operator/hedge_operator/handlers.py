"""Does I/O: the kopf handlers, decorators only: each unpacks kopf's arguments and calls
the runtime (runtime.py) or the reconciler.

- spec changes (create, update of .spec, operator start) reconcile at once, through kopf, so
  bad specs end as PermanentError and missing Secrets as TemporaryError;
- a resync timer repairs anything a lost watch event would have left behind;
- kopf indexes keep the children (Deployments, Services, PDBs, cache PVCs, engine pods) in
  memory, so reconciles read nothing from the API server, and every change of a child
  nudges its ModelDeployment: one coalesced reconcile shortly after.

Status has one writer, the reconciler (through kube.py, guarded by resourceVersion), for
the kopf handlers and the nudges alike: kopf's own patch, applied after a handler returns,
could otherwise land after a newer status and undo it. Handlers return None.

ClientPolicies (tenants/) are checked on create, spec update and resume, and every
`TENANT_RESYNC_SECONDS` (a Secret created or labelled later is noticed then), and their
status.usage is read from the shared gateway scrape every `TENANT_USAGE_SECONDS` (no API
read; a write only when it changed); their status goes through kopf's `patch.status`, as
nothing else writes it.

kopf logs in with the same credentials as kube.py (`login`): one client, one notion of
credentials, re-loaded (exec plugins run again) whenever kopf or kube.py gets a 401.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf

from hedge_core.api import (
    CLIENT_POLICY_PLURAL,
    COMPONENT_LABEL,
    ENGINE_COMPONENT,
    FIELD_MANAGER,
    GROUP,
    MANAGED_BY_LABEL,
    MD_LABEL,
    PLURAL,
    VERSION,
    ModelDeploymentStatus,
)
from hedge_core.statuses import read
from hedge_operator import metrics
from hedge_operator.autoscaling.step import TICK
from hedge_operator.errors import RetryableError
from hedge_operator.provisioning.observed import strip, summarize_pod
from hedge_operator.provisioning.validation import Problem
from hedge_operator.reconcile.outcome import Outcome
from hedge_operator.runtime import RETRY_DELAY, Indexes, Key, Nudger, Runtime, runtime
from hedge_operator.tenants import driver as tenants

__all__ = ["Indexes", "Nudger", "Runtime"]

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
    ("networking.k8s.io", "v1", "networkpolicies"),
)
RESYNC_SECONDS = 60.0
CPOL = (GROUP, VERSION, CLIENT_POLICY_PLURAL)
TENANT_RESYNC_SECONDS = 30.0
TENANT_USAGE_SECONDS = 10.0

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
    if rt.gate is not None:
        rt.gate.start()  # a standby writes nothing (standby.py)
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
    if rt.gate is not None:
        await rt.gate.stop()
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


@kopf.index("networking.k8s.io", "v1", "networkpolicies", labels=CHILD_LABELS)
def hedge_netpols(
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
    if read(ModelDeploymentStatus, body.get("status")).observed_generation == generation:
        rt.nudger.nudge((namespace or "", name))


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_LABELS, id="child-event")
@kopf.on.event("v1", "services", labels=CHILD_LABELS, id="child-event")
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=CHILD_LABELS, id="child-event")
@kopf.on.event("v1", "persistentvolumeclaims", labels=CHILD_LABELS, id="child-event")
@kopf.on.event("v1", "pods", labels=CHILD_LABELS, id="child-event")
@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels=CHILD_LABELS, id="child-event")
async def child_event(
    labels: Mapping[str, str], namespace: str | None, memo: Any, **kwargs: Any
) -> None:
    rt = runtime(memo, kwargs)
    md = labels.get(MD_LABEL)
    if md:
        rt.nudger.nudge((namespace or "", md))


# ------------------------------------------------------------------------------ tenants


@kopf.on.resume(*CPOL, id="client-policy")
@kopf.on.create(*CPOL, id="client-policy")
@kopf.on.update(*CPOL, field="spec", id="client-policy")
async def client_policy(body: kopf.Body, patch: kopf.Patch, memo: Any, **_: Any) -> None:
    """Checks the keys at once. A missing or unlabelled Secret is no error for kopf to
    retry: it is the tenant's to fix, and the timer below notices the fix. Only trouble at
    the API server is retried."""
    try:
        _patch_status(patch, await tenants.check(runtime(memo).kube, body))
    except RetryableError as e:
        raise kopf.TemporaryError(str(e), delay=RETRY_DELAY) from e


@kopf.timer(
    *CPOL,
    interval=TENANT_RESYNC_SECONDS,
    initial_delay=TENANT_RESYNC_SECONDS,
    id="client-policy-resync",
)
async def client_policy_resync(body: kopf.Body, patch: kopf.Patch, memo: Any, **_: Any) -> None:
    try:
        _patch_status(patch, await tenants.check(runtime(memo).kube, body))
    except RetryableError as e:
        meta = body.get("metadata", {})
        log.warning("ClientPolicy %s/%s: %s (the next check retries)", meta.get("namespace"),
                    meta.get("name"), e)  # fmt: skip


@kopf.timer(*CPOL, interval=TENANT_USAGE_SECONDS, initial_delay=1.0, id="client-policy-usage")
async def client_policy_usage(
    body: kopf.Body, uid: str, patch: kopf.Patch, memo: Any, **_: Any
) -> None:
    """status.usage from the gateways' counters (tenants/usage.py)."""
    rt = runtime(memo)
    _patch_status(patch, await tenants.usage(rt, rt.usage_windows(uid), body, time.time()))


@kopf.on.event(*CPOL, id="client-policy-event")
async def client_policy_event(type: str, uid: str, memo: Any, **_: Any) -> None:
    if type == "DELETED":
        runtime(memo).usages.pop(uid, None)


def _patch_status(patch: kopf.Patch, status: Mapping[str, Any]) -> None:
    if status:  # an empty status patch would still be sent
        patch.setdefault("status", {}).update(status)
