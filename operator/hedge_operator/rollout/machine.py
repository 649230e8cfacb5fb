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
    numbers since the current step began."""
    stable = state.stable
    if stable is None or (stable not in revisions and stable != target and state.canary is None):
        # First reconcile (or status lost): the oldest revision with ready pods is stable.
        running = sorted(
            (r for r in revisions.values() if r.ready > 0 and r.name != target),
            key=lambda r: (r.created or 0.0, r.name),
        )
        stable = running[0].name if running else target
        state = replace(state, stable=stable)

    if target == stable:
        return _settle(policy, state, target, desired, revisions)

    if desired == 0:  # nothing runs: there is nothing to compare or move
        return Decision(
            {target: 0},
            None,
            State(stable=target, aborted=None),
            [Event("Normal", "RolloutCompleted", f"revision {target} is stable (no replicas)")],
        )

    events: list[Event] = []
    if state.aborted == target:
        if not commands.retry:
            return _aborted(policy, state, stable, target, desired, revisions)
        state = replace(state, aborted=None, abort_reason=None, canary=None)
        events.append(
            Event("Normal", "RolloutRetried", f"retrying revision {target} ({commands.by})")
        )

    if state.canary != target:
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

    new = revisions.get(target) or Revision(target)
    why = None if commands.promote else _cannot_start(policy, new, now)
    if commands.abort:
        why = f"aborted by {commands.by}"
    if why is None and policy.strategy == CANARY and state.weight > 0 and not commands.promote:
        why = tripped(windows.get(target, RevisionStats()), policy.thresholds)
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
        if policy.paused:  # hold every revision where it is
            held = {name: r.replicas for name, r in revisions.items()}
            held.setdefault(target, 0)
            message = f"paused: revision {target} has {new.ready} of {desired} pod(s) ready"
            return Decision(held, None, state, events, progressing=True, message=message)
        return _promote_or_roll(policy, state, stable, target, desired, revisions, leftovers,
                                events, None)  # fmt: skip
    return _canary(policy, state, stable, target, desired, revisions, leftovers, windows,
                   events, now)  # fmt: skip


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
    steps = policy.steps
    index = max(1, state.step)  # the step being prepared or held
    step = steps[index - 1]
    new = revisions.get(target) or Revision(target)
    old = revisions.get(stable) or Revision(stable)
    want = canary_pods(desired, step.weight)
    stable_want = desired - max(0, want - policy.max_surge)
    replicas = shift(desired, policy, new, want, [*leftovers, (old, stable_want)])
    verdict: Verdict | None = None

    if state.step_started is None or state.step != index:
        # The step's traffic starts once the canary's pods for it are ready.
        if new.ready >= want:
            state = replace(state, step=index, weight=step.weight, step_started=now)
            events.append(
                Event(
                    "Normal",
                    "RolloutStep",
                    f"step {index} of {len(steps)}: {step.weight}% of the traffic to "
                    f"{target} ({new.ready} pod(s)), {stable} keeps the rest",
                )
            )
        message = (
            f"step {index} of {len(steps)}: waiting for {want} canary pod(s) ({new.ready} ready)"
        )
        return Decision(replicas, state.weight, state, events, progressing=True, message=message)

    # Messages go into status: they say nothing that changes every tick (no write per tick).
    held = now - state.step_started
    if policy.paused:
        message = f"paused at step {index} of {len(steps)} ({step.weight}%)"
        return Decision(replicas, state.weight, state, events, progressing=True, message=message)
    if held < step.pause:
        message = (
            f"step {index} of {len(steps)}: {step.weight}% of the traffic to {target} for "
            f"{step.pause:.0f}s, then judged"
        )
        return Decision(replicas, state.weight, state, events, progressing=True, message=message)

    if step.pause > 0:
        verdict = judge(
            windows.get(target, RevisionStats()),
            windows.get(stable, RevisionStats()),
            policy.thresholds,
        )
        if verdict.verdict == FAIL:
            return replace(
                _abort(policy, state, stable, target, desired, revisions, verdict.message, events),
                verdict=verdict,
            )
        if verdict.verdict == INCONCLUSIVE:
            message = (
                f"step {index} of {len(steps)} ({step.weight}%): waiting for "
                f"{policy.thresholds.min_requests} canary requests to judge"
            )
            return Decision(
                replicas, state.weight, state, events, verdict, progressing=True, message=message
            )
        events.append(
            Event(
                "Normal",
                "RolloutStepPassed",
                f"step {index} of {len(steps)} ({step.weight}%) passed: {verdict.message}",
            )
        )
    if index >= len(steps):
        return replace(
            _promote_or_roll(
                policy,
                state,
                stable,
                target,
                desired,
                revisions,
                leftovers,
                events,
                f"all {len(steps)} step(s) passed",
            ),
            verdict=verdict,
        )
    # Next step: its pods first, then its traffic.
    state = replace(state, step=index + 1, step_started=None)
    nxt = steps[index]
    want = canary_pods(desired, nxt.weight)
    stable_want = desired - max(0, want - policy.max_surge)
    replicas = shift(desired, policy, new, want, [*leftovers, (old, stable_want)])
    if new.ready >= want:
        state = replace(state, weight=nxt.weight, step_started=now)
        events.append(
            Event(
                "Normal",
                "RolloutStep",
                f"step {index + 1} of {len(steps)}: {nxt.weight}% of the traffic to {target}",
            )
        )
    return Decision(
        replicas,
        state.weight,
        state,
        events,
        verdict,
        progressing=True,
        message=f"step {index + 1} of {len(steps)} ({nxt.weight}%)",
    )
