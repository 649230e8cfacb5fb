"""Pure: the one Event type the operator posts, and the dedup that keeps it from repeating.

Every capability says what happened as `Event`s (the rollout's steps, the autoscaler's
scale changes, the budget's windows, status transitions, drift repairs); the reconciler
posts them through `kube.Kube.post_event` after `Dedup` has dropped those already posted
within its window. No I/O and no clock of its own: the caller passes the time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

NORMAL = "Normal"
WARNING = "Warning"


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str  # one CamelCase word
    message: str


@dataclass
class Dedup:
    """Drops an Event (type, reason and message alike) posted less than `window` seconds
    ago, so a reconcile loop that keeps seeing the same state does not flood Events."""

    window: float = 60.0
    _posted: dict[Event, float] = field(default_factory=dict)

    def fresh(self, events: Iterable[Event], now: float) -> list[Event]:
        """The events not posted within the window; they count as posted at `now`."""
        for event, at in list(self._posted.items()):
            if now - at > self.window:
                del self._posted[event]
        out: list[Event] = []
        for event in events:
            if event not in self._posted:
                self._posted[event] = now
                out.append(event)
        return out
