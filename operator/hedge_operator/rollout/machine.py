"""Pure rollout decisions: how many pods each revision gets and what share of the traffic the
canary takes, step by step, from what the operator observes and what the gateways measured.

No I/O and no clock: the caller passes the policy (spec.rollout), the state (status.rollout),
each revision's pods, the analysis windows and the time; it gets back replicas per revision,
the canary weight, the next state and the Events. The state lives in status, so a restarted
operator carries on where it was and nothing is ever left half-promoted.

    no rollout   the spec's revision is the stable one: it gets the desired replicas, any
                 other revision is scaled away
    Canary       step i sends weight_i % of the traffic to the new revision once its pods for
                 that share are ready; at the end of the step's pause the canary is judged
                 against the stable revision (error rate, TTFT and ITL ratios, after a
                 minimum of requests): pass → next step, fail → abort, too few requests → wait.
                 A tripwire aborts at once on a hard failure. After the last step the canary
                 is promoted: its pods become the stable revision's, the old revision scales
                 down as the new one fills up
    RollingUpdate  the new revision replaces the old one pod by pod
    both         honour maxSurge (the free GPUs a rollout may use) and maxUnavailable; a new
                 revision whose pods crash, cannot pull their image, wait for a node longer
                 than gpuWaitSeconds or are not ready within the progress deadline is aborted:
                 scaled to zero, stable untouched. An aborted revision stays aborted until the
                 spec changes again or a person asks for a retry; a newer spec replaces a
                 rollout in progress (the intermediate revision is scaled away)

GPUs: a pod holds its GPU until it is gone, not when its Deployment is scaled down (a
terminating pod still counts for the scheduler). So the budget counts every pod that still
exists (`Revision.pods`), not only what the Deployments ask for: a new pod is asked for only
once the pod it replaces has left, and a rollout never needs more free GPUs than maxSurge.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from hedge_core.api import RolloutSpec
from hedge_operator.dataplane.signals import RevisionStats
from hedge_operator.events import Event
from hedge_operator.rollout.analysis import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    TRIPWIRE_Z,
    Thresholds,
    Verdict,
    judge,
    tripped,
    wilson_lower,
)

__all__ = [
    "FAIL",
    "INCONCLUSIVE",
    "PASS",
    "TRIPWIRE_Z",
    "Thresholds",
    "Verdict",
    "judge",
    "tripped",
    "wilson_lower",
]

CANARY = "Canary"
ROLLING_UPDATE = "RollingUpdate"


# ------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Step:
    weight: int  # percent
    pause: float  # seconds


@dataclass(frozen=True)
class Policy:
    strategy: str
    steps: tuple[Step, ...]
    max_surge: int
    max_unavailable: int
    thresholds: Thresholds = field(default_factory=Thresholds)
    progress_deadline: float = 1800.0
    gpu_wait: float = 300.0
    paused: bool = False

    @classmethod
    def from_spec(cls, spec: RolloutSpec, desired: int, *, paused: bool = False) -> Policy:
        """Resolves percentages against the desired replicas (surge rounded up, unavailable
        rounded down, as a Deployment does; if both come to 0, one pod may be unavailable)."""
        surge = resolve(spec.max_surge, desired, round_up=True)
        unavailable = resolve(spec.max_unavailable, desired, round_up=False)
        if surge == 0 and unavailable == 0:
            unavailable = 1
        a = spec.analysis
        return cls(
            strategy=spec.strategy,
            steps=tuple(Step(s.weight, float(s.pause_seconds)) for s in spec.steps),
            max_surge=surge,
            max_unavailable=unavailable,
            thresholds=Thresholds(
                max_error_rate=a.max_error_rate_percent / 100,
                max_ttft_ratio=a.max_ttft_ratio,
                max_itl_ratio=a.max_itl_ratio,
                min_ttft_increase=a.min_ttft_increase_milliseconds / 1000,
                min_itl_increase=a.min_itl_increase_milliseconds / 1000,
                min_requests=a.min_requests,
                tripwire_error_rate=a.tripwire_error_rate_percent / 100,
                tripwire_min_requests=a.tripwire_min_requests,
            ),
            progress_deadline=float(spec.progress_deadline_seconds),
            gpu_wait=float(spec.gpu_wait_seconds),
            paused=spec.paused or paused,
        )


def resolve(value: str, desired: int, *, round_up: bool) -> int:
    """`2` -> 2; `25%` of 10 -> 3 rounded up, 2 rounded down."""
    if value.endswith("%"):
        exact = desired * int(value[:-1]) / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value)


@dataclass(frozen=True)
class Revision:
    """One revision's engine Deployment and pods, as observed."""

    name: str
    replicas: int = 0  # what its Deployment is asked for
    ready: int = 0
    starting: int = 0  # scheduled, not ready, nothing wrong yet
    pods: int = 0  # pods that exist (terminating ones too): they hold their GPUs
    unschedulable_since: float | None = None  # earliest pod still waiting for a node
    failing: str | None = None  # e.g. "CrashLoopBackOff: pod x container engine: …"
    created: float | None = None  # when its Deployment was created
    #: Creation of its oldest pod that is not ready yet (the progress deadline counts from
    #: there: a later step's pods get the whole deadline to load their model too).
    loading_since: float | None = None


