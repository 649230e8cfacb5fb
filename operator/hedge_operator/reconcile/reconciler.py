"""One reconcile of one ModelDeployment: parse, validate, decide the rollout, plan, write,
compute status.

The decisions are the pure functions of api/validation/rollout/plan/status; this module
sequences them and performs the writes through a `KubeAPI` (kube.Kube in the operator, a
fake in tests). Reconciles of the same object are serialised; different objects run
concurrently.

Rollouts: every reconcile asks `rollout.decide` how many pods each revision gets, from the
state in status.rollout, the observed pods, the command annotations and the canary's
analysis window (the gateways' counters since the step began, from `RevisionSource`; the
baseline of that window is kept in memory, so after an operator restart the window of the
step in progress starts again from the restart). While a rollout is under way the object is
reconciled again every `ROLLOUT_TICK` seconds (`Outcome.recheck_after`), which is how step
pauses end, waits time out and the tripwire is checked.

Status has one writer: `reconcile(..., write_status=True)` writes it inside the object's
lock, guarded by the resourceVersion the status was computed from. A stale body (kopf's
index lagging behind a write) gets 409 Conflict, and the reconcile runs again on the object
as the API server has it now, so a slower path can never overwrite newer status.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import aiohttp

from hedge_core.api import ModelDeployment, SpecError
from hedge_operator import metrics
from hedge_operator.autoscaling.step import autoscaling_events, effective_replicas, initial_status
from hedge_operator.budget.windows import budget_events
from hedge_operator.config import OperatorConfig
from hedge_operator.dataplane.signals import RevisionStats
from hedge_operator.kube import ApiError, Conflict
from hedge_operator.provisioning.builders import revision_of
from hedge_operator.provisioning.names import Claim, claim_of, conflict
from hedge_operator.provisioning.observed import Observed, owned_by
from hedge_operator.provisioning.plan import (
    APPLIED_HASH,
    Action,
    Apply,
    Scale,
    desired_children,
    in_flight_token,
    plan,
)
from hedge_operator.provisioning.validation import (
    APPLY_FAILED,
    INVALID_SPEC,
    Problem,
    check_secrets,
    secret_uses,
    validate_static,
)
from hedge_operator.reconcile.status import (
    EventSpec,
    ObjectRef,
    RolloutReport,
    compute_status,
    status_patch,
    transition_events,
)
from hedge_operator.rollout import convert as rollout_io
from hedge_operator.rollout import machine as rollout

log = logging.getLogger(__name__)
T = TypeVar("T")


class KubeAPI(Protocol):
    async def apply(self, manifest: Mapping[str, Any]) -> Mapping[str, Any]: ...

    async def scale_deployment(self, namespace: str, name: str, replicas: int) -> None: ...

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None: ...

    async def secret_keys(self, namespace: str, name: str) -> frozenset[str] | None: ...

    async def post_event(
        self, involved: Mapping[str, Any], type_: str, reason: str, message: str
    ) -> None: ...

    async def get_model(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...

    async def patch_status(
        self, namespace: str, name: str, patch: Mapping[str, Any], resource_version: str
    ) -> str | None: ...


#: Each revision's cumulative numbers as the gateways counted them, for one ModelDeployment
#: (None: no gateway could be read). The operator's `signals.Scraper` provides it.
RevisionSource = Callable[[str, str], Awaitable[Mapping[str, RevisionStats] | None]]


class _AnyKeys(frozenset[str]):
    """The keys of a Secret the operator may not read: any key is taken to be there."""

    def __contains__(self, key: object) -> bool:
        return True


UNCHECKED: frozenset[str] = _AnyKeys()


class RetryableError(Exception):
    """The API server had trouble (5xx, throttling, conflict): reconcile again later."""


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Outcome:
    status: dict[str, Any]
    patch: dict[str, Any]  # merge patch from the object's current status; empty: no change
    problem: Problem | None
    actions: list[Action]
    requests: int  # API requests made (writes, Secret look-ups, Events)
    #: Reconcile again after this many seconds: writes the watch has not shown yet may
    #: need repeating (e.g. a child deleted right after it was created).
    recheck_after: float | None = None


@dataclass
class _Memory:
    """What the operator remembers of one ModelDeployment between reconciles."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    in_flight: dict[tuple[str, str], tuple[str, float]] = field(default_factory=dict)
    secrets: tuple[int, dict[str, frozenset[str] | None], float] | None = None
    events: dict[tuple[str, str, str], float] = field(default_factory=dict)
    #: The newest version of the object we know (its resourceVersion and status, from our
    #: own last write or read) and versions known to be older. kopf's copy of the object
    #: lags behind our writes; a copy at a superseded version is read as the newest one.
    latest: tuple[str, dict[str, Any]] | None = None
    superseded: deque[str] = field(default_factory=lambda: deque(maxlen=16))
    #: The autoscaler's latest status.autoscaling: every reconcile sizes the Deployments
    #: from it and writes it, whatever triggered the reconcile.
    autoscaling: dict[str, Any] | None = None
    #: The canary analysis window: which step it belongs to (canary revision, step start as
    #: in status) and each revision's cumulative numbers when it began (None: no numbers yet,
    #: the first ones read become the baseline).
    window: tuple[tuple[str | None, str | None], dict[str, RevisionStats] | None] | None = None
    #: The budget windows' newest status.fallbackBudget, written the same way.
    fallback_budget: dict[str, Any] | None = None

    def learn(self, older: str, version: str, status: dict[str, Any]) -> None:
        """`version` (with `status`) is now the newest; `older` came before it."""
        if self.latest is not None and self.latest[0] != version:
            self.superseded.append(self.latest[0])
        if older and older != version:
            self.superseded.append(older)
        self.latest = (version, status)

    def caught_up(self, body: Mapping[str, Any]) -> Mapping[str, Any]:
        """`body`, or the newest version we know when `body` is known to be older."""
        meta = body.get("metadata") or {}
        version = meta.get("resourceVersion")
        if self.latest is None or version is None or version == self.latest[0]:
            return body
        if version not in self.superseded:
            return body  # a version we never saw: someone else's write, newer than ours
        return {
            **body,
            "metadata": {**meta, "resourceVersion": self.latest[0]},
            "status": self.latest[1],
        }


