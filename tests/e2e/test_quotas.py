"""ClientPolicy limits on the local cluster (docs/tenants.md): the chart's gateway with 3
replicas, sharing its counts in a real redis-server, under bounded load from the openai SDK.

- team-a may use 6,000 tokens a minute; offered 3x that, spread over the 3 replicas, it is
  admitted 95-102 % of the limit in every whole minute (read from the shared counters when
  the minute closes, and checked against what the clients were answered), while team-b,
  with no limits, keeps its solo time to first token;
- team-c may run 2 requests at once: of 6 sent together 2 are served and 4 get 429s with
  Retry-After and x-ratelimit-* headers, and the SDK's own retries then get them through;
- with Redis stopped (SIGSTOP: connections hang, as in a partition) each replica admits at
  most its third of team-a's limit; once Redis is back, the shared count of that minute
  equals what was admitted.
"""

from __future__ import annotations

import base64
import contextlib
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest
import redis

from hedge_dev.redis import RedisServer
from hedge_serving.gateway.quota.limits import counter_key

from .conftest import E2ECluster, fresh_namespace, pod_ready, wait_for, wait_ready
from .test_helm_chart import CHART, helm, write_values

RELEASE = "hq"
MODEL = "llama-q"
TOKENS_PER_MINUTE = 6000
KEYS = {"team-a": "sk-a-0123456789", "team-b": "sk-b-0123456789", "team-c": "sk-c-0123456789"}
MESSAGES: Any = [{"role": "user", "content": "hello there"}]


@dataclass
class Install:
    namespace: str
    redis: RedisServer
    pods: list[str]  # gateway base URLs, one per replica

    def client(self, key: str, pod: int = 0, retries: int = 0) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.pods[pod]}/v1", api_key=key, max_retries=retries, timeout=20
        )

    def shared_tokens(self, policy: str, window: int) -> int:
        scope = f"tenant/{self.namespace}/{policy}"
        with redis.Redis(port=self.redis.port, socket_timeout=5) as r:
            value = r.get("hedge:quota:" + counter_key(scope, "tokensPerMinute", window))
        return int(value or 0)


def secret(name: str, data: dict[str, str], labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": labels or {}},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def policy(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "hedge.dev/v1alpha1",
        "kind": "ClientPolicy",
        "metadata": {"name": name},
        "spec": {"keys": [{"secretRef": {"name": "client-keys", "key": name}}], **spec},
    }


def gateway_urls(cluster: E2ECluster, namespace: str) -> list[str]:
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=gateway"
    pods = cluster.get_json("pods", "-n", namespace, "-l", selector)["items"]
    return sorted(f"http://{p['status']['podIP']}:8080" for p in pods if pod_ready(p))


def answers(install: Install, key: str, pod: int) -> bool:
    try:
        install.client(key, pod).chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=1
        )
    except openai.APIError:
        return False
    return True


@pytest.fixture(scope="module")
def install(cluster: E2ECluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Install]:
    namespaces = fresh_namespace(cluster)
    namespace = next(namespaces)
    server = RedisServer()
    server.start()
    try:
        cluster.apply(
            [
                secret("quota-redis", {"url": server.url}),
                secret("client-keys", KEYS, {"hedge.dev/client-key": "true"}),
            ],
            namespace,
        )
        values = write_values(
            tmp_path_factory.mktemp("quotas"),
            namespace,
            gateway={
                "replicaCount": 3,
                "drainTimeoutSeconds": 1,
                "drainDelaySeconds": 1,
                "apiKeys": {"secretName": ""},
                "allowUnauthenticated": False,
                "clientPolicies": {"enabled": True},
                "quotas": {"redisUrlSecret": {"name": "quota-redis", "key": "url"}},
            },
        )
        helm(cluster, "install", RELEASE, str(CHART), "-n", namespace, "-f", str(values))
        cluster.apply(  # the chart installs the ClientPolicy CRD
            [
                policy(
                    "team-a",
                    limits={"tokensPerMinute": TOKENS_PER_MINUTE},
                    defaultMaxTokens=64,
                ),
                policy("team-b"),
                policy("team-c", limits={"concurrentRequests": 2}),
            ],
            namespace,
        )
        cluster.apply(
            [
                {
                    "apiVersion": "hedge.dev/v1alpha1",
                    "kind": "ModelDeployment",
                    "metadata": {"name": "llama"},
                    "spec": {
                        "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "name": MODEL},
                        "resources": {"gpus": 1, "gpuType": "nvidia-a100-80gb"},
                        "engine": {
                            "podAnnotations": {
                                "sim.hedge.dev/ttft-ms": "150",
                                "sim.hedge.dev/itl-ms": "2",
                            }
                        },
                    },
                }
            ],
            namespace,
        )
        wait_ready(cluster, namespace, "llama", timeout=120)

        def three_replicas() -> list[str] | None:
            urls = gateway_urls(cluster, namespace)
            return urls if len(urls) == 3 else None

        pods = wait_for(three_replicas, 120, "3 gateway replicas Ready")
        made = Install(namespace, server, pods)
        for i in range(3):  # every replica knows every policy's key
            for key in KEYS.values():
                wait_for(
                    lambda k=key, i=i: answers(made, k, i), 60, f"replica {i} admits {key[:5]}"
                )
        yield made
    finally:
        with contextlib.suppress(Exception):
            helm(cluster, "uninstall", RELEASE, "-n", namespace, "--wait", timeout=120)
        server.stop()
        with contextlib.suppress(StopIteration):
            next(namespaces)


