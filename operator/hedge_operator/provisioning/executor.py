"""Does I/O: performs a plan's writes, and remembers the ones the watch does not show yet.

The writes of one reconcile are independent (the engine pods wait for their claim on their
own), so they run concurrently: a reconcile takes one round trip, not one per child. A write
stays "in flight" until the observed state shows it or `IN_FLIGHT_TTL` seconds pass, so the
planner neither repeats it while kopf's index lags nor misses a later deletion of that
child (which is then drift).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from hedge_core.api import GROUP, KIND, ModelDeployment
from hedge_core.kube import TRANSIENT, ApiError
from hedge_operator.errors import RetryableError
from hedge_operator.provisioning.observed import Observed, owned_by
from hedge_operator.provisioning.plan import APPLIED_HASH, Action, Apply, Scale, in_flight_token
from hedge_operator.provisioning.validation import APPLY_FAILED, Problem

log = logging.getLogger(__name__)

ChildKey = tuple[str, str]  # (kind, name)


#: A child's name is taken by an object this ModelDeployment does not own.
NAME_IN_USE = "NameInUse"


class NameInUse(Exception):
    """A create found an object of that name without our ownerReference."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ChildWriter(Protocol):
    async def apply(self, manifest: Mapping[str, Any]) -> Mapping[str, Any]: ...

    async def get_child(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> Mapping[str, Any] | None: ...

    async def scale_deployment(self, namespace: str, name: str, replicas: int) -> None: ...

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None: ...


class Executor:
    """The writes of every ModelDeployment, and those in flight, by uid."""

    #: Seconds a write is trusted before the watch must show it.
    IN_FLIGHT_TTL = 10.0

    def __init__(self, kube: ChildWriter, clock: Callable[[], float] = time.monotonic) -> None:
        self._kube = kube
        self._clock = clock
        self._in_flight: dict[str, dict[ChildKey, tuple[str, float]]] = {}

    def forget(self, uid: str) -> None:
        self._in_flight.pop(uid, None)

    def pending(self, uid: str) -> bool:
        """Whether a write of this object is still waiting for the watch to show it."""
        return bool(self._in_flight.get(uid))

    def in_flight(self, uid: str, observed: Observed) -> dict[ChildKey, str]:
        """Writes the watch does not show yet. An entry ends when the observed state shows
        the write (so a later deletion of that child is seen as drift at once) or when its
        time is up."""
        writes = self._in_flight.get(uid, {})
        now = self._clock()
        for key, (token, at) in list(writes.items()):
            if now - at > self.IN_FLIGHT_TTL or _shows(observed, key, token):
                del writes[key]
        return {key: token for key, (token, _) in writes.items()}

    async def execute(self, md: ModelDeployment, actions: list[Action]) -> Problem | None:
        """Performs the writes concurrently. A write the API server refuses for good is the
        Problem returned; trouble worth retrying raises RetryableError."""
        writes = self._in_flight.setdefault(md.uid, {})

        async def one(action: Action) -> None:
            if isinstance(action, Apply):
                if action.why == "create":
                    await self._refuse_taken(md, action)
                await self._kube.apply(action.manifest)
            elif isinstance(action, Scale):
                await self._kube.scale_deployment(md.namespace, action.name, action.replicas)
            else:
                await self._kube.delete(action.api_version, action.kind, md.namespace, action.name)
            writes[action.key] = (in_flight_token(action), self._clock())
            log.info("%s/%s: %s", md.namespace, md.name, describe(action))

        results = await asyncio.gather(*(one(a) for a in actions), return_exceptions=True)
        problem: Problem | None = None
        for action, result in zip(actions, results, strict=True):
            if not isinstance(result, BaseException):
                continue
            if isinstance(result, NameInUse):
                problem = problem or Problem(NAME_IN_USE, result.message)
            elif isinstance(result, ApiError) and not result.retryable:
                kind, name = action.key
                problem = problem or Problem(APPLY_FAILED, f"{kind} {name}: {result.message}")
            elif isinstance(result, TRANSIENT):
                raise RetryableError(f"{type(result).__name__}: {result}") from result
            else:
                raise result
        return problem

    async def _refuse_taken(self, md: ModelDeployment, action: Apply) -> None:
        """Server-side apply with force would take over (and the garbage collector later
        delete with us) an object someone else made under a child's name: a hand-made
        `llama` Service, a `llama-cache` claim, or another ModelDeployment's child whose
        name collides with ours (MD `foo-<hash>` vs MD `foo`'s revision Service). Only
        creates are checked: the watch shows what we own, so an update is ours already."""
        manifest = action.manifest
        kind, name = action.key
        live = await self._kube.get_child(str(manifest["apiVersion"]), kind, md.namespace, name)
        if live is None or owned_by(live, md.uid) or _earlier_incarnation(live, md):
            return
        raise NameInUse(
            f"{kind} {name} already exists and is not owned by this ModelDeployment "
            f"({_owner_text(live)}); the operator does not take it over: delete or rename "
            f"that {kind}, or rename this ModelDeployment"
        )


def _earlier_incarnation(live: Mapping[str, Any], md: ModelDeployment) -> bool:
    """Controlled by a ModelDeployment of this name (a deleted namesake, e.g. a Helm
    reinstall, whose children the garbage collector has not removed yet): ours to adopt.
    A made-up reference of that kind cannot be used to make us adopt anything for long:
    the garbage collector deletes an object whose owner uid does not exist."""
    refs = (live.get("metadata") or {}).get("ownerReferences") or []
    return any(
        r.get("controller")
        and r.get("kind") == KIND
        and str(r.get("apiVersion", "")).split("/")[0] == GROUP
        and r.get("name") == md.name
        for r in refs
    )


def _owner_text(live: Mapping[str, Any]) -> str:
    refs = (live.get("metadata") or {}).get("ownerReferences") or []
    controller = next((r for r in refs if r.get("controller")), None)
    if controller is None:
        return "it has no controller"
    return f"controlled by {controller.get('kind')} {controller.get('name')}"


def _shows(observed: Observed, key: ChildKey, token: str) -> bool:
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


def describe(action: Action) -> str:
    kind, name = action.key
    if isinstance(action, Apply):
        return f"applied {kind} {name} ({action.why})"
    if isinstance(action, Scale):
        return f"scaled {kind} {name} to {action.replicas}"
    return f"deleted {kind} {name}"
