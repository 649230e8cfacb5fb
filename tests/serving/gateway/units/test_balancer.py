"""Pure parts of the gateway: balancer, circuit breaker, routes file, routing table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hedge_serving.gateway.balancer import Balancer, stable_hash
from hedge_serving.gateway.breaker import CircuitBreaker, CircuitState
from hedge_serving.gateway.config import RoutesFileError, load_routes, parse_routes
from hedge_serving.gateway.engine_metrics import parse_waiting
from hedge_serving.gateway.routing import ProviderType, RouteSpec, RoutingTable, SecretRef


@dataclass
class FakeBackend:
    outstanding: int
    affinity_seed: int


def backends(*loads: int) -> list[FakeBackend]:
    return [
        FakeBackend(load, stable_hash(f"http://10.0.0.{i}:8000")) for i, load in enumerate(loads)
    ]


def test_least_outstanding_without_affinity() -> None:
    b = Balancer()
    pool = backends(3, 1, 2)
    assert b.pick(pool) is pool[1]
    assert b.pick([]) is None
    ties = backends(0, 0, 0)
    assert {id(b.pick(ties)) for _ in range(3)} == {id(x) for x in ties}  # ties rotate


@given(st.lists(st.integers(0, 50), min_size=1, max_size=8), st.integers(0, 2**32 - 1))
def test_affinity_never_picks_a_much_busier_backend(loads: list[int], key: int) -> None:
    b = Balancer(affinity_slack=4, affinity_ratio=1.5)
    pool = backends(*loads)
    chosen = b.pick(pool, key)
    assert chosen is not None
    least = min(loads)
    assert chosen.outstanding <= least + max(4, int(least * 0.5))


def test_affinity_is_sticky_and_spreads_keys() -> None:
    b = Balancer()
    pool = backends(0, 0, 0, 0)
    keys = [stable_hash(f"system prompt {i}") for i in range(200)]
    first = [b.pick(pool, k) for k in keys]
    assert [b.pick(pool, k) for k in keys] == first  # same prefix, same pod
    counts = [sum(1 for c in first if c is p) for p in pool]
    assert min(counts) > 25  # keys spread over all pods
    # the preferred pod yields when much busier, to its next choice (also stable)
    key = keys[0]
    preferred = b.pick(pool, key)
    assert preferred is not None
    preferred.outstanding = 10
    second = b.pick(pool, key)
    assert second is not preferred and b.pick(pool, key) is second
    preferred.outstanding = 4  # within slack: affinity wins again
    assert b.pick(pool, key) is preferred


def test_breaker_opens_probes_and_closes() -> None:
    now = [0.0]
    br = CircuitBreaker(failure_threshold=3, open_seconds=1.0, clock=lambda: now[0])
    br.record_failure()
    br.record_success()  # resets the count
    for _ in range(2):
        br.record_failure()
    assert br.state is CircuitState.CLOSED and br.available()
    br.record_failure()
    assert br.state is CircuitState.OPEN and not br.available()
    now[0] = 1.0
    assert br.available()
    assert br.acquire() is True  # the probe
    assert br.state is CircuitState.HALF_OPEN and not br.available()  # one probe at a time
    br.record_failure()
    assert br.state is CircuitState.OPEN and not br.available()
    now[0] = 2.5
    probe = br.acquire()
    br.release(probe)  # client went away: the next request may probe
    assert br.available()
    assert br.acquire()
    br.record_success()
    assert br.state is CircuitState.CLOSED and br.acquire() is False


def test_routes_file_as_written_in_the_issue(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(
        "models:\n"
        "  - name: llama-3-8b\n"
        "    backends: [http://127.0.0.1:8001, http://127.0.0.1:8002]\n"
        "    fallback:\n"
        "      - {type: openai, model: gpt-4o-mini, apiKeyEnv: OPENAI_API_KEY}\n"
    )
    (spec,) = load_routes(path)
    assert spec.model == "llama-3-8b"
    assert spec.backends == ("http://127.0.0.1:8001", "http://127.0.0.1:8002")
    (p,) = spec.fallback
    assert p.type is ProviderType.OPENAI and p.model == "gpt-4o-mini"
    assert p.api_key == SecretRef(env="OPENAI_API_KEY")
    assert spec.options.request_timeout_s == 300 and spec.options.max_queue_depth == 16


def test_routes_file_crd_shape_and_aliases() -> None:
    specs = parse_routes(
        {
            "models": [
                {
                    "name": "m",
                    "aliases": ["m-lora"],
                    "backends": ["http://h:1/v1/"],
                    "serving": {"requestTimeoutSeconds": 5, "maxQueueDepth": 2},
                    "fallback": {
                        "onOverload": False,
                        "providers": [
                            {
                                "type": "AzureOpenAI",
                                "model": "gpt",
                                "baseURL": "https://x.openai.azure.com",
                                "deployment": "d",
                                "apiVersion": "2024-10-21",
                                "apiKeyFile": "/k",
                            },
                            {
                                "type": "OpenAICompatible",
                                "model": "x",
                                "baseURL": "http://p/v1",
                                "name": "backup",
                            },
                        ],
                    },
                }
            ]
        }
    )
    assert [s.model for s in specs] == ["m", "m-lora"]
    s = specs[0]
    assert s.backends == ("http://h:1",)
    assert s.options.request_timeout_s == 5 and not s.options.fallback_on_overload
    assert s.fallback[0].type is ProviderType.AZURE_OPENAI and s.fallback[0].deployment == "d"
    assert s.fallback[1].label == "backup"


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({}, "`models` must be a non-empty list"),
        ({"models": [{"name": "m", "backend": []}]}, "unknown key(s) backend"),
        ({"models": [{"name": "m", "backends": ["ftp://x"]}]}, "models[0].backends[0]"),
        (
            {"models": [{"name": "m", "fallback": [{"type": "bard", "model": "x"}]}]},
            "unknown provider type",
        ),
        (
            {"models": [{"name": "m", "fallback": [{"type": "openai-compatible", "model": "x"}]}]},
            "baseURL: required",
        ),
        ({"models": [{"name": "m", "maxQueueDepth": -1}]}, "maxQueueDepth"),
        ({"models": [{"name": "m"}, {"name": "m"}]}, "listed twice"),
    ],
)
def test_routes_file_errors_are_precise(doc: object, needle: str) -> None:
    with pytest.raises(RoutesFileError) as info:
        parse_routes(doc)
    assert needle in str(info.value)


def test_routing_table_keeps_backend_state_across_updates() -> None:
    table = RoutingTable()
    table.replace([RouteSpec("a", ("http://x:1", "http://y:1")), RouteSpec("b", ("http://x:1",))])
    route = table.resolve("a")
    assert route is not None
    x = route.backends[0]
    x.outstanding = 7
    table.replace([RouteSpec("a", ("http://x:1/",)), RouteSpec("a", ("http://z:1",))])
    again = table.resolve("a")
    assert again is not None and again.backends == (x,)  # same live object; first spec wins
    assert [b.url for b in table.backends()] == ["http://x:1"]
    assert table.resolve("b") is None


def test_parse_waiting() -> None:
    text = (
        "# HELP vllm:num_requests_waiting x\n"
        'vllm:num_requests_waiting{model_name="a"} 3.0\n'
        'vllm:num_requests_waiting{model_name="b"} 2\n'
        "vllm:num_requests_waiting_total 99\n"
    )
    assert parse_waiting(text) == 5.0
    assert parse_waiting("nothing here") is None
