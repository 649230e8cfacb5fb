"""Canary traffic at the gateway (issue 9): the canary gets exactly its weight of a
ModelDeployment's requests whatever the pods on either side, prefix affinity stays within a
revision, a canary request that fails before its first byte is retried on the stable
revision (so the client never sees it) and still counts against the canary, and each
revision's numbers reach the operator's analysis through the contract series, read with the
operator's own parser."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from hedge_core.kube import Kube
from hedge_operator.dataplane.signals import Counters, parse_gateway
from hedge_operator.rollout import machine as rollout
from hedge_operator.rollout.convert import cumulative
from hedge_operator.rollout.machine import Thresholds, judge
from hedge_serving.gateway.app import RunningGateway
from hedge_serving.gateway.config import RoutesFileError, parse_routes
from hedge_serving.gateway.discovery import KubernetesDiscovery
from hedge_serving.gateway.keys import SecretCache
from hedge_serving.gateway.revisions import Buckets, Split
from hedge_serving.gateway.routing import RouteSpec, RoutingTable
from tests.serving.gateway_stubs.engines import Engine
from tests.serving.gateway_stubs.harness import Clients, start_test_gateway, wait_for
from tests.serving.gateway_stubs.kubeapi import (
    FakeKubeAPI,
    endpoint_slice,
    kubeconfig_for,
    model_deployment,
)

NS, MD = "team-a", "llama"
MODEL = "llama-3-8b"
STABLE, CANARY = "aaaaaaaaaa", "bbbbbbbbbb"


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    made = Clients()
    yield made
    await made.close()


@pytest.fixture
async def engines() -> AsyncIterator[list[Engine]]:
    started: list[Engine] = []

    async def start(n: int) -> None:
        for i in range(n):
            e = Engine(f"e{len(started) + i}", MODEL)
            await e.start()
            started.append(e)

    await start(4)
    yield started
    for e in started:
        await e.stop()


def split_route(stable: list[Engine], canary: list[Engine], weight: int | None) -> RouteSpec:
    engines = [*stable, *canary]
    return RouteSpec(
        MODEL,
        backends=tuple(e.url for e in engines),
        deployment=(NS, MD),
        revisions=tuple([STABLE] * len(stable) + [CANARY] * len(canary)),
        canary=CANARY if weight is not None else None,
        canary_weight=weight,
        stable=STABLE,
    )


async def ask(gw: RunningGateway, clients: Clients, n: int, prefix: str = "q") -> None:
    c = clients(gw)
    for i in range(n):
        reply = await c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"{prefix} {i}"}], max_tokens=3
        )
        assert reply.choices[0].message.content


def served(engines: list[Engine]) -> int:
    return sum(len(e.received) for e in engines)


async def revision_stats(gw: RunningGateway) -> dict[str, rollout.RevisionStats]:
    """Each revision's numbers as the operator's Scraper would sum them."""
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as r,
    ):
        text = await r.text()
    counters = Counters()
    counters.update("gateway-0", parse_gateway(text).counters)
    return cumulative(counters, NS, MD)


# --------------------------------------------------------------------------- pieces


def test_the_split_is_exact_over_every_window() -> None:
    split = Split(CANARY, 20)
    picks = [split.to_canary() for _ in range(500)]
    assert sum(picks) == 100
    assert all(sum(picks[i : i + 5]) == 1 for i in range(0, 500, 5))
    for weight in (1, 7, 33, 50, 99, 100):
        s = Split(CANARY, weight)
        assert sum(s.to_canary() for _ in range(1000)) == 10 * weight
    assert not any(Split(CANARY, 0).to_canary() for _ in range(100))


def test_buckets_are_a_prometheus_histogram() -> None:
    b = Buckets((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 2.0):
        b.observe(v)
    assert b.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert (b.count, b.total) == (4, pytest.approx(2.65))


def test_the_table_keeps_the_split_and_the_counters_across_updates() -> None:
    table = RoutingTable()
    urls = ("http://127.0.0.2:8000", "http://127.0.0.3:8000")
    spec = RouteSpec(
        MODEL,
        urls,
        deployment=(NS, MD),
        revisions=(STABLE, CANARY),
        canary=CANARY,
        canary_weight=20,
        stable=STABLE,
    )
    table.replace([spec])
    route = table.resolve(MODEL)
    assert route is not None and route.split is not None
    split = route.split
    assert [b.revision for b in route.backends] == [STABLE, CANARY]
    assert route.backends[1].counters is not None
    route.backends[1].counters.outcomes[0] += 5
    split.to_canary()  # credit 20
    table.replace([spec])  # an update that changes nothing for this route
    route = table.resolve(MODEL)
    assert route is not None and route.split is split
    assert route.backends[1].counters is not None
    assert route.backends[1].counters.outcomes[0] == 5
    # The next step: same Split, new weight.
    table.replace(
        [
            RouteSpec(
                MODEL,
                urls,
                deployment=(NS, MD),
                revisions=(STABLE, CANARY),
                canary=CANARY,
                canary_weight=50,
                stable=STABLE,
            )
        ]
    )
    route = table.resolve(MODEL)
    assert route is not None and route.split is split and split.weight == 50
    # Promoted: no split; the canary's pods serve like any other, counted as their revision.
    table.replace([RouteSpec(MODEL, urls, deployment=(NS, MD), revisions=(STABLE, CANARY))])
    route = table.resolve(MODEL)
    assert route is not None and route.split is None
    assert {c.key[2] for c in table.revision_counters()} == {STABLE, CANARY}


# ---------------------------------------------------------------------- through HTTP


@pytest.mark.parametrize(("stable_pods", "canary_pods"), [(3, 1), (1, 3)])
async def test_the_canary_gets_its_weight_not_its_share_of_pods(
    clients: Clients, engines: list[Engine], stable_pods: int, canary_pods: int
) -> None:
    stable, canary = engines[:stable_pods], engines[stable_pods : stable_pods + canary_pods]
    gw = await start_test_gateway([split_route(stable, canary, 20)])
    try:
        await ask(gw, clients, 200)
    finally:
        await gw.stop()
    assert served(canary) == 40 and served(stable) == 160


async def test_prefix_affinity_holds_within_each_revision(
    clients: Clients, engines: list[Engine]
) -> None:
    stable, canary = engines[:2], engines[2:]
    gw = await start_test_gateway([split_route(stable, canary, 50)])
    try:
        c = clients(gw)
        shared = "You are a helpful assistant. " * 20  # the same long prefix every time
        for i in range(40):
            await c.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": shared + str(i)}]
            )
    finally:
        await gw.stop()
    # Half the requests each way, and on each side one pod takes them all (its KV cache
    # holds the prefix); the other pod of that revision gets none.
    assert served(canary) == 20 and served(stable) == 20
    assert sorted(len(e.received) for e in stable) == [0, 20]
    assert sorted(len(e.received) for e in canary) == [0, 20]


async def test_a_failing_canary_costs_clients_nothing_and_counts_against_it(
    clients: Clients, engines: list[Engine]
) -> None:
    stable, canary = engines[:2], engines[2:]
    for e in canary:
        e.faults.status = 500
    for e in stable:
        e.faults.chunk_delay_s = 0.002  # tokens one read apart: inter-token gaps to measure
    gw = await start_test_gateway([split_route(stable, canary, 20)], breaker_failures=1000)
    try:
        await ask(gw, clients, 100)  # raises on any failed request
        c = clients(gw)
        stream = await c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "streamed"}], stream=True
        )
        assert [chunk async for chunk in stream]
        stats = await revision_stats(gw)
    finally:
        await gw.stop()
    # Every fifth request went to the canary first; each was retried on stable, never on
    # the canary's other pod.
    assert served(canary) in (20, 21)
    assert served(stable) == 101
    assert stats[CANARY].requests == stats[CANARY].errors == served(canary)
    assert stats[STABLE].requests == 101 and stats[STABLE].errors == 0
    assert stats[STABLE].ttft_count == 101 and stats[STABLE].itl_count > 0


async def test_a_slow_canary_is_judged_slow_from_the_gateways_numbers(
    clients: Clients, engines: list[Engine]
) -> None:
    stable, canary = engines[:1], engines[1:2]
    canary[0].faults.delay_s = 0.06  # time to first token well above stable's
    gw = await start_test_gateway([split_route(stable, canary, 50)])
    try:
        await ask(gw, clients, 60)
        stats = await revision_stats(gw)
    finally:
        await gw.stop()
    assert stats[CANARY].requests == 30 and stats[CANARY].errors == 0
    assert stats[CANARY].ttft_mean is not None and stats[CANARY].ttft_mean >= 0.06
    verdict = judge(stats[CANARY], stats[STABLE], Thresholds(min_requests=20))
    assert verdict.verdict == rollout.FAIL
    assert "time to first token" in verdict.message


async def test_without_a_canary_every_ready_pod_serves(
    clients: Clients, engines: list[Engine]
) -> None:
    stable, canary = engines[:2], engines[2:]
    gw = await start_test_gateway([split_route(stable, canary, None)])
    try:
        await ask(gw, clients, 40)
    finally:
        await gw.stop()
    assert all(len(e.received) > 0 for e in engines)


async def test_when_the_chosen_revision_has_no_backend_the_other_serves(
    clients: Clients, engines: list[Engine]
) -> None:
    gw = await start_test_gateway([split_route(engines[:2], [], 20)])
    try:
        await ask(gw, clients, 20)
    finally:
        await gw.stop()
    assert served(engines[:2]) == 20


# ------------------------------------------------------------------------- discovery


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[FakeKubeAPI]:
    server = await FakeKubeAPI().start()
    server.kubeconfig = kubeconfig_for(server, tmp_path)
    yield server
    await server.stop()


def revision_slice(revision: str, ips: list[str]) -> dict[str, object]:
    # The revision's headless Service `<md>-<revision>` is the slice's service-name, as
    # the operator names it (discovery trusts no other).
    return endpoint_slice(MD, NS, [(ip, 8000, True) for ip in ips], revision[:5], revision=revision)


async def test_discovery_reads_revisions_from_slices_and_the_weight_from_status(
    api: FakeKubeAPI,
) -> None:
    md = model_deployment(MD, NS, model_name=MODEL)
    md["status"] = {
        "rollout": {
            "strategy": "Canary",
            "stableRevision": STABLE,
            "canaryRevision": CANARY,
            "step": 1,
            "canaryWeight": 20,
        }
    }
    await api.put("ModelDeployment", md)
    shared = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    await api.put("EndpointSlice", endpoint_slice(MD, NS, [(ip, 8000, True) for ip in shared]))
    await api.put("EndpointSlice", revision_slice(STABLE, shared[:2]))
    await api.put("EndpointSlice", revision_slice(CANARY, shared[2:]))
    kube = Kube(str(api.kubeconfig))
    table = RoutingTable()
    d = KubernetesDiscovery(table, SecretCache(), kube, min_backoff_s=0.05, max_backoff_s=0.2)
    await d.start()
    try:
        await d.wait_synced(5)

        def revisions() -> dict[str, str]:
            route = table.resolve(MODEL)
            return {} if route is None else {b.url: b.revision for b in route.backends}

        await wait_for(lambda: len(set(revisions().values())) == 2, what="both revisions")
        assert revisions() == {
            "http://127.0.0.2:8000": STABLE,
            "http://127.0.0.3:8000": STABLE,
            "http://127.0.0.4:8000": CANARY,
        }
        route = table.resolve(MODEL)
        assert route is not None and route.split is not None
        assert (route.split.canary, route.split.weight) == (CANARY, 20)

        # Aborted: no split, and the aborted revision's pods get nothing (even while their
        # endpoints are still listed).
        md["status"] = {
            "rollout": {"stableRevision": STABLE, "abortedRevision": CANARY, "abortReason": "x"}
        }
        await api.put("ModelDeployment", md)
        await wait_for(lambda: len(revisions()) == 2, what="the aborted revision unrouted")
        route = table.resolve(MODEL)
        assert route is not None and route.split is None
        assert set(revisions().values()) == {STABLE}
    finally:
        await d.stop()
        await kube.close()


# ---------------------------------------------------------------------- routes file


def test_the_routes_file_labels_revisions_and_splits_by_weight() -> None:
    specs = parse_routes(
        {
            "models": [
                {
                    "name": MODEL,
                    "backends": ["http://127.0.0.2:8000", "http://127.0.0.3:8000"],
                    "revisions": ["v1", "v2"],
                    "canary": {"revision": "v2", "weight": 20},
                }
            ]
        }
    )
    assert (specs[0].revisions, specs[0].canary, specs[0].canary_weight) == (("v1", "v2"), "v2", 20)
    for bad, message in (
        ({"revisions": ["v1"]}, "one revision per backend"),
        ({"revisions": ["v1", "v2"], "canary": {"revision": "v3", "weight": 5}}, "not in"),
        ({"revisions": ["v1", "v2"], "canary": {"revision": "v2", "weight": 101}}, "0 to 100"),
        ({"revisions": ["v1", "v2"], "canary": {"revision": "v2", "wait": 1}}, "wait"),
    ):
        doc = {"name": MODEL, "backends": ["http://127.0.0.2:8000", "http://127.0.0.3:8000"]}
        with pytest.raises(RoutesFileError, match=message):
            parse_routes({"models": [{**doc, **bad}]})
