"""Does I/O: the one status writer, guarded by resourceVersion, with its 409 loop.

Status is written inside the object's lock (the reconciler's), guarded by the
resourceVersion the status was computed from. A stale body (kopf's index lagging behind a
write) gets 409 Conflict, and the reconcile runs again on the object as the API server has
it now, so a slower path can never overwrite newer status. `Versions` remembers the newest
version of the object we know, because kopf's copy lags behind our own writes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from hedge_core.kube import TRANSIENT
from hedge_operator.errors import RetryableError
from hedge_operator.kube import Conflict
from hedge_operator.reconcile.outcome import Outcome
from hedge_operator.reconcile.status import status_patch

T = TypeVar("T")

#: Status writes tried per reconcile when the object keeps changing underneath.
ATTEMPTS = 3


class StatusAPI(Protocol):
    async def get_model(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...

    async def patch_status(
        self, namespace: str, name: str, patch: Mapping[str, Any], resource_version: str
    ) -> str | None: ...


@dataclass
class Versions:
    """The newest version of one object we know (its resourceVersion and status, from our
    own last write or read) and versions known to be older. kopf's copy of the object lags
    behind our writes; a copy at a superseded version is read as the newest one."""

    latest: tuple[str, dict[str, Any]] | None = None
    superseded: deque[str] = field(default_factory=lambda: deque(maxlen=16))

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


async def _io(call: Awaitable[T]) -> T:
    try:
        return await call
    except TRANSIENT as e:
        raise RetryableError(f"{type(e).__name__}: {e}") from e


async def write_status(
    kube: StatusAPI,
    body: Mapping[str, Any],
    outcome: Outcome,
    versions: Versions,
    again: Callable[[Mapping[str, Any]], Awaitable[Outcome]],
    attempts: int = ATTEMPTS,
) -> Outcome:
    """Writes `outcome`'s status patch; on 409 reads the object afresh, reconciles it again
    with `again` and writes that. Raises RetryableError when the API server had trouble."""
    requests = 0
    for _ in range(attempts):
        if (
            not outcome.patch
            and versions.latest is not None
            and (versions.latest[1] != outcome.status)
        ):
            # The copy in hand already shows this status, but the newest version we know
            # says otherwise: write; a stale copy gets a conflict and is read again.
            outcome.patch = status_patch(versions.latest[1], outcome.status)
        if not outcome.patch:
            break
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        version = str(meta.get("resourceVersion", ""))
        try:
            written = await kube.patch_status(namespace, name, outcome.patch, version)
            requests += 1
            if written:
                versions.learn(version, written, outcome.status)
            break
        except Conflict:
            # Computed from an older version of the object: read it as it is now and
            # reconcile again (writes already made are in flight, so not repeated).
            requests += 1
            fresh = await _io(kube.get_model(namespace, name))
            requests += 1
            if fresh is None or (fresh.get("metadata") or {}).get("uid") != meta.get("uid"):
                break  # deleted meanwhile
            fresh_version = str((fresh.get("metadata") or {}).get("resourceVersion", ""))
            versions.learn(version, fresh_version, dict(fresh.get("status") or {}))
            body = fresh
            newer = await again(body)
            newer.requests += outcome.requests
            newer.actions = outcome.actions + newer.actions
            outcome = newer
        except TRANSIENT as e:
            raise RetryableError(f"writing status: {e}") from e
    else:
        raise RetryableError("status kept changing while it was written")
    outcome.requests += requests
    return outcome