@dataclass(frozen=True)
class State:
    """status.rollout, as plain values."""

    stable: str | None = None
    canary: str | None = None  # the revision being rolled out (either strategy)
    step: int = 0  # 1-based canary step; 0 before the first step got its traffic
    weight: int = 0
    step_started: float | None = None
    aborted: str | None = None
    abort_reason: str | None = None


@dataclass(frozen=True)
class Commands:
    """What a person asked for (annotations naming the revision, or spec.rollout.paused)."""

    promote: bool = False
    abort: bool = False
    retry: bool = False
    by: str = "a person"  # who asked, for the Events (e.g. the annotation)


# ------------------------------------------------------------------------------ outputs


@dataclass(frozen=True)
class Decision:
    replicas: Mapping[str, int]  # every revision that should have pods; others go to zero
    weight: int | None  # the canary's share in percent; None: no split (all ready pods)
    state: State
    events: Sequence[Event] = ()
    verdict: Verdict | None = None
    progressing: bool = False
    message: str = ""  # one line for the Progressing/Degraded conditions

    @property
    def aborted(self) -> bool:
        return self.state.aborted is not None and self.state.canary is None


# ------------------------------------------------------------------------ pod movement


def shift(
    desired: int,
    policy: Policy,
    new: Revision,
    new_target: int,
    olds: Sequence[tuple[Revision, int]],
) -> dict[str, int]:
    """One move of pods from the old revisions to the new one within the budgets.

    The new revision grows as far as the surge allows (pods asked for or still there, over
    every revision, <= desired + maxSurge: the GPUs a rollout may use); old revisions shrink
    as far as availability allows (ready pods >= desired - maxUnavailable). Old pods that are
    not ready serve nothing and go at once. `olds` are (revision, target) pairs, the first to
    shrink first.
    """
    floor = max(0, desired - policy.max_unavailable)
    ready_total = new.ready + sum(r.ready for r, _ in olds)
    removable = max(0, ready_total - floor)
    out: dict[str, int] = {}
    for old, target in olds:
        keep = min(old.replicas, old.ready)  # unready old pods are let go
        drop = min(max(0, keep - target), removable)
        removable -= drop
        out[old.name] = max(target, keep - drop)
    ceiling = desired + policy.max_surge
    # A pod scaled away keeps its GPU until it has terminated.
    room = ceiling - sum(max(out[old.name], old.pods) for old, _ in olds)
    out[new.name] = max(0, min(new_target, max(new.replicas, room)))
    if new.replicas > new_target:
        out[new.name] = new_target
    return out


def canary_pods(desired: int, weight: int) -> int:
    """Pods the canary needs to carry `weight` % of the traffic (at least one)."""
    if desired <= 0:
        return 0
    return max(1, min(desired, math.ceil(desired * weight / 100)))


