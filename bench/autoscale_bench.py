"""Hedge's autoscaling policy against KubeAI's and Knative's, on one recorded demand trace.

The trace (bench/traces/chat-demand.csv: one line a second, requests arriving and in flight)
is replayed through three policies, each a pure function run at its own tick with its
published defaults and the same target per replica:

- Hedge: `hedge_operator.autoscaling.policy` (1 s tick, 60 s stable / 6 s panic windows at 200 %,
  300 s scale-down delay, scale to zero after 600 s idle, wake on the first arrival);
- KubeAI: 10 s interval, a 10-minute moving average (60 samples, starting at zero),
  ceil(average / target), a scale-down only after ceil(scaleDownDelaySeconds / interval)
  consecutive lower decisions (scaleDownDelaySeconds 30), and its proxy's immediate 0 → 1
  on a request at zero;
- Knative KPA: 2 s tick, 60 s stable / 6 s panic windows at 200 %, scale-down at most by
  half per tick, scale to zero after the stable window plus a 30 s grace period, and its
  activator's immediate 0 → 1.

The same world runs under each: a replica is ready `--cold-start` seconds after it is asked
for (a model load), each ready replica serves up to `--per-pod` requests at once, and a
request that finds no room goes to the fallback (Hedge's behaviour; for the others it is
what would be dropped or queued). Reported side by side: seconds from each load step in the
trace to the first scale-up decision (p50/p95), scale-direction changes, GPU-replica-minutes,
and the share of requests that would go to the fallback.

Usage: .venv/bin/python bench/autoscale_bench.py [--target 4] [--cold-start 30] [--per-pod 8]
       [--write-trace] (regenerates the trace file from its fixed seed)

`--live PNG` instead runs the real thing once on a local cluster (about four minutes): the
operator and the gateway (discovery mode) as processes, a ModelDeployment at zero with a
fallback (an engine simulator on loopback speaking the OpenAI API) and 5 s of simulated
model load, and a bounded load of streaming `openai` clients following a script (a first
request at zero, a step, a sawtooth, a drop, silence). It samples the load, the demand the
operator measured, the desired and ready replicas and who served each request, prints the
numbers and draws them into PNG (matplotlib) for a person to look at.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import random
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hedge_operator.autoscaling.policy import Autoscaler, Memory, Observation, Pods, Policy

TRACE = Path(__file__).resolve().parent / "traces" / "chat-demand.csv"


# --------------------------------------------------------------------------------- trace


def write_trace(path: Path, seed: int = 7) -> None:
    """A 45-minute chat workload: idle, a morning step, a noisy plateau, a sawtooth, a spike,
    a decay and idle again. Arrivals are Poisson, generations last 2-40 s (log-normal)."""
    rng = random.Random(seed)

    def rate(t: float) -> float:  # requests per second
        if t < 300:
            return 0.0
        if t < 600:
            return 0.3
        if t < 1200:
            return 1.5 + 0.3 * math.sin(t / 17)
        if t < 1800:
            phase = (t % 240) / 240
            return 1.0 + 1.0 * (phase if phase < 0.5 else 1 - phase)
        if t < 1830:
            return 6.0
        if t < 2300:
            return max(0.0, 1.2 - (t - 1830) / 400)
        return 0.0

    ends: list[float] = []
    rows = []
    for second in range(45 * 60):
        arrivals = 0
        t = float(second)
        # Poisson arrivals within the second.
        lam = rate(t)
        k, p, threshold = 0, 1.0, math.exp(-lam)
        while True:
            p *= rng.random()
            if p <= threshold:
                break
            k += 1
        for _ in range(k):
            arrivals += 1
            ends.append(t + min(40.0, max(2.0, rng.lognormvariate(math.log(8.0), 0.6))))
        ends = [e for e in ends if e > t]
        rows.append((second, arrivals, len(ends)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["second", "arrivals", "in_flight"])
        writer.writerows(rows)


def read_trace(path: Path) -> list[tuple[int, int, int]]:
    with path.open() as f:
        reader = csv.DictReader(f)
        return [(int(r["second"]), int(r["arrivals"]), int(r["in_flight"])) for r in reader]


# The trace's load steps, by construction (write_trace): first requests after idle, the
# morning step, the spike.
STEP_SECONDS = (300, 600, 1800)


def load_steps(trace: list[tuple[int, int, int]], target: float) -> list[tuple[int, int]]:
    """(second, replicas needed): what the 10th-30th seconds after each step keep in flight."""
    steps = []
    for at in STEP_SECONDS:
        window = [x[2] for x in trace[at + 10 : at + 30]]
        steps.append((at, max(1, math.ceil(statistics.fmean(window) / target))))
    return steps


# ------------------------------------------------------------------------------ policies

# A policy: called every second with (now, arrivals this second, in flight, current replicas,
# ready replicas); returns the replicas it asks for (it acts only on its own ticks).
PolicyFn = Callable[[int, int, int, int, int], int]


def hedge_policy(target: float, min_replicas: int, max_replicas: int) -> PolicyFn:
    policy = Policy(min_replicas, max_replicas, target)
    scaler = Autoscaler()
    memory = [Memory()]

    def step(now: int, arrivals: int, in_flight: int, current: int, ready: int) -> int:
        scaler.observe(Observation(float(now), float(in_flight), float(arrivals)))
        decision = scaler.decide(
            policy, current, Pods(ready=ready, starting=current - ready), memory[0], float(now)
        )
        memory[0] = decision.memory
        return decision.desired

    return step


def kubeai_policy(target: float, min_replicas: int, max_replicas: int) -> PolicyFn:
    interval, window = 10, 60  # 10 s interval, 10-minute window
    delay_decisions = math.ceil(30 / interval)  # scaleDownDelaySeconds 30
    samples: deque[float] = deque([0.0] * window, maxlen=window)
    lower = [0]

    def step(now: int, arrivals: int, in_flight: int, current: int, ready: int) -> int:
        if current == 0 and (arrivals or in_flight):
            return max(1, min_replicas)  # the proxy scales a model at zero at once
        if now % interval:
            return current
        samples.append(float(in_flight))
        want = max(min_replicas, min(max_replicas, math.ceil(statistics.fmean(samples) / target)))
        if want < current:
            lower[0] += 1
            return want if lower[0] >= delay_decisions else current
        lower[0] = 0
        return want

    return step


def knative_policy(target: float, min_replicas: int, max_replicas: int) -> PolicyFn:
    tick, stable_w, panic_w, grace = 2, 60, 6, 30
    history: deque[tuple[int, float]] = deque()
    panic_until = [-1]
    idle_since = [0]

    def step(now: int, arrivals: int, in_flight: int, current: int, ready: int) -> int:
        history.append((now, float(in_flight)))
        while history and history[0][0] <= now - stable_w:
            history.popleft()
        if in_flight or arrivals:
            idle_since[0] = now
        if current == 0 and (arrivals or in_flight):
            return max(1, min_replicas)  # the activator wakes the revision at once
        if now % tick:
            return current
        stable = statistics.fmean(v for _, v in history)
        panic = statistics.fmean(v for t, v in history if t > now - panic_w)
        want_stable = math.ceil(stable / target)
        want_panic = math.ceil(panic / target)
        if want_panic / max(1, ready) >= 2.0:
            panic_until[0] = now + stable_w
        if now < panic_until[0]:
            want = max(current, want_panic, want_stable)
        else:
            want = max(want_stable, math.ceil(current / 2))  # max scale-down rate 2
            if want_stable == 0 and now - idle_since[0] < stable_w + grace:
                want = max(want, 1)
        return max(min_replicas, min(max_replicas, want))

    return step


# --------------------------------------------------------------------------------- world


@dataclass
class Result:
    name: str
    reaction: list[float]
    direction_changes: int
    replica_minutes: float
    fallback_share: float
    timeline: list[tuple[int, int, int]]  # (second, asked, ready)


def simulate(
    name: str,
    policy: PolicyFn,
    trace: list[tuple[int, int, int]],
    steps: list[tuple[int, int]],
    cold_start: int,
    per_pod: int,
) -> Result:
    asked_at: list[int] = []  # when each replica was asked for
    current = 0
    replica_seconds = 0
    fallback = total = 0
    changes, last_direction, timeline = 0, 0, []
    reactions: dict[int, float] = {}
    for second, arrivals, in_flight in trace:
        ready = sum(1 for t in asked_at if second - t >= cold_start)
        want = policy(second, arrivals, in_flight, current, ready)
        if want != current:
            direction = 1 if want > current else -1
            if last_direction and direction != last_direction:
                changes += 1
            last_direction = direction
            if want > current:
                asked_at += [second] * (want - current)
            else:
                asked_at = sorted(asked_at)[:want]  # the youngest go first
            current = want
        replica_seconds += current
        # Reaction: from a load step to asking for the replicas it needs (or more).
        for at, need in steps:
            if at not in reactions and at <= second and current >= min(need, 16):
                reactions[at] = float(second - at)
        # Requests that find no ready room at this second go to the fallback.
        capacity = ready * per_pod
        total += arrivals
        if in_flight > capacity:
            fallback += min(arrivals, in_flight - capacity) if capacity else arrivals
        timeline.append((second, current, ready))
    return Result(
        name,
        sorted(reactions.values()),
        changes,
        replica_seconds / 60,
        fallback / total if total else 0.0,
        timeline,
    )


def _pct(values: list[float], q: float) -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))]:.0f}s"


# ------------------------------------------------------------------------------ live run

LIVE_NS = "bench"
LIVE_MODEL = "live"
# (second, concurrent streams) the load follows; linear between points, bounded overall.
LIVE_SCRIPT = [
    (0, 0), (10, 0), (10, 2), (45, 2), (45, 12), (85, 12),
    *((85 + 15 * i, 8 if i % 2 else 16) for i in range(1, 5)),
    (160, 2), (190, 2), (190, 0), (260, 0),
]  # fmt: skip


def live_load(t: float) -> int:
    for (t0, c0), (t1, c1) in itertools.pairwise(LIVE_SCRIPT):
        if t0 <= t < t1:
            return round(c0 + (c1 - c0) * (t - t0) / (t1 - t0)) if t1 > t0 else c1
    return 0


def live(png: Path) -> None:
    import json
    import os
    import subprocess
    import sys
    import tempfile
    import threading
    import time
    import urllib.request

    import openai
    import yaml

    from hedge_dev.cluster import LocalCluster, free_port
    from hedge_dev.tools import ensure_tools

    root = Path(__file__).resolve().parents[1]
    cluster = LocalCluster("bench-autoscale")
    procs: list[subprocess.Popen[bytes]] = []
    work = Path(tempfile.mkdtemp(prefix="hedge-autoscale-live-"))
    cluster.up()
    try:
        kubectl = str(ensure_tools(["kubectl"])["kubectl"])
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}

        def kube(*args: str, stdin: str | None = None) -> str:
            return subprocess.run(
                [kubectl, *args], input=stdin, capture_output=True, text=True, env=env,
                check=True,
            ).stdout  # fmt: skip

        kube("apply", "--server-side", "-f", str(root / "crds/hedge.dev_modeldeployments.yaml"))
        kube("wait", "--for=condition=Established", "crd/modeldeployments.hedge.dev")
        kube("create", "namespace", LIVE_NS)
        # The fallback provider: an engine simulator speaking the OpenAI API, on loopback.
        provider_port, gw_port, gw_admin, op_metrics = (free_port() for _ in range(4))
        fallback = "gpt-4o-mini"

        def start(name: str, *args: str) -> None:
            log = open(work / f"{name}.log", "wb")  # noqa: SIM115 - the child's
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "hedge_core.cli", *args], stdout=log,
                stderr=subprocess.STDOUT, env=env,
            ))  # fmt: skip

        start("provider", "simulator", "--model", fallback, "--port", str(provider_port),
              "--ttft-ms", "30", "--itl-ms", "10")  # fmt: skip
        start("operator", "operator", "--namespace", LIVE_NS, "--health-port", "0",
              "--metrics-port", str(op_metrics),
              "--gateway-metrics-url", f"http://127.0.0.1:{gw_admin}/metrics")  # fmt: skip
        # The simulated provider is on loopback over http: allowed as a platform admin would.
        start("gateway", "gateway", "--namespace", LIVE_NS, "--port", str(gw_port),
              "--admin-port", str(gw_admin), "--drain-delay", "0",
              "--egress-allow-http", "127.0.0.1", "--egress-allow-cidr", "127.0.0.0/8")  # fmt: skip
        md = {
            "apiVersion": "hedge.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": LIVE_MODEL, "namespace": LIVE_NS},
            "spec": {
                "model": {"source": "hf://org/live", "name": LIVE_MODEL}, "replicas": 0,
                "resources": {"gpus": 1},
                "engine": {"podAnnotations": {"sim.hedge.dev/itl-ms": "100",
                                              "sim.hedge.dev/startup-delay-ms": "5000"}},
                "autoscaling": {"minReplicas": 0, "maxReplicas": 6, "targetRequests": 4,
                                "stableWindowSeconds": 20, "panicWindowSeconds": 2,
                                "scaleDownDelaySeconds": 15, "scaleToZeroAfterSeconds": 20},
                "fallback": {"providers": [{
                    "type": "OpenAICompatible", "model": fallback,
                    "baseURL": f"http://127.0.0.1:{provider_port}/v1"}]},
            },
        }  # fmt: skip
        kube("apply", "-f", "-", stdin=yaml.safe_dump(md))
        base = f"http://127.0.0.1:{gw_port}/v1"

        def get(url: str) -> str:
            with urllib.request.urlopen(url, timeout=5) as r:
                return str(r.read().decode())

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if LIVE_MODEL in get(base + "/models"):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit("the gateway never routed the model; logs in " + str(work))

        replies: list[tuple[float, str]] = []  # (second, served by)
        failures: list[str] = []
        active = [0]
        stop = threading.Event()
        t0 = time.monotonic()

        def client(i: int) -> None:
            while not stop.is_set():
                if i >= active[0]:
                    time.sleep(0.2)
                    continue
                c = openai.OpenAI(base_url=base, api_key="x", max_retries=0, timeout=60)
                try:
                    raw = c.chat.completions.with_raw_response.create(
                        model=LIVE_MODEL, messages=[{"role": "user", "content": f"q{i}"}],
                        max_tokens=20, stream=True,
                    )  # fmt: skip
                    for _ in raw.parse():
                        pass
                    replies.append((time.monotonic() - t0, raw.headers["x-hedge-served-by"]))
                except (openai.APIError, OSError) as exc:
                    failures.append(repr(exc)[:200])
                finally:
                    c.close()

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(16)]
        for th in threads:
            th.start()
        samples: list[tuple[float, int, float, int, int]] = []
        end = LIVE_SCRIPT[-1][0]
        shown = False
        try:
            while (t := time.monotonic() - t0) < end:
                active[0] = live_load(t)
                if t >= 75 and not shown:  # on the plateau: what kubectl shows
                    shown = True
                    print(f"$ kubectl get md -n {LIVE_NS}\n" + kube("get", "md", "-n", LIVE_NS))
                    print(
                        f"$ kubectl get md {LIVE_MODEL} -n {LIVE_NS} -o yaml  # status.autoscaling"
                    )
                    status_now = json.loads(
                        kube("get", "md", LIVE_MODEL, "-n", LIVE_NS, "-o", "json")
                    )
                    print(yaml.safe_dump({"autoscaling": status_now["status"]["autoscaling"]},
                                         sort_keys=False, width=100))  # fmt: skip
                status = json.loads(kube("get", "md", LIVE_MODEL, "-n", LIVE_NS, "-o", "json")).get(
                    "status", {}
                )
                demand = 0.0
                for line in get(f"http://127.0.0.1:{op_metrics}/metrics").splitlines():
                    if line.startswith("hedge_operator_demand{"):
                        demand = float(line.rsplit(" ", 1)[1])
                desired = (status.get("autoscaling") or {}).get("desiredReplicas", 0)
                samples.append((t, active[0], demand, desired, status.get("readyReplicas", 0)))
                time.sleep(0.5)
        finally:
            stop.set()
            for th in threads:
                th.join(70)
        _plot_live(png, samples, replies)
        print(
            f"$ kubectl get events -n {LIVE_NS} --field-selector "
            f"involvedObject.kind=ModelDeployment,involvedObject.name={LIVE_MODEL}\n"
            + kube(
                "get", "events", "-n", LIVE_NS, "--sort-by=.metadata.creationTimestamp",
                "--field-selector",
                f"involvedObject.kind=ModelDeployment,involvedObject.name={LIVE_MODEL}",
                "-o", "custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message",
            )
        )  # fmt: skip
        served = [s for _, s in replies]
        self_hosted = served.count("self-hosted")
        print(
            f"live run: {len(served)} streams, {self_hosted} self-hosted, "
            f"{len(served) - self_hosted} by the fallback, {len(failures)} failed; peak "
            f"{max(s[3] for s in samples)} replicas asked for, "
            f"{sum(s[4] for s in samples) * 0.5 / 60:.1f} replica-minutes ready; PNG: {png}"
        )
        for line in failures[:5]:
            print("  failed:", line)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        cluster.down(quiet=True)
        print(f"logs: {work}")


def _plot_live(
    png: Path, samples: list[tuple[float, int, float, int, int]], replies: list[tuple[float, str]]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s[0] for s in samples]
    fig, (load, replicas, share) = plt.subplots(3, 1, sharex=True, figsize=(10, 7.5))
    load.plot(t, [s[1] for s in samples], drawstyle="steps-post", label="concurrent streams")
    load.plot(t, [s[2] for s in samples], label="demand (operator, stable-window mean)")
    load.set_ylabel("requests in flight")
    load.legend(loc="upper right")
    replicas.plot(t, [s[3] for s in samples], drawstyle="steps-post", label="desired")
    replicas.plot(t, [s[4] for s in samples], drawstyle="steps-post", label="ready")
    replicas.set_ylabel("engine replicas")
    replicas.legend(loc="upper right")
    bins = range(0, int(max(t)) + 5, 5)
    total = [sum(1 for at, _ in replies if b <= at < b + 5) for b in bins]
    spilled = [sum(1 for at, by in replies if b <= at < b + 5 and by != "self-hosted")
               for b in bins]  # fmt: skip
    share.bar(list(bins), [100 * f / n if n else 0 for f, n in zip(spilled, total, strict=True)],
              width=4.5, align="edge", color="tab:red", label="served by the fallback")  # fmt: skip
    share.set_ylabel("% of streams (5 s bins)")
    share.set_xlabel("seconds")
    share.set_ylim(0, 100)
    share.legend(loc="upper right")
    fig.suptitle("Hedge autoscaling, live on the local cluster (target 4 per replica)")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=4.0, help="requests per replica")
    parser.add_argument("--cold-start", type=int, default=30, help="seconds to a ready pod")
    parser.add_argument("--per-pod", type=int, default=8, help="requests a pod serves at once")
    parser.add_argument("--min-replicas", type=int, default=0)
    parser.add_argument("--max-replicas", type=int, default=16)
    parser.add_argument("--write-trace", action="store_true")
    parser.add_argument("--live", type=Path, metavar="PNG", help="the live run; draws PNG")
    args = parser.parse_args()
    if args.live is not None:
        live(args.live)
        return
    if args.write_trace or not TRACE.exists():
        write_trace(TRACE)
    trace = read_trace(TRACE)
    steps = load_steps(trace, args.target)
    print(
        f"trace {TRACE.name}: {len(trace)} s, {sum(a for _, a, _ in trace)} requests, "
        f"peak {max(f for _, _, f in trace)} in flight, {len(steps)} load steps at "
        + ", ".join(f"{s}s (→{n})" for s, n in steps)
        + f"; target {args.target:g}/replica, cold start {args.cold_start}s, "
        f"{args.per_pod} requests per pod"
    )
    results = [
        simulate(
            name,
            make(args.target, args.min_replicas, args.max_replicas),
            trace,
            steps,
            args.cold_start,
            args.per_pod,
        )
        for name, make in (
            ("hedge", hedge_policy),
            ("kubeai", kubeai_policy),
            ("knative", knative_policy),
        )
    ]
    print(
        f"{'policy':<9} {'step→enough p50':>18} {'p95':>6} {'missed':>7} {'dir. changes':>13} "
        f"{'GPU-replica-min':>16} {'to fallback':>12}"
    )
    for r in results:
        missed = len(steps) - len(r.reaction)
        print(
            f"{r.name:<9} {_pct(r.reaction, 0.5):>18} {_pct(r.reaction, 0.95):>6} {missed:>7} "
            f"{r.direction_changes:>13} {r.replica_minutes:>16.1f} {r.fallback_share:>11.1%}"
        )
    hedge = results[0]
    for r in results[1:]:
        minutes = hedge.replica_minutes / r.replica_minutes
        spill = hedge.fallback_share / r.fallback_share if r.fallback_share else math.nan
        print(
            f"hedge vs {r.name}: GPU-replica-minutes x{minutes:.2f}, fallback share "
            f"x{spill:.2f}, direction changes {hedge.direction_changes} vs {r.direction_changes}"
        )


if __name__ == "__main__":
    main()
