"""The rollout state machine as pure functions, driven through a small world of GPUs and pods.

Each tick the world applies the decision's replicas (a ReplicaSet removes pods that are not
ready first; a removed pod that had a GPU terminates for a tick and holds its GPU meanwhile,
as the scheduler counts it), gives waiting pods free GPUs, and lets pods that got one become
ready on the next tick (unless their revision crashes); traffic is split by the decision's
weight and each revision's errors and latencies are counted into the current step's window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import pytest

from hedge_core.api import RolloutSpec, parse
from hedge_operator.dataplane.signals import RevisionStats
from hedge_operator.rollout import machine as rollout
from hedge_operator.rollout.machine import (
    Commands,
    Policy,
    Revision,
    State,
    Step,
    Thresholds,
    canary_pods,
    decide,
    judge,
    shift,
    tripped,
)

OLD, NEW, NEWER = "aaaa", "bbbb", "cccc"


@dataclass
class Pods:
    waiting: int = 0  # no GPU yet
    starting: int = 0  # has a GPU, ready next tick
    ready: int = 0
    replicas: int = 0
    terminating: int = 0  # scaled away, still holding a GPU until the next tick

    @property
    def total(self) -> int:
        return self.waiting + self.starting + self.ready

    @property
    def gpus(self) -> int:
        return self.starting + self.ready + self.terminating


@dataclass
class Behaviour:
    error_rate: float = 0.0
    ttft: float = 0.05
    itl: float = 0.01
    crashes: bool = False  # pods never get ready and report CrashLoopBackOff
    never_ready: bool = False  # pods never get ready, with nothing to report (a slow load)


@dataclass
class World:
    gpus: int
    pods: dict[str, Pods] = field(default_factory=dict)
    behaviour: dict[str, Behaviour] = field(default_factory=dict)
    created: dict[str, float] = field(default_factory=dict)
    waiting_since: dict[str, float] = field(default_factory=dict)
    loading_since: dict[str, float] = field(default_factory=dict)  # oldest unready pod
    windows: dict[str, RevisionStats] = field(default_factory=dict)
    max_gpus: int = 0
    client_failures: int = 0  # requests that no revision could serve
    requests_per_tick: int = 10
    served: dict[str, int] = field(default_factory=dict)

    def start_with(self, revision: str, replicas: int) -> None:
        self.pods[revision] = Pods(ready=replicas, replicas=replicas)
        self.created[revision] = -1000.0

    def revisions(self) -> dict[str, Revision]:
        out = {}
        for name, p in self.pods.items():
            failing = (
                "CrashLoopBackOff: back-off"
                if self.behaviour.get(name, Behaviour()).crashes and p.starting
                else None
            )
            out[name] = Revision(
                name,
                replicas=p.replicas,
                ready=p.ready,
                starting=p.starting,
                unschedulable_since=self.waiting_since.get(name) if p.waiting else None,
                failing=failing,
                created=self.created.get(name),
                pods=p.total + p.terminating,
                loading_since=self.loading_since.get(name) if p.total > p.ready else None,
            )
        return out

    def apply(self, decision: rollout.Decision, now: float) -> None:
        for p in self.pods.values():  # last tick's terminating pods are gone now
            p.terminating = 0
        for name, want in {**{n: 0 for n in self.pods}, **decision.replicas}.items():
            p = self.pods.setdefault(name, Pods())
            self.created.setdefault(name, now)
            p.replicas = want
            extra = max(0, p.total - want)
            for attr in ("waiting", "starting", "ready"):  # unready pods go first
                take = min(extra, getattr(p, attr))
                setattr(p, attr, getattr(p, attr) - take)
                if attr != "waiting":
                    p.terminating += take
                extra -= take
            if want > p.total and (p.total == p.ready):
                self.loading_since[name] = now  # the oldest unready pod is a new one
            p.waiting += max(0, want - p.total)
        # Pods that got a GPU last tick are ready now (unless their revision crashes).
        for name, p in self.pods.items():
            b = self.behaviour.get(name, Behaviour())
            if not (b.crashes or b.never_ready):
                p.ready += p.starting
                p.starting = 0
        free = self.gpus - sum(p.gpus for p in self.pods.values())
        for name, p in sorted(self.pods.items()):
            got = min(free, p.waiting)
            p.waiting -= got
            p.starting += got
            free -= got
            if p.waiting and name not in self.waiting_since:
                self.waiting_since[name] = now
            if not p.waiting:
                self.waiting_since.pop(name, None)
        self.max_gpus = max(self.max_gpus, sum(p.gpus for p in self.pods.values()))

    def traffic(self, decision: rollout.Decision, canary: str | None) -> None:
        """One tick of requests: the weight's share to the canary, the rest to the other
        ready revision. A failing canary request is retried on stable (the gateway does
        that), so it costs the client nothing."""
        ready = [n for n, p in self.pods.items() if p.ready]
        others = [n for n in ready if n != canary]
        to_canary = 0
        if canary in ready:
            to_canary = round(self.requests_per_tick * (decision.weight or 0) / 100)
            if not others or decision.weight is None:
                to_canary = self.requests_per_tick if not others else to_canary
        for i in range(self.requests_per_tick):
            target = canary if i < to_canary else (others[0] if others else None)
            if target is None:
                self.client_failures += 1  # only the fallback could take it
                continue
            b = self.behaviour.get(target, Behaviour())
            # Each revision's own stream fails at its rate, spread out (3 of every 10 for
            # 30 %: the 1st, 5th and 8th), not front-loaded.
            seq = self.served.get(target, 0)
            self.served[target] = seq + 1
            failed = (seq * 3) % 10 < round(b.error_rate * 10)
            self._count(target, failed, b)
            if failed and not (target == canary and others):
                self.client_failures += 1

    def _count(self, name: str, failed: bool, b: Behaviour) -> None:
        w = self.windows.get(name, RevisionStats())
        self.windows[name] = replace(
            w,
            requests=w.requests + 1,
            errors=w.errors + failed,
            ttft_sum=w.ttft_sum + (0 if failed else b.ttft),
            ttft_count=w.ttft_count + (0 if failed else 1),
            itl_sum=w.itl_sum + (0 if failed else b.itl),
            itl_count=w.itl_count + (0 if failed else 1),
        )


def run(
    world: World,
    policy: Policy,
    target: str,
    desired: int,
    ticks: int,
    *,
    state: State | None = None,
    commands: dict[int, Commands] | None = None,
    changes: dict[int, str] | None = None,
) -> tuple[State, list[rollout.Decision], list[rollout.Event]]:
    state = state or State(stable=next(iter(world.pods)))
    decisions, events = [], []
    started = state.step_started
    for tick in range(ticks):
        now = float(tick)
        target = (changes or {}).get(tick, target)
        decision = decide(
            policy, state, target, desired, world.revisions(), world.windows,
            (commands or {}).get(tick, Commands()), now,
        )  # fmt: skip
        decisions.append(decision)
        events += decision.events
        state = decision.state
        if state.step_started != started:  # a new step: a new analysis window
            world.windows = {}
            started = state.step_started
        world.apply(decision, now)
        world.traffic(decision, state.canary)
    return state, decisions, events


def canary_policy(**overrides: object) -> Policy:
    base: dict[str, object] = dict(
        strategy="Canary",
        steps=(Step(20, 30.0), Step(50, 30.0)),
        max_surge=0,
        max_unavailable=1,
        thresholds=Thresholds(min_requests=20),
        progress_deadline=600.0,
        gpu_wait=60.0,
    )
    base.update(overrides)
    return Policy(**base)  # type: ignore[arg-type]


def reasons(events: list[rollout.Event]) -> list[str]:
    return [e.reason for e in events]


# ------------------------------------------------------------------------------ canary


def test_a_good_canary_goes_through_every_step_and_is_promoted_without_spare_gpus() -> None:
    world = World(gpus=4)
    world.start_with(OLD, 4)
    state, decisions, events = run(world, canary_policy(), NEW, 4, 200)
    assert state == State(stable=NEW)
    assert reasons(events)[:2] == ["RolloutStarted", "RolloutStep"]
    assert reasons(events).count("RolloutStepPassed") == 2
    assert "RolloutPromoted" in reasons(events)
    assert world.pods[NEW].ready == 4 and world.pods[OLD].total == 0
    assert world.max_gpus <= 4  # maxSurge 0: never a GPU more than the stable revision had
    weights = [d.weight for d in decisions if d.weight]
    assert weights[0] == 20 and 50 in weights
    passed = next(e for e in events if e.reason == "RolloutStepPassed")
    assert "error rate 0.0%" in passed.message and "TTFT" in passed.message


def test_surge_bounds_the_gpus_a_rollout_uses() -> None:
    world = World(gpus=16)
    world.start_with(OLD, 4)
    run(world, canary_policy(max_surge=1, max_unavailable=0), NEW, 4, 200)
    assert world.max_gpus == 5
    assert world.pods[NEW].ready == 4


def test_a_failing_canary_trips_at_once_and_costs_clients_nothing() -> None:
    world = World(gpus=4, behaviour={NEW: Behaviour(error_rate=0.3)})
    world.start_with(OLD, 4)
    state, decisions, events = run(world, canary_policy(), NEW, 4, 60)
    assert state.aborted == NEW and state.canary is None and state.stable == OLD
    first_traffic = next(i for i, d in enumerate(decisions) if d.weight)
    aborted_at = next(i for i, d in enumerate(decisions) if d.aborted)
    assert aborted_at - first_traffic <= 10
    abort = next(e for e in events if e.reason == "RolloutAborted")
    assert abort.type == "Warning" and "tripwire" in abort.message and "30.0%" in abort.message
    assert world.pods[NEW].total == 0 and world.pods[OLD].ready == 4
    assert all(d.weight == 0 for d in decisions[aborted_at:])
    assert world.client_failures == 0


def test_a_canary_failing_everything_is_stopped_on_its_first_requests() -> None:
    world = World(gpus=4, behaviour={NEW: Behaviour(error_rate=1.0)}, requests_per_tick=3)
    world.start_with(OLD, 4)
    _, decisions, events = run(world, canary_policy(), NEW, 4, 30)
    first_traffic = next(i for i, d in enumerate(decisions) if d.weight)
    aborted_at = next(i for i, d in enumerate(decisions) if d.aborted)
    # One tick of traffic (the canary's share of 3 requests) is evidence enough.
    assert aborted_at - first_traffic <= 2
    abort = next(e for e in events if e.reason == "RolloutAborted")
    assert "with 99% confidence" in abort.message
    assert world.client_failures == 0


def test_a_slow_canary_is_aborted_at_the_end_of_its_first_step_with_the_numbers() -> None:
    world = World(gpus=4, behaviour={NEW: Behaviour(ttft=0.15)})
    world.start_with(OLD, 4)
    state, decisions, _events = run(world, canary_policy(), NEW, 4, 100)
    assert state.aborted == NEW
    verdict = next(d.verdict for d in decisions if d.verdict is not None)
    assert verdict.verdict == rollout.FAIL
    assert "time to first token 0.150s is 3.00x stable's 0.050s" in verdict.message
    abort_tick = next(i for i, d in enumerate(decisions) if d.aborted)
    step_tick = next(i for i, d in enumerate(decisions) if d.weight)
    assert abort_tick - step_tick == 30  # the step's pause, not before


def test_slow_inter_token_latency_fails_too() -> None:
    canary = RevisionStats(requests=40, itl_sum=40 * 0.03, itl_count=40)
    stable = RevisionStats(requests=160, itl_sum=160 * 0.01, itl_count=160)
    verdict = judge(canary, stable, Thresholds())
    assert verdict.verdict == rollout.FAIL and "inter-token latency" in verdict.message


def test_too_few_requests_wait_instead_of_judging() -> None:
    world = World(gpus=4, requests_per_tick=0)
    world.start_with(OLD, 4)
    state, decisions, _ = run(world, canary_policy(), NEW, 4, 60)
    assert state.canary == NEW and state.step == 1 and state.aborted is None
    assert "waiting for 20 canary requests to judge" in decisions[-1].message
    verdict = decisions[-1].verdict
    assert verdict is not None and verdict.verdict == rollout.INCONCLUSIVE
    assert "waiting for 20 canary requests (0 so far)" in verdict.message


def test_a_crash_looping_canary_is_aborted_and_frees_its_gpu() -> None:
    world = World(gpus=4, behaviour={NEW: Behaviour(crashes=True)})
    world.start_with(OLD, 4)
    state, _decisions, _events = run(world, canary_policy(), NEW, 4, 20)
    assert state.aborted == NEW
    assert "CrashLoopBackOff" in (state.abort_reason or "")
    assert world.pods[NEW].total == 0 and world.pods[OLD].ready == 4


def test_a_canary_that_cannot_be_scheduled_is_aborted_after_the_gpu_wait() -> None:
    world = World(gpus=4)
    world.start_with(OLD, 4)
    # maxSurge 1 and no free GPU: the surge pod waits for a node.
    state, decisions, _ = run(world, canary_policy(max_surge=1, max_unavailable=0), NEW, 4, 90)
    assert state.aborted == NEW
    assert "waited 60s for a node" in (state.abort_reason or "")
    aborted_at = next(i for i, d in enumerate(decisions) if d.aborted)
    assert 60 <= aborted_at <= 62


def test_a_canary_not_ready_within_the_progress_deadline_is_aborted() -> None:
    world = World(gpus=8, behaviour={NEW: Behaviour(never_ready=True)})
    world.start_with(OLD, 2)
    state, _, _ = run(world, canary_policy(progress_deadline=100.0, max_surge=1), NEW, 2, 120)
    assert state.aborted == NEW and "progressDeadlineSeconds 100" in (state.abort_reason or "")
    assert "a pod is not ready 100s after it was created" in (state.abort_reason or "")


def test_an_aborted_revision_stays_aborted_until_a_retry() -> None:
    world = World(gpus=4, behaviour={NEW: Behaviour(error_rate=0.3)})
    world.start_with(OLD, 4)
    state, _, _ = run(world, canary_policy(), NEW, 4, 40)
    assert state.aborted == NEW
    state2, decisions, events = run(world, canary_policy(), NEW, 4, 40, state=state)
    assert "RolloutStarted" not in reasons(events)
    assert all(d.replicas.get(NEW, 0) == 0 for d in decisions)
    world.behaviour[NEW] = Behaviour()
    world.windows = {}
    state3, _, events = run(
        world, canary_policy(), NEW, 4, 200, state=state2, commands={0: Commands(retry=True)}
    )
    assert reasons(events)[0] == "RolloutRetried"
    assert state3 == State(stable=NEW)


def test_a_newer_spec_replaces_the_rollout_in_progress() -> None:
    world = World(gpus=4)
    world.start_with(OLD, 4)
    state, _decisions, events = run(world, canary_policy(), NEW, 4, 200, changes={40: NEWER})
    assert "RolloutReplaced" in reasons(events)
    assert state == State(stable=NEWER)
    assert world.pods[NEW].total == 0 and world.pods[NEWER].ready == 4


def test_going_back_to_the_stable_spec_cancels_the_canary() -> None:
    world = World(gpus=4)
    world.start_with(OLD, 4)
    state, _, events = run(world, canary_policy(), NEW, 4, 100, changes={20: OLD})
    assert "RolloutCancelled" in reasons(events)
    assert state.stable == OLD and state.canary is None
    assert world.pods[NEW].total == 0 and world.pods[OLD].ready == 4


def test_pause_holds_the_step_and_promote_skips_the_rest() -> None:
    world = World(gpus=4)
    world.start_with(OLD, 4)
    paused = canary_policy(paused=True)
    state, decisions, _ = run(world, paused, NEW, 4, 100)
    assert state.step == 1 and state.canary == NEW
    assert "paused at step 1 of 2" in decisions[-1].message
    state, _, events = run(
        world, paused, NEW, 4, 60, state=state, commands={0: Commands(promote=True)}
    )
    assert "RolloutPromoted" in reasons(events)
    assert state == State(stable=NEW)
    assert world.pods[NEW].ready == 4


def test_abort_by_a_person() -> None:
    world = World(gpus=4)
    world.start_with(OLD, 4)
    state, _, _ = run(world, canary_policy(), NEW, 4, 20, commands={10: Commands(abort=True)})
    assert state.aborted == NEW and state.abort_reason == "aborted by a person"


def test_a_restart_carries_on_from_the_state_in_status() -> None:
    world = World(gpus=4)
    world.start_with(OLD, 4)
    state, _, _ = run(world, canary_policy(), NEW, 4, 45)  # in step 1
    # A fresh operator gets the same state from status: nothing restarts or half-promotes.
    state2, _, events = run(world, canary_policy(), NEW, 4, 200, state=state)
    assert "RolloutStarted" not in reasons(events)
    assert state2 == State(stable=NEW)


# ------------------------------------------------------------------------ rolling update


@pytest.mark.parametrize(("gpus", "surge", "unavailable"), [(4, 0, 1), (6, 2, 0), (4, 0, 2)])
def test_rolling_update_completes_within_its_budgets(
    gpus: int, surge: int, unavailable: int
) -> None:
    world = World(gpus=gpus)
    world.start_with(OLD, 4)
    policy = Policy("RollingUpdate", (), max_surge=surge, max_unavailable=unavailable)
    state, decisions, events = run(world, policy, NEW, 4, 60)
    assert state == State(stable=NEW)
    assert world.max_gpus <= 4 + surge
    assert "RolloutCompleted" in reasons(events)
    assert all(d.weight is None for d in decisions)


def test_a_rollout_at_zero_replicas_completes_at_once() -> None:
    world = World(gpus=4)
    world.start_with(OLD, 0)
    state, _, _ = run(world, canary_policy(), NEW, 0, 2)
    assert state == State(stable=NEW)


# ------------------------------------------------------------------------------ pieces


def test_shift_moves_within_surge_and_unavailability() -> None:
    policy = Policy("RollingUpdate", (), max_surge=0, max_unavailable=1)
    new, old = Revision(NEW), Revision(OLD, replicas=4, ready=4)
    assert shift(4, policy, new, 4, [(old, 0)]) == {OLD: 3, NEW: 1}
    # The new pod is not ready yet: nothing more may go.
    new = Revision(NEW, replicas=1, starting=1)
    old = Revision(OLD, replicas=3, ready=3)
    assert shift(4, policy, new, 4, [(old, 0)]) == {OLD: 3, NEW: 1}
    # Unready old pods serve nothing and go at once.
    assert shift(4, policy, Revision(NEW), 4, [(Revision(OLD, replicas=4, ready=1), 0)]) == {
        OLD: 1,
        NEW: 3,
    }


def test_canary_pods_follow_the_weight() -> None:
    assert [canary_pods(10, w) for w in (1, 20, 50, 100)] == [1, 2, 5, 10]
    assert canary_pods(0, 50) == 0


def test_tripwire_needs_a_minimum_sample_or_overwhelming_evidence() -> None:
    t = Thresholds(tripwire_error_rate=0.2, tripwire_min_requests=10)
    assert tripped(RevisionStats(requests=10, errors=2), t) is not None
    assert tripped(RevisionStats(requests=10, errors=1), t) is None
    # Fewer requests trip it only when the rate is surely above the tripwire (99 %): a canary
    # failing everything is stopped after two or three requests, not ten (the gateway's
    # circuit breaker lets one through a second).
    assert tripped(RevisionStats(requests=1, errors=1), t) is None
    message = tripped(RevisionStats(requests=3, errors=3), t)
    assert message is not None and "100.0% (3 of 3) is above (at least 35.7%" in message
    assert tripped(RevisionStats(requests=3, errors=2), t) is None
    assert tripped(RevisionStats(requests=5, errors=2), t) is None
    # No error, no trip, whatever the threshold.
    assert tripped(RevisionStats(requests=50), Thresholds(tripwire_error_rate=0.0)) is None
    # Client errors are not the canary's fault.
    assert tripped(RevisionStats(requests=20, errors=2, client_errors=15), t) is None


def test_the_small_sample_tripwire_rarely_fires_on_a_good_canary() -> None:
    """A canary at the default error-rate limit (5 %) judged on its first requests: the
    chance the confidence rule aborts it on any sample of 2 to 9 is well under 1 %."""
    t = Thresholds()
    false_trip = 0.0
    for n in range(2, 10):
        for k in range(n + 1):
            if tripped(RevisionStats(requests=n, errors=k), t) is not None:
                false_trip += math.comb(n, k) * 0.05**k * 0.95 ** (n - k)
                break  # more errors in the same sample trip it too; counted once
    assert false_trip < 0.01, false_trip


def test_policy_from_spec_resolves_percentages() -> None:
    spec = parse(RolloutSpec, {"maxSurge": "25%", "maxUnavailable": "25%"})
    policy = Policy.from_spec(spec, 10)
    assert (policy.max_surge, policy.max_unavailable) == (3, 2)
    small = Policy.from_spec(parse(RolloutSpec, {"maxSurge": "10%", "maxUnavailable": "10%"}), 2)
    assert (small.max_surge, small.max_unavailable) == (1, 0)
    zero = Policy.from_spec(parse(RolloutSpec, {"maxSurge": "0%", "maxUnavailable": "10%"}), 2)
    assert (zero.max_surge, zero.max_unavailable) == (0, 1)  # never stuck
    assert Policy.from_spec(parse(RolloutSpec, {}), 4).thresholds.max_error_rate == 0.05


def test_latency_within_the_slack_is_not_judged_slower() -> None:
    """Seen on a busy machine: 3.2 ms against 2.0 ms is 1.6x, but 1.2 ms of scheduling noise;
    a canary is slower only by the ratio *and* by more than the slack (2 ms ITL, 10 ms TTFT)."""
    stable = RevisionStats(
        requests=40, itl_sum=40 * 0.0020, itl_count=40, ttft_sum=40 * 0.022, ttft_count=40
    )
    noisy = RevisionStats(
        requests=40, itl_sum=40 * 0.0032, itl_count=40, ttft_sum=40 * 0.030, ttft_count=40
    )
    assert judge(noisy, stable, Thresholds()).verdict == rollout.PASS
    slow = RevisionStats(
        requests=40, itl_sum=40 * 0.0060, itl_count=40, ttft_sum=40 * 0.022, ttft_count=40
    )
    verdict = judge(slow, stable, Thresholds())
    assert verdict.verdict == rollout.FAIL and "inter-token latency" in verdict.message
    no_slack = Thresholds(min_itl_increase=0.0, min_ttft_increase=0.0)
    assert judge(noisy, stable, no_slack).verdict == rollout.FAIL