# ------------------------------------------------------------------------- the machine


def decide(
    policy: Policy,
    state: State,
    target: str,
    desired: int,
    revisions: Mapping[str, Revision],
    windows: Mapping[str, RevisionStats],
    commands: Commands,
    now: float,
) -> Decision:
    """The next move. `target` is the spec's revision; `windows` hold each revision's
    numbers since the current step began.

        _with_stable    first reconcile (or status lost): the oldest running revision is stable
        _settle         the spec's revision is stable: no rollout
        desired 0       nothing runs: nothing to compare or move, the spec's revision is stable
        _aborted        the spec's revision was aborted and nobody asked for a retry
        _begin          a retry, or a new spec (which replaces a rollout in progress)
        _why_abort      cannot start, aborted by a person, or the canary's tripwire
        _promote_or_roll  promoted (by a person, or the stable revision has no pods left), or
                        a RollingUpdate step (held where it is while paused)
        _canary         a Canary step
    """
    state = _with_stable(state, target, revisions)
    stable = state.stable
    assert stable is not None
    if target == stable:
        return _settle(policy, state, target, desired, revisions)
    if desired == 0:
        return Decision(
            {target: 0},
            None,
            State(stable=target, aborted=None),
            [Event("Normal", "RolloutCompleted", f"revision {target} is stable (no replicas)")],
        )
    if state.aborted == target and not commands.retry:
        return _aborted(policy, state, stable, target, desired, revisions)
    state, events = _begin(policy, state, stable, target, commands)
    new = revisions.get(target) or Revision(target)
    why = _why_abort(policy, state, new, windows.get(target, RevisionStats()), commands, now)
    if why is not None:
        return _abort(policy, state, stable, target, desired, revisions, why, events)

    leftovers = [(revisions[name], 0) for name in sorted(revisions) if name not in (stable, target)]
    if policy.strategy == CANARY and stable not in revisions and not commands.promote:
        # The stable revision is gone (deleted by hand): nothing to compare with or fall back
        # to, so the canary takes over.
        commands = replace(commands, promote=True, by=f"revision {stable} has no pods left")
    if commands.promote:
        return _promote_or_roll(policy, state, stable, target, desired, revisions, leftovers,
                                events, commands.by)  # fmt: skip
    if policy.strategy != CANARY:
        return _rolling(policy, state, stable, target, desired, revisions, leftovers, events)
    return _canary(policy, state, stable, target, desired, revisions, leftovers, windows,
                   events, now)  # fmt: skip


def _with_stable(state: State, target: str, revisions: Mapping[str, Revision]) -> State:
    """First reconcile (or status lost): the oldest revision with ready pods is stable."""
    stable = state.stable
    if stable is not None and (stable in revisions or stable == target or state.canary is not None):
        return state
    running = sorted(
        (r for r in revisions.values() if r.ready > 0 and r.name != target),
        key=lambda r: (r.created or 0.0, r.name),
    )
    return replace(state, stable=running[0].name if running else target)


def _begin(
    policy: Policy, state: State, stable: str, target: str, commands: Commands
) -> tuple[State, list[Event]]:
    """A retry of an aborted revision, or a new spec's rollout starting (replacing one in
    progress): the state it starts from and the Events that say so."""
    events: list[Event] = []
    if state.aborted == target:  # only reached with commands.retry
        state = replace(state, aborted=None, abort_reason=None, canary=None)
        events.append(
            Event("Normal", "RolloutRetried", f"retrying revision {target} ({commands.by})")
        )
    if state.canary == target:
        return state, events
    if state.canary is not None:
        events.append(
            Event(
                "Normal",
                "RolloutReplaced",
                f"revision {target} replaces the rollout of {state.canary}",
            )
        )
    # A new spec: an earlier abort (of another revision) is history now.
    state = replace(
        state, canary=target, step=0, weight=0, step_started=None, aborted=None,
        abort_reason=None,
    )  # fmt: skip
    events.append(
        Event(
            "Normal",
            "RolloutStarted",
            f"rolling out revision {target} over {stable} ({policy.strategy}, "
            f"maxSurge {policy.max_surge}, maxUnavailable {policy.max_unavailable})",
        )
    )
    return state, events


