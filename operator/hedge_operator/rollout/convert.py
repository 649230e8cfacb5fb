"""Pure: the rollout state machine's inputs and outputs as the cluster holds them:

    observed children        -> `rollout.Revision` per revision (pods, readiness, GPUs held)
    status.rollout           <-> `rollout.State` (the state lives in status, not in memory)
    command annotations      -> `rollout.Commands` (each value acts once; pause is declarative)
    the gateways' counters   -> per-revision `RevisionStats` windows since the step began
    a decision               -> status.rollout and a report for the conditions

The reconciler sequences these around `rollout.decide`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from hedge_core.api import (
    ABORT_ANNOTATION,
    PAUSE_ANNOTATION,
    PROMOTE_ANNOTATION,
    RETRY_ANNOTATION,
    AnalysisStatus,
    RevisionMetrics,
    RolloutStatus,
)
from hedge_core.clock import parse_time, rfc3339_ms
from hedge_core.statuses import read, write
from hedge_operator.dataplane.signals import Counters, RevisionStats, revision_stats
from hedge_operator.events import Event
from hedge_operator.provisioning.observed import PROBLEM_ORDER, Observed, PodSummary
from hedge_operator.rollout import machine as rollout
from hedge_operator.rollout.machine import Commands, Decision, Revision, State, Verdict

UNSCHEDULABLE = "Unschedulable"
COMMANDS = (
    ("promote", PROMOTE_ANNOTATION),
    ("abort", ABORT_ANNOTATION),
    ("retry", RETRY_ANNOTATION),
)


@dataclass(frozen=True)
class RolloutReport:
    """What the rollout state machine says, for the conditions."""

    active: bool  # pods are moving between revisions, or a canary runs
    paused: bool  # held by spec.rollout.paused or the pause annotation
    aborted: str | None  # why the spec's revision was aborted (None: it was not)
    message: str  # the state machine's one line
    stable: str | None = None


# ---------------------------------------------------------------------------- revisions


def _failing(pods: list[PodSummary]) -> str | None:
    problems = [p.problem for p in pods if p.problem is not None]
    problems = [p for p in problems if p.reason != UNSCHEDULABLE]
    if not problems:
        return None

    def rank(reason: str) -> int:
        return PROBLEM_ORDER.index(reason) if reason in PROBLEM_ORDER else len(PROBLEM_ORDER)

    worst = min(problems, key=lambda p: rank(p.reason))
    return f"{worst.reason}: {worst.message}"


def revisions_from(observed: Observed) -> dict[str, Revision]:
    """Each revision with a Deployment or pods: what its Deployment asks for, its ready pods
    (the Deployment's count), and what its pods say (GPUs still held, problems, waits)."""
    pods_of: dict[str, list[PodSummary]] = {}
    for pod in observed.pods:
        if pod.revision and not pod.finished:
            pods_of.setdefault(pod.revision, []).append(pod)
    deployments = {d.revision: d for d in observed.deployment_summaries() if d.revision}
    out: dict[str, Revision] = {}
    for name in sorted(set(deployments) | set(pods_of)):
        d = deployments.get(name)
        pods = pods_of.get(name, [])
        live = [p for p in pods if not p.deleting]
        waiting = [
            t
            for p in live
            if p.problem is not None and p.problem.reason == UNSCHEDULABLE
            for t in [parse_time(p.problem_since)]
            if t is not None
        ]
        unready = [t for p in live if not p.ready for t in [parse_time(p.created)] if t is not None]
        out[name] = Revision(
            name,
            replicas=d.spec_replicas if d else 0,
            ready=d.ready if d else sum(p.ready for p in live),
            starting=sum(1 for p in live if not p.ready and p.problem is None),
            pods=len(pods),
            unschedulable_since=min(waiting) if waiting else None,
            failing=_failing(live),
            created=parse_time(d.created) if d else None,
            loading_since=min(unready) if unready else None,
        )
    return out


# -------------------------------------------------------------------------------- state


def state_from(status_rollout: Mapping[str, Any] | None) -> State:
    r = read(RolloutStatus, status_rollout)
    return State(
        stable=r.stable_revision or None,
        canary=r.canary_revision or None,
        step=r.step or 0,
        weight=r.canary_weight or 0,
        step_started=parse_time(r.step_start_time),
        aborted=r.aborted_revision or None,
        abort_reason=r.abort_reason or None,
    )


# ----------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class CommandsSeen:
    commands: Commands
    paused: bool  # a pause annotation names the revision being rolled out
    handled: dict[str, str]  # for status.rollout.handledCommands
    events: list[Event] = field(default_factory=list)


def read_commands(
    annotations: Mapping[str, str], handled: Mapping[str, str], target: str
) -> CommandsSeen:
    """The commands given since the last reconcile. A value acts once: it is recorded as
    handled (and forgotten when the annotation goes, so the same value may be given again
    later). A value naming another revision than the spec's is ignored, with an Event."""
    flags: dict[str, bool] = {}
    givers: list[str] = []
    done: dict[str, str] = {}
    events: list[Event] = []
    for kind, key in COMMANDS:
        value = annotations.get(key)
        if value is None:
            continue
        done[kind] = value
        if handled.get(kind) == value:
            continue
        named = value.split("/", 1)[0].strip()
        if named != target:
            events.append(
                Event(
                    "Warning",
                    "RolloutCommandIgnored",
                    f"{key}={value} names revision {named!r}, but the spec's revision is {target}",
                )
            )
            continue
        flags[kind] = True
        givers.append(f"{key}={value}")
    pause = annotations.get(PAUSE_ANNOTATION)
    paused = pause is not None and pause.split("/", 1)[0].strip() == target
    commands = Commands(
        promote=flags.get("promote", False),
        abort=flags.get("abort", False),
        retry=flags.get("retry", False),
        by=", ".join(givers) or "a person",
    )
    return CommandsSeen(commands, paused, done, events)


# ------------------------------------------------------------------------------ windows


def cumulative(counters: Counters, namespace: str, name: str) -> dict[str, RevisionStats]:
    """Every revision of one ModelDeployment the gateways counted, since they started."""
    revisions = {key[3] for key in counters.totals(("requests", namespace, name))}
    return {rev: revision_stats(counters, (namespace, name, rev)) for rev in revisions}


def windows(
    now: Mapping[str, RevisionStats], baseline: Mapping[str, RevisionStats]
) -> dict[str, RevisionStats]:
    """What each revision did since the baseline was taken."""
    return {rev: stats.minus(baseline.get(rev, RevisionStats())) for rev, stats in now.items()}


# ------------------------------------------------------------------------------- status


def _metrics(stats: RevisionStats) -> RevisionMetrics:
    def rounded(value: float | None, digits: int) -> float | None:
        return None if value is None else round(value, digits)

    rate = stats.error_rate
    return RevisionMetrics(
        requests=int(stats.requests),
        error_rate_percent=None if rate is None else round(rate * 100, 2),
        ttft_mean_seconds=rounded(stats.ttft_mean, 4),
        itl_mean_seconds=rounded(stats.itl_mean, 5),
    )


def analysis_status(verdict: Verdict, now: str) -> AnalysisStatus:
    return AnalysisStatus(
        time=now,
        verdict=cast(Any, verdict.verdict),  # one of Verdict's three values
        message=verdict.message[:1024],
        canary=_metrics(verdict.canary),
        stable=_metrics(verdict.stable),
    )


def rollout_status(
    decision: Decision,
    strategy: str,
    target: str,
    *,
    paused: bool,
    handled: Mapping[str, str],
    previous: Mapping[str, Any] | None,
    now: str,
) -> tuple[dict[str, Any], RolloutReport]:
    """status.rollout for a decision, and the report the conditions are made from.

    A judgement that still waits for requests is recorded once per step: its counts change
    every tick, and writing status every tick would cost an API write per second per
    ModelDeployment (the operator's metrics carry the live numbers)."""
    before = read(RolloutStatus, previous)
    state = decision.state
    in_rollout = state.canary is not None and state.canary == target
    canary_steps = bool(state.canary) and strategy == rollout.CANARY
    step_start = (
        rfc3339_ms(state.step_started) if canary_steps and state.step_started is not None else None
    )
    last = before.last_analysis
    verdict = decision.verdict
    if verdict is not None:
        same_wait = (
            verdict.verdict == rollout.INCONCLUSIVE
            and last is not None
            and last.verdict == rollout.INCONCLUSIVE
            and before.step_start_time == step_start
        )
        if not same_wait:
            last = analysis_status(verdict, now)
    status = RolloutStatus(
        strategy=strategy,
        stable_revision=state.stable or None,
        canary_revision=state.canary or None,
        step=state.step if canary_steps else None,
        canary_weight=(decision.weight or 0) if canary_steps else None,
        step_start_time=step_start,
        paused=True if state.canary and paused else None,
        aborted_revision=state.aborted or None,
        abort_reason=state.abort_reason[:1024] if state.aborted and state.abort_reason else None,
        last_analysis=last,
        handled_commands=dict(handled),
    )
    out = write(status)
    report = RolloutReport(
        active=in_rollout or decision.progressing,
        paused=paused and in_rollout,
        aborted=(state.abort_reason or "aborted") if state.aborted == target else None,
        message=decision.message,
    )
    return out, report


def events_for(
    decision: Decision, seen: CommandsSeen, previous: Mapping[str, Any] | None, paused: bool
) -> list[Event]:
    """The decision's Events, the ignored commands, and pause/resume transitions."""
    events = [*seen.events, *decision.events]
    was = bool(read(RolloutStatus, previous).paused)
    canary = decision.state.canary
    if canary is not None and paused != was:
        if paused:
            events.append(Event("Normal", "RolloutPaused", f"rollout of {canary} paused"))
        else:
            events.append(Event("Normal", "RolloutResumed", f"rollout of {canary} resumed"))
    return events