class Reconciler:
    #: Seconds a write is trusted before the watch must show it.
    IN_FLIGHT_TTL = 10.0
    #: Seconds before Secrets are looked up again (found / missing).
    SECRETS_FOUND_TTL = 300.0
    SECRETS_MISSING_TTL = 5.0
    #: The same Event is not posted twice within this many seconds.
    EVENT_DEDUP = 60.0
    #: Status writes tried per reconcile when the object keeps changing underneath.
    STATUS_ATTEMPTS = 3
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
    ) -> None:
        self.kube = kube
        self.config = config
        self._clock = clock
        self._now = now
        self._wall = wall
        self.revision_source = revisions
        self._memory: dict[str, _Memory] = {}
        #: The model names every ModelDeployment in the operator's scope claims (the
        #: handlers read them from kopf's index), for name conflicts between namespaces.
        self.claims: Callable[[], Iterable[Claim]] = tuple

    def forget(self, uid: str) -> None:
        self._memory.pop(uid, None)

    def _mem(self, uid: str) -> _Memory:
        mem = self._memory.get(uid)
        if mem is None:
            mem = self._memory[uid] = _Memory()
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
                    body = mem.caught_up(body)
                outcome = await self._reconcile(body, observed, mem)
                if write_status:
                    outcome = await self._write_status(body, observed, mem, outcome)
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
        observed = _owned(observed, uid)
        requests = 0
        actions: list[Action] = []
        revision: str | None = None
        md: ModelDeployment | None = None
        problem: Problem | None = None
        moved: _RolloutMove | None = None
        try:
            md = ModelDeployment.from_body(body)
        except SpecError as e:
            problem = Problem(INVALID_SPEC, str(e))

        replicas = 0
        if md is not None:
            replicas = effective_replicas(md, self._autoscaling(md, previous, mem, ""))
            problem = validate_static(md, self.config)
            if problem is None:
                secrets, looked_up = await self._secrets(md, mem)
                requests += looked_up
                problem = check_secrets(md, secrets)
            if problem is None:
                revision = revision_of(md, self.config)
                moved = await self._move(md, meta, previous, observed, mem, revision, replicas)
                desired = desired_children(md, self.config, moved.decision.replicas)
                actions = plan(desired, observed, in_flight=self._in_flight(mem, observed))
                done, problem = await self._execute(md, actions, mem)
                requests += done

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
        )
        autoscaling = self._autoscaling(md, previous, mem, now)
        if autoscaling is not None:
            status["autoscaling"] = autoscaling
        budget = self._fallback_budget(md, previous, mem)
        if budget is not None:
            status["fallbackBudget"] = budget
        events = [EventSpec(e.type, e.reason, e.message) for e in (moved.events if moved else [])]
        events += transition_events(previous, status)
        events += autoscaling_events(previous, status)
        if md is not None and md.spec.fallback is not None:
            events += budget_events(md.spec.fallback.budget, previous, status)
        events += _drift_events(actions, previous, ref)
        requests += await self._post_events(meta, events, mem)
        recheck = self.IN_FLIGHT_TTL + 1 if mem.in_flight else None
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

    async def _move(
        self,
        md: ModelDeployment,
        meta: Mapping[str, Any],
        previous: Mapping[str, Any],
        observed: Observed,
        mem: _Memory,
        revision: str,
        desired: int,
    ) -> _RolloutMove:
        """The rollout's next move (pods per revision, canary weight, status.rollout) for
        `desired` engine pods (spec.replicas, or the autoscaler's count)."""
        spec = md.spec.rollout
        before: Mapping[str, Any] = previous.get("rollout") or {}
        handled = before.get("handledCommands") or {}
        seen = rollout_io.read_commands(meta.get("annotations") or {}, handled, revision)
        policy = rollout.Policy.from_spec(spec, desired, paused=seen.paused)
        state = rollout_io.state_from(before)
        now = self._wall()

        numbers: Mapping[str, RevisionStats] | None = None
        if self.revision_source is not None:
            try:
                numbers = await self.revision_source(md.namespace, md.name)
            except Exception:  # the analysis waits rather than the reconcile failing
                log.exception("%s/%s: reading the gateways' numbers", md.namespace, md.name)
        key = (state.canary, before.get("stepStartTime"))
        if mem.window is None or mem.window[0] != key:
            mem.window = (key, dict(numbers) if numbers is not None else None)
        elif mem.window[1] is None and numbers is not None:
            mem.window = (key, dict(numbers))
        baseline = mem.window[1]
        windows = (
            rollout_io.windows(numbers, baseline)
            if numbers is not None and baseline is not None
            else {}
        )

        decision = rollout.decide(
            policy,
            state,
            revision,
            desired,
            rollout_io.revisions_from(observed),
            windows,
            seen.commands,
            now,
        )
        paused = policy.paused
        status, report = rollout_io.rollout_status(
            decision,
            spec.strategy,
            revision,
            paused=paused,
            handled=seen.handled,
            previous=before,
            now=self._now(),
        )
        report = replace(report, stable=decision.state.stable)
        new_key = (decision.state.canary, status.get("stepStartTime"))
        if new_key != key:  # a new step: its window starts now
            mem.window = (new_key, dict(numbers) if numbers is not None else None)
        metrics.record_rollout(md.namespace, md.name, decision, windows)
        events = rollout_io.events_for(decision, seen, before, report.paused)
        return _RolloutMove(decision, status, report, events)

    @staticmethod
    def _autoscaling(
        md: ModelDeployment | None, previous: Mapping[str, Any], mem: _Memory, now: str
    ) -> dict[str, Any] | None:
        """status.autoscaling: the autoscaler's newest decision, else what status holds, else
        the count a new model starts at; none without spec.autoscaling."""
        if md is None:
            kept = previous.get("autoscaling")
            return dict(kept) if isinstance(kept, Mapping) else None
        if md.spec.autoscaling is None:
            mem.autoscaling = None
            return None
        if mem.autoscaling is not None:
            return mem.autoscaling
        kept = previous.get("autoscaling")
        if isinstance(kept, Mapping) and "desiredReplicas" in kept:
            return dict(kept)
        return initial_status(md, now)

    @staticmethod
    def _fallback_budget(
        md: ModelDeployment | None, previous: Mapping[str, Any], mem: _Memory
    ) -> dict[str, Any] | None:
        """status.fallbackBudget: the newest windows, else what status holds; none without
        spec.fallback.budget."""
        kept = previous.get("fallbackBudget")
        if md is None:
            return dict(kept) if isinstance(kept, Mapping) else None
        if md.spec.fallback is None or md.spec.fallback.budget is None:
            mem.fallback_budget = None
            return None
        if mem.fallback_budget is not None:
            return mem.fallback_budget
        return dict(kept) if isinstance(kept, Mapping) else None

    async def _write_status(
        self, body: Mapping[str, Any], observed: Observed, mem: _Memory, outcome: Outcome
    ) -> Outcome:
        requests = 0
        for _ in range(self.STATUS_ATTEMPTS):
            if not outcome.patch and mem.latest is not None and mem.latest[1] != outcome.status:
                # The copy in hand already shows this status, but the newest version we know
                # says otherwise: write; a stale copy gets a conflict and is read again.
                outcome.patch = status_patch(mem.latest[1], outcome.status)
            if not outcome.patch:
                break
            meta = body.get("metadata") or {}
            namespace, name = str(meta.get("namespace")), str(meta.get("name"))
            version = str(meta.get("resourceVersion", ""))
            try:
                written = await self.kube.patch_status(namespace, name, outcome.patch, version)
                requests += 1
                if written:
                    mem.learn(version, written, outcome.status)
                break
            except Conflict:
                # Computed from an older version of the object: read it as it is now and
                # reconcile again (writes already made are in flight, so not repeated).
                requests += 1
                fresh = await self._io(self.kube.get_model(namespace, name))
                requests += 1
                if fresh is None or (fresh.get("metadata") or {}).get("uid") != meta.get("uid"):
                    break  # deleted meanwhile
                fresh_version = str((fresh.get("metadata") or {}).get("resourceVersion", ""))
                mem.learn(version, fresh_version, dict(fresh.get("status") or {}))
                body = fresh
                again = await self._reconcile(body, observed, mem)
                again.requests += outcome.requests
                again.actions = outcome.actions + again.actions
                outcome = again
            except (ApiError, aiohttp.ClientError, TimeoutError, OSError) as e:
                raise RetryableError(f"writing status: {e}") from e
        else:
            raise RetryableError("status kept changing while it was written")
        outcome.requests += requests
        return outcome

    @staticmethod
    async def _io(call: Awaitable[T]) -> T:
        try:
            return await call
        except (ApiError, aiohttp.ClientError, TimeoutError, OSError) as e:
            raise RetryableError(f"{type(e).__name__}: {e}") from e

    async def _execute(
        self, md: ModelDeployment, actions: list[Action], mem: _Memory
    ) -> tuple[int, Problem | None]:
        """Performs the writes concurrently (they are independent: the engine pods wait for
        their claim on their own), so a reconcile takes one round trip, not one per child."""

        async def one(action: Action) -> None:
            if isinstance(action, Apply):
                await self.kube.apply(action.manifest)
            elif isinstance(action, Scale):
                await self.kube.scale_deployment(md.namespace, action.name, action.replicas)
            else:
                await self.kube.delete(action.api_version, action.kind, md.namespace, action.name)
            mem.in_flight[action.key] = (in_flight_token(action), self._clock())
            log.info("%s/%s: %s", md.namespace, md.name, _describe(action))

        results = await asyncio.gather(*(one(a) for a in actions), return_exceptions=True)
        problem: Problem | None = None
        for action, result in zip(actions, results, strict=True):
            if not isinstance(result, BaseException):
                continue
            if isinstance(result, ApiError) and not result.retryable:
                kind, name = action.key
                problem = problem or Problem(APPLY_FAILED, f"{kind} {name}: {result.message}")
            elif isinstance(result, ApiError | aiohttp.ClientError | TimeoutError | OSError):
                raise RetryableError(f"{type(result).__name__}: {result}") from result
            else:
                raise result
        return len(actions), problem

    def _in_flight(self, mem: _Memory, observed: Observed) -> dict[tuple[str, str], str]:
        """Writes the watch does not show yet. An entry ends when the observed state shows
        the write (so a later deletion of that child is seen as drift at once) or when its
        time is up."""
        now = self._clock()
        for key, (token, at) in list(mem.in_flight.items()):
            if now - at > self.IN_FLIGHT_TTL or _shows(observed, key, token):
                del mem.in_flight[key]
        return {key: token for key, (token, _) in mem.in_flight.items()}

    async def _secrets(
        self, md: ModelDeployment, mem: _Memory
    ) -> tuple[dict[str, frozenset[str] | None], int]:
        names = sorted({use.name for use in secret_uses(md)})
        if not names:
            return {}, 0
        now = self._clock()
        if mem.secrets is not None:
            generation, cached, at = mem.secrets
            complete = all(cached.get(n) is not None for n in names) and set(names) <= set(cached)
            ttl = self.SECRETS_FOUND_TTL if complete else self.SECRETS_MISSING_TTL
            if generation == md.generation and now - at < ttl:
                return cached, 0
        results = await asyncio.gather(
            *(self.kube.secret_keys(md.namespace, n) for n in names), return_exceptions=True
        )
        found: dict[str, frozenset[str] | None] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, ApiError) and result.status == 403:
                # Secret reads are granted only where keys are expected (the chart's
                # rbac.secretNamespaces): elsewhere the reference is passed on unchecked.
                log.warning(
                    "%s/%s: may not read Secret %r (forbidden), so it is not checked",
                    md.namespace,
                    md.name,
                    name,
                )
                found[name] = UNCHECKED
            elif isinstance(result, ApiError | aiohttp.ClientError | TimeoutError | OSError):
                raise RetryableError(f"looking up Secrets: {result}") from result
            elif isinstance(result, BaseException):
                raise result
            else:
                found[name] = result
        mem.secrets = (md.generation, found, now)
        return found, len(names)

    async def _post_events(
        self, meta: Mapping[str, Any], events: list[EventSpec], mem: _Memory
    ) -> int:
        now = self._clock()
        for key, at in list(mem.events.items()):
            if now - at > self.EVENT_DEDUP:
                del mem.events[key]
        fresh = []
        for event in events:
            key = (event.type, event.reason, event.message)
            if key not in mem.events:
                mem.events[key] = now
                fresh.append(event)
                level = logging.WARNING if event.type == "Warning" else logging.INFO
                log.log(
                    level,
                    "%s/%s: %s: %s",
                    meta.get("namespace"),
                    meta.get("name"),
                    event.reason,
                    event.message,
                )

        async def post(event: EventSpec) -> None:
            # An Event is best effort: never fail a reconcile for it.
            with contextlib.suppress(ApiError, aiohttp.ClientError, TimeoutError, OSError):
                await self.kube.post_event(meta, event.type, event.reason, event.message)

        await asyncio.gather(*(post(e) for e in fresh))
        return len(fresh)


