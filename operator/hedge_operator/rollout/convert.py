"""The rollout state machine's inputs and outputs as the cluster holds them, pure:

    observed children        -> `rollout.Revision` per revision (pods, readiness, GPUs held)
    status.rollout           <-> `rollout.State` (the state lives in status, not in memory)
    command annotations      -> `rollout.Commands` (each value acts once; pause is declarative)
    the gateways' counters   -> per-revision `RevisionStats` windows since the step began
    a decision               -> status.rollout and a report for the conditions

The reconciler sequences these around `rollout.decide`.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hedge_core.api import (
    ABORT_ANNOTATION,
    PAUSE_ANNOTATION,
    PROMOTE_ANNOTATION,
    RETRY_ANNOTATION,
)
from hedge_operator.dataplane.signals import Counters, RevisionStats, revision_stats
from hedge_operator.events import Event
from hedge_operator.provisioning.observed import Observed, PodSummary
from hedge_operator.reconcile.status import PROBLEM_ORDER, RolloutReport
from hedge_operator.rollout import machine as rollout
from hedge_operator.rollout.machine import Commands, Decision, Revision, State, Verdict

UNSCHEDULABLE = "Unschedulable"
COMMANDS = (
    ("promote", PROMOTE_ANNOTATION),
    ("abort", ABORT_ANNOTATION),
    ("retry", RETRY_ANNOTATION),
)


# --------------------------------------------------------------------------------- time


def parse_time(value: object) -> float | None:
    """An RFC 3339 time from the API (`2026-01-01T00:00:00Z`, fractions allowed) as Unix
    seconds; None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


def format_time(seconds: float) -> str:
    """Unix seconds as RFC 3339 with milliseconds (a step's start is compared to the
    millisecond: it keys the analysis window)."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


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
    r = status_rollout or {}

    def text(key: str) -> str | None:
        value = r.get(key)
        return str(value) if value else None

    return State(
        stable=text("stableRevision"),
        canary=text("canaryRevision"),
        step=int(r.get("step") or 0),
        weight=int(r.get("canaryWeight") or 0),
        step_started=parse_time(r.get("stepStartTime")),
        aborted=text("abortedRevision"),
        abort_reason=text("abortReason"),
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


def _metrics(stats: RevisionStats) -> dict[str, Any]:
    out: dict[str, Any] = {"requests": int(stats.requests)}
    if stats.error_rate is not None:
        out["errorRatePercent"] = round(stats.error_rate * 100, 2)
    if stats.ttft_mean is not None:
        out["ttftMeanSeconds"] = round(stats.ttft_mean, 4)
    if stats.itl_mean is not None:
        out["itlMeanSeconds"] = round(stats.itl_mean, 5)
    return out


def analysis_status(verdict: Verdict, now: str) -> dict[str, Any]:
    return {
        "time": now,
        "verdict": verdict.verdict,
        "message": verdict.message[:1024],
        "canary": _metrics(verdict.canary),
        "stable": _metrics(verdict.stable),
    }


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
    previous = previous or {}
    state = decision.state
    out: dict[str, Any] = {"strategy": strategy}
    if state.stable:
        out["stableRevision"] = state.stable
    in_rollout = state.canary is not None and state.canary == target
    if state.canary:
        out["canaryRevision"] = state.canary
        if strategy == rollout.CANARY:
            out["step"] = state.step
            out["canaryWeight"] = decision.weight or 0
            if state.step_started is not None:
                out["stepStartTime"] = format_time(state.step_started)
        if paused:
            out["paused"] = True
    if state.aborted:
        out["abortedRevision"] = state.aborted
        if state.abort_reason:
            out["abortReason"] = state.abort_reason[:1024]
    last = previous.get("lastAnalysis")
    verdict = decision.verdict
    if verdict is not None:
        same_wait = (
            verdict.verdict == rollout.INCONCLUSIVE
            and isinstance(last, Mapping)
            and last.get("verdict") == rollout.INCONCLUSIVE
            and previous.get("stepStartTime") == out.get("stepStartTime")
        )
        if not same_wait:
            last = analysis_status(verdict, now)
    if last:
        out["lastAnalysis"] = last
    if handled:
        out["handledCommands"] = dict(handled)
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
    was = bool((previous or {}).get("paused"))
    canary = decision.state.canary
    if canary is not None and paused != was:
        if paused:
            events.append(Event("Normal", "RolloutPaused", f"rollout of {canary} paused"))
        else:
            events.append(Event("Normal", "RolloutResumed", f"rollout of {canary} resumed"))
    return events