@dataclass
class Outcome:
    started: float
    status: int
    tokens: int = 0
    ttft: float | None = None
    headers: dict[str, str] = field(default_factory=dict)


class Load:
    """`rate` requests a second, paced, spread round-robin over the replicas, until
    `until` (epoch seconds) and at most `max_requests`; every outcome is kept."""

    def __init__(
        self, install: Install, key: str, rate: float, until: float, *,
        stream: bool = False, max_tokens: int = 40, workers: int = 4, max_requests: int = 5000,
    ) -> None:  # fmt: skip
        self.install, self.key, self.rate, self.until = install, key, rate, until
        self.stream, self.max_tokens, self.max_requests = stream, max_tokens, max_requests
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._next = 0
        self._start = time.time()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        for t in self._threads:
            t.join(timeout=60)

    def _slot(self) -> tuple[int, float] | None:
        with self._lock:
            n = self._next
            self._next += 1
        at = self._start + n / self.rate
        if n >= self.max_requests or at >= self.until:
            return None
        return n, at

    def _run(self) -> None:
        clients = [self.install.client(self.key, i) for i in range(len(self.install.pods))]
        while (slot := self._slot()) is not None:
            n, at = slot
            time.sleep(max(0.0, at - time.time()))  # pacing the offered load
            outcome = self._one(clients[n % len(clients)])
            with self._lock:
                self.outcomes.append(outcome)

    def _one(self, client: openai.OpenAI) -> Outcome:
        started = time.time()
        try:
            if self.stream:
                first: float | None = None
                tokens = 0
                stream = client.chat.completions.create(
                    model=MODEL, messages=MESSAGES, max_tokens=self.max_tokens, stream=True,
                    stream_options={"include_usage": True},
                )  # fmt: skip
                for chunk in stream:
                    if first is None and chunk.choices:
                        first = time.time() - started
                    if chunk.usage is not None:
                        tokens = chunk.usage.total_tokens
                return Outcome(started, 200, tokens, first, dict(stream.response.headers))
            raw = client.chat.completions.with_raw_response.create(
                model=MODEL, messages=MESSAGES, max_tokens=self.max_tokens
            )
            reply = raw.parse()
            used = reply.usage.total_tokens if reply.usage else 0
            return Outcome(started, 200, used, None, dict(raw.headers))
        except openai.APIStatusError as exc:
            return Outcome(started, exc.status_code, 0, None, dict(exc.response.headers))
        except openai.APIConnectionError:
            return Outcome(started, 0)


def ttft_p50(outcomes: list[Outcome]) -> float:
    return statistics.median(o.ttft for o in outcomes if o.status == 200 and o.ttft is not None)