@dataclass
class _RolloutMove:
    decision: rollout.Decision
    status: dict[str, Any]  # status.rollout
    report: RolloutReport
    events: list[rollout.Event]


def _shows(observed: Observed, key: tuple[str, str], token: str) -> bool:
    kind, name = key
    live = observed.by_kind(kind).get(name)
    if token == "delete":
        return live is None
    if live is None:
        return False
    if token.startswith("scale:"):
        return str((live.get("spec") or {}).get("replicas")) == token.removeprefix("scale:")
    annotations = (live.get("metadata") or {}).get("annotations") or {}
    return bool(annotations.get(APPLIED_HASH) == token)


def _describe(action: Action) -> str:
    kind, name = action.key
    if isinstance(action, Apply):
        return f"applied {kind} {name} ({action.why})"
    if isinstance(action, Scale):
        return f"scaled {kind} {name} to {action.replicas}"
    return f"deleted {kind} {name}"


def _owned(observed: Observed, uid: str) -> Observed:
    """Only children owned by this incarnation of the ModelDeployment (a deleted namesake's
    children may still be waiting for the garbage collector)."""
    if not uid:
        return observed

    def mine(objs: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
        return {name: body for name, body in objs.items() if owned_by(body, uid)}

    return replace(
        observed,
        deployments=mine(observed.deployments),
        services=mine(observed.services),
        pdbs=mine(observed.pdbs),
        pvcs=mine(observed.pvcs),
    )


def _drift_events(
    actions: list[Action], previous: Mapping[str, Any], ref: ObjectRef
) -> list[EventSpec]:
    """Repairs of children changed or deleted by someone else, once this generation had been
    reconciled (creating children for a new spec is not drift)."""
    settled = previous.get("observedGeneration") == ref.generation
    events: list[EventSpec] = []
    for action in actions:
        if not isinstance(action, Apply):
            continue
        kind, name = action.key
        if action.why == "repair":
            events.append(
                EventSpec(
                    "Normal",
                    "DriftRepaired",
                    f"restored {kind} {name} (changed outside the operator)",
                )
            )
        elif (
            action.why == "create"
            and settled
            and (
                kind != "Deployment"
                or previous.get("revision")
                == action.manifest["metadata"]["labels"].get("hedge.dev/revision")
            )
        ):
            # A new revision's Deployment is not drift; the current one missing is.
            events.append(
                EventSpec(
                    "Normal",
                    "DriftRepaired",
                    f"recreated {kind} {name} (deleted outside the operator)",
                )
            )
    return events