def _why_abort(
    policy: Policy,
    state: State,
    new: Revision,
    window: RevisionStats,
    commands: Commands,
    now: float,
) -> str | None:
    """Why the new revision must be aborted now, if it must: it cannot start (unless a
    person promotes it), a person aborts it, or the canary's tripwire fired."""
    why = None if commands.promote else _cannot_start(policy, new, now)
    if commands.abort:
        why = f"aborted by {commands.by}"
    if why is None and policy.strategy == CANARY and state.weight > 0 and not commands.promote:
        why = tripped(window, policy.thresholds)
    return why


def _rolling(
    policy: Policy,
    state: State,
    stable: str,
    target: str,
    desired: int,
    revisions: Mapping[str, Revision],
    leftovers: list[tuple[Revision, int]],
    events: list[Event],
) -> Decision:
    """A RollingUpdate step; while paused every revision is held where it is."""
    if not policy.paused:
        return _promote_or_roll(policy, state, stable, target, desired, revisions, leftovers,
                                events, None)  # fmt: skip
    held = {name: r.replicas for name, r in revisions.items()}
    held.setdefault(target, 0)
    new = revisions.get(target) or Revision(target)
    message = f"paused: revision {target} has {new.ready} of {desired} pod(s) ready"
    return Decision(held, None, state, events, progressing=True, message=message)


def _settle(
    policy: Policy, state: State, stable: str, desired: int, revisions: Mapping[str, Revision]
) -> Decision:
    """No rollout: the stable revision gets every replica; any other revision shrinks as the
    stable one fills up (right after a promotion, or when a rollout was cancelled)."""
    events = []
    if state.canary is not None and state.canary != stable:
        events.append(
            Event(
                "Normal",
                "RolloutCancelled",
                f"the spec is back at revision {stable}: {state.canary} is scaled away",
            )
        )
    others = [(revisions[name], 0) for name in sorted(revisions) if name != stable]
    current = revisions.get(stable) or Revision(stable)
    replicas = shift(desired, policy, current, desired, others)
    next_state = State(stable=stable, aborted=state.aborted, abort_reason=state.abort_reason)
    draining = [r.name for r, _ in others if replicas[r.name] > 0]
    message = (
        f"revision {stable}: {current.ready} of {desired} ready; scaling down "
        + ", ".join(draining)
        if draining
        else ""
    )
    return Decision(replicas, None, next_state, events, progressing=bool(draining), message=message)


def _cannot_start(policy: Policy, new: Revision, now: float) -> str | None:
    if new.failing:
        return f"revision {new.name} cannot start: {new.failing}"
    if new.unschedulable_since is not None and now - new.unschedulable_since >= policy.gpu_wait:
        return (
            f"revision {new.name}: a pod waited {now - new.unschedulable_since:.0f}s for a node "
            f"(gpuWaitSeconds {policy.gpu_wait:.0f})"
        )
    if new.loading_since is not None and now - new.loading_since >= policy.progress_deadline:
        return (
            f"revision {new.name}: a pod is not ready {now - new.loading_since:.0f}s after it "
            f"was created ({new.ready} of {new.replicas} ready; progressDeadlineSeconds "
            f"{policy.progress_deadline:.0f})"
        )
    return None


def _abort(
    policy: Policy,
    state: State,
    stable: str,
    target: str,
    desired: int,
    revisions: Mapping[str, Revision],
    why: str,
    events: list[Event],
) -> Decision:
    events.append(
        Event("Warning", "RolloutAborted", f"{why}; traffic back on {stable}, {target} scaled to 0")
    )
    aborted = State(stable=stable, aborted=target, abort_reason=why)
    return replace(
        _aborted(policy, aborted, stable, target, desired, revisions),
        events=events,
        progressing=False,
    )