def snapshot_windows(install: Install, policy: str, until: float) -> dict[int, int]:
    """The shared per-minute token counts of a policy, each read 3 s after its minute
    closed (settlements of the minute's last requests are in by then)."""
    seen: dict[int, int] = {}
    while True:
        now = time.time()
        closed = int(now // 60) - 1
        if now % 60 >= 3 and closed not in seen:
            seen[closed] = install.shared_tokens(policy, closed)
        if now > until + 4:
            return seen
        time.sleep(0.5)


@pytest.mark.timeout(420)
def test_a_token_limit_holds_across_three_replicas_and_spares_the_other_tenant(
    install: Install,
) -> None:
    solo_until = time.time() + 10
    with Load(install, KEYS["team-b"], rate=2, until=solo_until, stream=True, workers=2) as b:
        pass
    solo = ttft_p50(b.outcomes)
    started = time.time()
    # Whole minutes to judge: the load runs to the end of the minute after this one.
    until = (started // 60 + 2) * 60 + 1
    demand = 3 * TOKENS_PER_MINUTE / 60  # tokens a second, 3x the limit
    per_request = 40 + 25  # max_tokens and about the simulator's prompt count
    with (
        Load(install, KEYS["team-a"], rate=demand / per_request, until=until, workers=4) as a,
        Load(install, KEYS["team-b"], rate=2, until=until, stream=True, workers=2) as b2,
    ):
        windows = snapshot_windows(install, "team-a", until)
    whole = [w for w in windows if w * 60 >= started and (w + 1) * 60 <= until]
    assert whole, f"no whole minute between {started} and {until}: {windows}"
    for w in whole:
        admitted = windows[w]
        assert 0.95 * TOKENS_PER_MINUTE <= admitted <= 1.02 * TOKENS_PER_MINUTE, (w, windows)
        # What the clients were answered in that minute agrees with the shared count (a
        # request is counted in the minute it was admitted, a few ms after it was sent).
        answered = sum(o.tokens for o in a.outcomes if o.status == 200 and o.started // 60 == w)
        assert abs(answered - admitted) <= 0.03 * TOKENS_PER_MINUTE, (answered, admitted)
    refused = [o for o in a.outcomes if o.status == 429]
    assert refused and all("retry-after" in o.headers for o in refused)
    assert all("x-ratelimit-limit-tokens" in o.headers for o in a.outcomes if o.status)
    assert {o.status for o in a.outcomes} <= {200, 429}
    loaded = ttft_p50(b2.outcomes)
    print(
        f"team-a admitted per whole minute: {[windows[w] for w in whole]} of "
        f"{TOKENS_PER_MINUTE} ({len(a.outcomes)} requests offered, {len(refused)} refused); "
        f"team-b p50 TTFT {loaded * 1000:.1f} ms under load vs {solo * 1000:.1f} ms solo"
    )
    assert all(o.status == 200 for o in b2.outcomes)
    assert loaded <= solo * 1.10, f"team-b's p50 TTFT {loaded:.3f}s vs {solo:.3f}s solo"


@pytest.mark.timeout(300)
def test_with_redis_unreachable_each_replica_admits_only_its_share(install: Install) -> None:
    if time.time() % 60 > 20:  # leave the outage most of one minute (pacing, not waiting)
        time.sleep(61 - time.time() % 60)
    window = int(time.time() // 60)
    before = install.shared_tokens("team-a", window)
    install.redis.pause()
    try:
        until = window * 60 + 52
        per_pod: list[Load] = []
        with contextlib.ExitStack() as stack:
            for i in range(3):
                single = Install(install.namespace, install.redis, [install.pods[i]])
                load = Load(single, KEYS["team-a"], rate=3, until=until, workers=2)
                per_pod.append(stack.enter_context(load))
    finally:
        install.redis.resume()
    share = TOKENS_PER_MINUTE / 3
    admitted = [
        sum(o.tokens for o in load.outcomes if o.status == 200 and o.started // 60 == window)
        for load in per_pod
    ]
    print(f"Redis paused: admitted per replica {admitted}, share {share:.0f}")
    assert all(n <= share * 1.02 for n in admitted), admitted  # never the whole limit each
    assert sum(admitted) >= 0.9 * TOKENS_PER_MINUTE, admitted  # but each its share
    # Back: what the replicas counted alone is pushed, so the shared count agrees.
    wait_for(
        lambda: (
            abs(install.shared_tokens("team-a", window) - before - sum(admitted))
            <= 0.01 * TOKENS_PER_MINUTE
        ),
        20,
        f"the shared count of minute {window} adds the {sum(admitted)} tokens admitted alone",
    )


def test_a_concurrency_limit_refuses_with_headers_and_the_sdk_retries_succeed(
    install: Install,
) -> None:
    results: list[Outcome] = []
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def one(pod: int) -> None:
        client = install.client(KEYS["team-c"], pod)
        barrier.wait(timeout=30)
        started = time.time()
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=MODEL, messages=MESSAGES, max_tokens=1000
            )
            outcome = Outcome(started, 200, 0, None, dict(raw.headers))
        except openai.APIStatusError as exc:
            outcome = Outcome(started, exc.status_code, 0, None, dict(exc.response.headers))
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=one, args=(i % 3,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    statuses = sorted(o.status for o in results)
    assert statuses == [200, 200, 429, 429, 429, 429], statuses
    for o in results:
        if o.status == 429:
            assert int(o.headers["retry-after"]) >= 1
    # With the SDK's retries (it honours Retry-After) all six get through.
    done: list[str] = []

    def retried(pod: int) -> None:
        client = install.client(KEYS["team-c"], pod, retries=8)
        reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=200)
        with lock:
            done.append(reply.choices[0].message.content or "")

    threads = [threading.Thread(target=retried, args=(i % 3,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(done) == 6 and all(done)


def test_the_policy_status_reports_its_usage_summed_over_the_replicas(
    cluster: E2ECluster, install: Install
) -> None:
    """The operator scrapes every gateway replica and writes team-a's usage of today into
    its ClientPolicy (the earlier tests sent it thousands of tokens through 3 replicas)."""
    path = f"/apis/hedge.dev/v1alpha1/namespaces/{install.namespace}/clientpolicies/team-a"

    def usage() -> dict[str, Any] | None:
        found = (cluster.get(path).get("status") or {}).get("usage") or {}
        return found if found.get("dayTokens", 0) >= TOKENS_PER_MINUTE else None

    reported = wait_for(usage, 60, "team-a's status.usage")
    assert reported["dayStart"].endswith("T00:00:00Z")
