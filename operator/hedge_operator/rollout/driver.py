"""Does I/O: one ModelDeployment's next rollout move, with the canary's analysis window.

Every reconcile asks `rollout.machine.decide` how many pods each revision gets, from the
state in status.rollout, the observed pods, the command annotations and the canary's
analysis window: the gateways' counters since the step began (from a `RevisionSource`),
minus the baseline read when the step began. The baseline is kept here, in memory, per
ModelDeployment, so after an operator restart the window of the step in progress starts
again from the restart.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from hedge_core.api import ModelDeployment, RolloutStatus
from hedge_core.statuses import ROLLOUT, read
from hedge_operator import metrics
from hedge_operator.dataplane.signals import RevisionStats
from hedge_operator.events import Event
from hedge_operator.provisioning.observed import Observed
from hedge_operator.rollout import convert
from hedge_operator.rollout import machine as rollout
from hedge_operator.rollout.convert import RolloutReport

log = logging.getLogger(__name__)

#: Each revision's cumulative numbers as the gateways counted them, for one ModelDeployment
#: (None: no gateway could be read). The operator's data plane provides it.
RevisionSource = Callable[[str, str], Awaitable[Mapping[str, RevisionStats] | None]]

#: Which step a window belongs to: (canary revision, step start as in status).
_StepKey = tuple[str | None, str | None]


@dataclass
class Move:
    decision: rollout.Decision
    status: dict[str, Any]  # status.rollout
    report: RolloutReport
    events: list[Event]


@dataclass
class _Window:
    step: _StepKey
    #: Each revision's cumulative numbers when the step began (None: no numbers yet, the
    #: first ones read become the baseline).
    baseline: dict[str, RevisionStats] | None


class RolloutDriver:
    """The rollout moves of every ModelDeployment, by uid."""

    def __init__(
        self,
        wall: Callable[[], float],
        now: Callable[[], str],
        source: RevisionSource | None = None,
    ) -> None:
        self._wall = wall
        self._now = now
        self.source = source
        self._windows: dict[str, _Window] = {}

    def forget(self, uid: str) -> None:
        self._windows.pop(uid, None)

    async def _numbers(self, md: ModelDeployment) -> Mapping[str, RevisionStats] | None:
        if self.source is None:
            return None
        try:
            return await self.source(md.namespace, md.name)
        except Exception:  # the analysis waits rather than the reconcile failing
            log.exception("%s/%s: reading the gateways' numbers", md.namespace, md.name)
            return None

    def _window(
        self, uid: str, step: _StepKey, numbers: Mapping[str, RevisionStats] | None
    ) -> dict[str, RevisionStats]:
        """The analysis window of `step`, which starts (its baseline is taken) when first
        seen or when the first numbers arrive."""
        window = self._windows.get(uid)
        if window is None or window.step != step:
            window = self._windows[uid] = _Window(step, _copy(numbers))
        elif window.baseline is None and numbers is not None:
            window.baseline = dict(numbers)
        if numbers is None or window.baseline is None:
            return {}
        return convert.windows(numbers, window.baseline)

    async def move(
        self,
        md: ModelDeployment,
        meta: Mapping[str, Any],
        previous: Mapping[str, Any],
        observed: Observed,
        revision: str,
        desired: int,
    ) -> Move:
        """The rollout's next move (pods per revision, canary weight, status.rollout) for
        `desired` engine pods (spec.replicas, or the autoscaler's count)."""
        spec = md.spec.rollout
        before: Mapping[str, Any] = previous.get(ROLLOUT) or {}
        was = read(RolloutStatus, before)
        seen = convert.read_commands(meta.get("annotations") or {}, was.handled_commands, revision)
        policy = rollout.Policy.from_spec(spec, desired, paused=seen.paused)
        state = convert.state_from(before)
        now = self._wall()

        numbers = await self._numbers(md)
        key = (state.canary, was.step_start_time)
        windows = self._window(md.uid, key, numbers)
        decision = rollout.decide(
            policy,
            state,
            revision,
            desired,
            convert.revisions_from(observed),
            windows,
            seen.commands,
            now,
        )
        status, report = convert.rollout_status(
            decision,
            spec.strategy,
            revision,
            paused=policy.paused,
            handled=seen.handled,
            previous=before,
            now=self._now(),
        )
        report = replace(report, stable=decision.state.stable)
        step = (decision.state.canary, read(RolloutStatus, status).step_start_time)
        if step != key:  # a new step: its window starts now
            self._windows[md.uid] = _Window(step, _copy(numbers))
        metrics.record_rollout(md.namespace, md.name, decision, windows)
        events = convert.events_for(decision, seen, before, report.paused)
        return Move(decision, status, report, events)


def _copy(numbers: Mapping[str, RevisionStats] | None) -> dict[str, RevisionStats] | None:
    return dict(numbers) if numbers is not None else None