def _aborted(
    policy: Policy,
    state: State,
    stable: str,
    target: str,
    desired: int,
    revisions: Mapping[str, Revision],
) -> Decision:
    """The aborted revision at zero at once (its GPUs are freed, it gets no traffic); the
    stable revision grows back to the desired count as those GPUs come free."""
    current = revisions.get(stable) or Revision(stable)
    others = [(revisions[name], 0) for name in sorted(revisions) if name != stable]
    if target not in revisions:
        others.append((Revision(target), 0))
    gone = replace(policy, max_unavailable=desired)  # nothing else serves: no floor to keep
    replicas = shift(desired, gone, current, desired, others)
    return Decision(
        replicas,
        0,
        State(stable=stable, aborted=target, abort_reason=state.abort_reason),
        message=f"rollout of {target} aborted: {state.abort_reason}",
    )


def _promote_or_roll(
    policy: Policy,
    state: State,
    stable: str,
    target: str,
    desired: int,
    revisions: Mapping[str, Revision],
    leftovers: list[tuple[Revision, int]],
    events: list[Event],
    promoted_by: str | None,
) -> Decision:
    """A promoted canary (`promoted_by` says who or what), or a RollingUpdate step.
    Promotion makes the canary's pods the stable revision's as they are (no weights
    reloaded); the old revision then shrinks as the new one fills up (`_settle` from the
    next reconcile on). A RollingUpdate moves pods
    from the old revision to the new one and becomes stable once it is complete. Neither
    splits traffic: every ready pod serves."""
    new = revisions.get(target) or Revision(target)
    olds = [*leftovers, (revisions.get(stable) or Revision(stable), 0)]
    replicas = shift(desired, policy, new, desired, olds)
    if promoted_by is not None:
        events.append(
            Event(
                "Normal",
                "RolloutPromoted",
                f"revision {target} promoted over {stable} ({promoted_by}); {stable} scales "
                f"down as {target} fills up",
            )
        )
        settled = _settle(policy, State(stable=target), target, desired, revisions)
        return replace(settled, events=events)
    if new.ready >= desired and all(replicas[r.name] == 0 for r, _ in olds):
        events.append(Event("Normal", "RolloutCompleted", f"revision {target} is stable"))
        return Decision(replicas, None, State(stable=target), events)
    return Decision(
        replicas,
        None,
        replace(state, canary=target),
        events,
        progressing=True,
        message=f"revision {target}: {new.ready} of {desired} ready",
    )


