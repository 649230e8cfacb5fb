"""Does I/O: whether this replica may write, read from the kopf peering objects.

kopf pauses its own watches, handlers and timers while a peer of higher (or equal) priority
is alive, but Hedge's nudges (runtime.Nudger) and a reconcile already under way are not
kopf's to pause: a standby would go on writing from an index frozen at the pause (issue 16,
split brain). `PeeringGate` watches the same peering objects as kopf and applies kopf's rule
(`outranked`, pure) at the moment of each write, so a standby writes nothing:

- kube.Kube refuses every write (apply, scale, delete, pod annotation, status, Event) with
  `Standby` while the gate is closed;
- the Nudger drops nudges that come due while it is closed (kopf re-lists and reconciles
  everything when it resumes, so nothing is lost).

The gate starts closed, as kopf starts paused, until every peering object has been read.
Standalone (no --peering) it is always open.
"""

from __future__ import annotations

import datetime
import fnmatch
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from hedge_core import kube as core
from hedge_core.kube import ListWatch, resource_path
from hedge_operator import metrics
from hedge_operator.errors import RetryableError

log = logging.getLogger(__name__)

PEERING_GROUP_VERSION = "kopf.dev/v1"
#: kopf's default lifetime of a peer record that says none.
DEFAULT_LIFETIME = 60


class Standby(RetryableError):
    """This replica is a standby (kopf peering): it must not write."""


def _parse_time(value: Any) -> datetime.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def outranked(
    status: Mapping[str, Any], identity: str, priority: int, now: datetime.datetime
) -> list[str]:
    """Pure, kopf's peering rule: the live peers (other than `identity`) whose priority is
    higher than or equal to `priority` (kopf pauses on a tie too). A peer is live until
    `lastseen + lifetime`; a record without `lastseen` counts as seen now (as kopf does)."""
    out: list[str] = []
    for peer, info in status.items():
        if peer == identity or not isinstance(info, Mapping):
            continue
        try:
            their = int(info.get("priority", 0))
            lifetime = int(info.get("lifetime", DEFAULT_LIFETIME))
        except (TypeError, ValueError):
            continue
        seen = _parse_time(info.get("lastseen")) or now
        if seen + datetime.timedelta(seconds=lifetime) <= now:
            continue  # dead: kopf ignores (and cleans) it
        if their >= priority:
            out.append(peer)
    return sorted(out)


class PeeringGate:
    """Open (writes allowed) only while no live peer outranks this replica."""

    def __init__(
        self,
        client: core.Kube | None,
        *,
        identity: str,
        priority: int,
        peering: str | None,
        namespaces: Sequence[str] = (),
    ) -> None:
        self.identity = identity
        self.priority = priority
        self.peering = peering
        self._watches: list[tuple[str | None, ListWatch]] = []
        self._was_open: bool | None = None
        self._patterns = list(namespaces)
        if peering is None or client is None:
            return
        selector = {"fieldSelector": f"metadata.name={peering}"}

        def watch(path: str) -> ListWatch:
            # Re-evaluated on every change, so the gauge (and the log) follow kopf's pause
            # even while nothing is written.
            return ListWatch(
                client,
                path,
                params=selector,
                name=path,
                on_list=lambda _items: self._refresh(),
                on_event=lambda _type, _obj: self._refresh(),
            )

        explicit = [ns for ns in namespaces if not any(c in ns for c in "*?[")]
        if not namespaces:
            path = resource_path(PEERING_GROUP_VERSION, "clusterkopfpeerings", None)
            self._watches.append((None, watch(path)))
        elif len(explicit) == len(namespaces):
            for ns in explicit:
                path = resource_path(PEERING_GROUP_VERSION, "kopfpeerings", ns)
                self._watches.append((ns, watch(path)))
        else:
            # Glob patterns: every namespace's peering object, matched here (needs list of
            # kopfpeerings cluster-wide; the chart always names its namespaces).
            path = resource_path(PEERING_GROUP_VERSION, "kopfpeerings", None)
            self._watches.append((None, watch(path)))

    @property
    def standalone(self) -> bool:
        return self.peering is None

    def start(self) -> None:
        for _, watch in self._watches:
            watch.start()

    async def stop(self) -> None:
        for _, watch in self._watches:
            await watch.stop()

    def blockers(self, now: datetime.datetime | None = None) -> list[str] | None:
        """Why the gate is closed: the peers that outrank us, or None when open. A peering
        object not read yet (or missing) closes the gate, as kopf pauses without one."""
        if self.standalone:
            return None
        now = now or datetime.datetime.now(datetime.UTC)
        if not self._watches:
            return ["no peering object watched"]
        out: list[str] = []
        for namespace, watch in self._watches:
            if not watch.synced.is_set():
                out.append(f"peering {watch.name} not read yet")
                continue
            bodies = [
                body
                for (ns, _), body in watch.items.items()
                if namespace is not None or not self._patterns or self._matches(ns)
            ]
            if not bodies:
                out.append(f"peering object {self.peering!r} missing in {namespace or 'cluster'}")
            for body in bodies:
                out += outranked(body.get("status") or {}, self.identity, self.priority, now)
        return out or None

    def _matches(self, namespace: str | None) -> bool:
        return namespace is not None and any(fnmatch.fnmatch(namespace, p) for p in self._patterns)

    def _refresh(self) -> None:
        self.is_open()

    def is_open(self) -> bool:
        blocked = self.blockers()
        opened = blocked is None
        if opened != self._was_open:
            self._was_open = opened
            metrics.STANDBY.set(0 if opened else 1)
            if opened:
                log.info("peering: active, writes allowed")
            else:
                log.info("peering: standby, no writes (%s)", "; ".join(blocked or ()))
        return opened

    def check(self, what: str) -> None:
        """Raises Standby unless this replica may write."""
        if not self.is_open():
            metrics.STANDBY_REFUSED.inc()
            raise Standby(f"standby replica: not writing ({what})")