@dataclass(frozen=True)
class _Canary:
    """One canary reconcile's inputs; the methods are its steps, in the order `_canary`
    tries them."""

    policy: Policy
    stable: str
    target: str
    desired: int
    revisions: Mapping[str, Revision]
    leftovers: list[tuple[Revision, int]]
    windows: Mapping[str, RevisionStats]
    events: list[Event]
    now: float

    @property
    def new(self) -> Revision:
        return self.revisions.get(self.target) or Revision(self.target)

    def of(self, index: int) -> str:
        return f"step {index} of {len(self.policy.steps)}"

    def pods_for(self, weight: int) -> tuple[int, dict[str, int]]:
        """The canary pods a weight needs, and every revision's pods while they come."""
        want = canary_pods(self.desired, weight)
        stable_want = self.desired - max(0, want - self.policy.max_surge)
        old = self.revisions.get(self.stable) or Revision(self.stable)
        return want, shift(
            self.desired, self.policy, self.new, want, [*self.leftovers, (old, stable_want)]
        )

    def moving(self, state: State, replicas: Mapping[str, int], message: str,
               verdict: Verdict | None = None) -> Decision:  # fmt: skip
        return Decision(
            replicas, state.weight, state, self.events, verdict, progressing=True, message=message
        )

    def prepare(self, state: State, index: int) -> Decision | None:
        """The step's traffic starts once the canary's pods for it are ready."""
        if state.step_started is not None and state.step == index:
            return None
        step = self.policy.steps[index - 1]
        want, replicas = self.pods_for(step.weight)
        new = self.new
        if new.ready >= want:
            state = replace(state, step=index, weight=step.weight, step_started=self.now)
            self.events.append(
                Event(
                    "Normal",
                    "RolloutStep",
                    f"{self.of(index)}: {step.weight}% of the traffic to "
                    f"{self.target} ({new.ready} pod(s)), {self.stable} keeps the rest",
                )
            )
        message = f"{self.of(index)}: waiting for {want} canary pod(s) ({new.ready} ready)"
        return self.moving(state, replicas, message)

    def hold(self, state: State, index: int) -> Decision | None:
        """Paused, or the step's pause is not over. Messages go into status: they say
        nothing that changes every tick (no write per tick)."""
        step = self.policy.steps[index - 1]
        _, replicas = self.pods_for(step.weight)
        if self.policy.paused:
            message = f"paused at {self.of(index)} ({step.weight}%)"
            return self.moving(state, replicas, message)
        if state.step_started is not None and self.now - state.step_started < step.pause:
            message = (
                f"{self.of(index)}: {step.weight}% of the traffic to {self.target} for "
                f"{step.pause:.0f}s, then judged"
            )
            return self.moving(state, replicas, message)
        return None

    def judge(self, state: State, index: int) -> tuple[Decision | None, Verdict | None]:
        """The end of a step with a pause: pass goes on, fail aborts, too few requests
        wait (a step without a pause is not judged)."""
        step = self.policy.steps[index - 1]
        if step.pause <= 0:
            return None, None
        thresholds = self.policy.thresholds
        verdict = judge(
            self.windows.get(self.target, RevisionStats()),
            self.windows.get(self.stable, RevisionStats()),
            thresholds,
        )
        if verdict.verdict == FAIL:
            aborted = _abort(self.policy, state, self.stable, self.target, self.desired,
                             self.revisions, verdict.message, self.events)  # fmt: skip
            return replace(aborted, verdict=verdict), verdict
        if verdict.verdict == INCONCLUSIVE:
            _, replicas = self.pods_for(step.weight)
            message = (
                f"{self.of(index)} ({step.weight}%): waiting for "
                f"{thresholds.min_requests} canary requests to judge"
            )
            return self.moving(state, replicas, message, verdict), verdict
        self.events.append(
            Event(
                "Normal",
                "RolloutStepPassed",
                f"{self.of(index)} ({step.weight}%) passed: {verdict.message}",
            )
        )
        return None, verdict

    def advance(self, state: State, index: int, verdict: Verdict | None) -> Decision:
        """After the last step the canary is promoted; else the next step: its pods first,
        then its traffic."""
        steps = self.policy.steps
        if index >= len(steps):
            why = f"all {len(steps)} step(s) passed"
            promoted = _promote_or_roll(self.policy, state, self.stable, self.target,
                                        self.desired, self.revisions, self.leftovers,
                                        self.events, why)  # fmt: skip
            return replace(promoted, verdict=verdict)
        state = replace(state, step=index + 1, step_started=None)
        nxt = steps[index]
        want, replicas = self.pods_for(nxt.weight)
        if self.new.ready >= want:
            state = replace(state, weight=nxt.weight, step_started=self.now)
            self.events.append(
                Event(
                    "Normal",
                    "RolloutStep",
                    f"{self.of(index + 1)}: {nxt.weight}% of the traffic to {self.target}",
                )
            )
        return self.moving(state, replicas, f"{self.of(index + 1)} ({nxt.weight}%)", verdict)


def _canary(
    policy: Policy,
    state: State,
    stable: str,
    target: str,
    desired: int,
    revisions: Mapping[str, Revision],
    leftovers: list[tuple[Revision, int]],
    windows: Mapping[str, RevisionStats],
    events: list[Event],
    now: float,
) -> Decision:
    """A Canary step: prepare its pods, hold it for its pause, judge it, then advance."""
    c = _Canary(policy, stable, target, desired, revisions, leftovers, windows, events, now)
    index = max(1, state.step)  # the step being prepared or held
    decision = c.prepare(state, index) or c.hold(state, index)
    if decision is not None:
        return decision
    decision, verdict = c.judge(state, index)
    if decision is not None:
        return decision
    return c.advance(state, index, verdict)
