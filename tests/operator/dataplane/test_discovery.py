"""Where the operator finds the gateways and engines it reads (pure parts), and reading a
vLLM-shaped /metrics page as the engine simulator serves it."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import openai
import pytest

from hedge_operator.dataplane.discovery import engine_urls, parse_service
from hedge_operator.dataplane.signals import admin_urls, parse_engine
from hedge_operator.provisioning.observed import PodSummary
from hedge_serving.simulator.server import SimulatorConfig, start_simulator

KEY = ("team-a", "llama")


def admin_slice(endpoints: list[dict[str, object]], **extra: object) -> dict[str, object]:
    return {
        "addressType": "IPv4",
        "ports": [{"name": "admin", "port": 9090, "protocol": "TCP"}],
        "endpoints": endpoints,
        **extra,
    }


def test_admin_urls_list_every_gateway_replica_ready_or_not() -> None:
    slices = [
        admin_slice(
            [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
                # Starting (not ready yet) and draining (terminating) gateways still carry
                # requests: they are read too.
                {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": False, "terminating": True}},
            ]
        ),
        admin_slice([{"addresses": ["fd00::1"]}], addressType="IPv6"),
        admin_slice([{"addresses": ["10.0.0.9"]}], ports=[{"name": "http", "port": 8080}]),
        admin_slice([{"addresses": ["10.0.0.1"]}]),  # the same pod in two slices: once
    ]
    assert admin_urls(slices) == [
        "http://10.0.0.1:9090/metrics",
        "http://10.0.0.2:9090/metrics",
        "http://10.0.0.3:9090/metrics",
        "http://[fd00::1]:9090/metrics",
    ]
    assert admin_urls([]) == []


def test_engine_urls_are_the_ready_live_pods_of_the_wanted_models() -> None:
    pods = {
        KEY: [
            PodSummary("a", "r1", ready=True, deleting=False, problem=None, ip="10.1.0.1"),
            PodSummary("b", "r1", ready=False, deleting=False, problem=None, ip="10.1.0.2"),
            PodSummary("c", "r1", ready=True, deleting=True, problem=None, ip="10.1.0.3"),
            PodSummary("d", "r1", ready=True, deleting=False, problem=None, ip=""),
        ],
        ("team-a", "other"): [
            PodSummary("e", "r1", ready=True, deleting=False, problem=None, ip="10.1.0.5")
        ],
    }
    assert engine_urls(pods, [KEY, ("team-b", "none")]) == {KEY: ["http://10.1.0.1:8000/metrics"]}


@pytest.mark.parametrize("bad", ["hedge", "hedge/", "/svc", "a/b/c"])
def test_gateway_service_must_be_namespace_slash_name(bad: str) -> None:
    assert parse_service("hedge-system/hedge-gateway-admin") == (
        "hedge-system",
        "hedge-gateway-admin",
    )
    with pytest.raises(ValueError, match="--gateway-service must be NAMESPACE/NAME"):
        parse_service(bad)


async def test_an_engine_page_is_read_quickly_among_its_histograms() -> None:
    """The simulator's /metrics has vLLM's names and histograms; only the queue gauges are
    read, and a page is parsed in well under a millisecond per kilobyte."""
    config = SimulatorConfig(served_model_names=["m"], ttft_ms=2000.0, max_concurrency=2)
    sim = await start_simulator(config, "127.0.0.1", 0)
    client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="x", max_retries=0)
    calls = [
        asyncio.create_task(
            client.completions.create(model="m", prompt="hello there", max_tokens=2)
        )
        for _ in range(3)
    ]
    try:
        async with aiohttp.ClientSession() as session:

            async def page() -> str:
                async with session.get(sim.url + "/metrics") as r:
                    return await r.text()

            deadline = time.monotonic() + 5
            reading = parse_engine(await page())
            while (reading.running, reading.waiting) != (2, 1) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
                reading = parse_engine(await page())
            assert (reading.running, reading.waiting) == (2, 1)
            text = await page()
        assert "vllm:request_time_per_output_token_seconds_bucket" in text
        started = time.perf_counter()
        for _ in range(20):
            parse_engine(text)
        per_page = (time.perf_counter() - started) / 20
        assert per_page < len(text) / 1024 * 1e-3, (per_page, len(text))
    finally:
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        await client.close()
        await sim.stop()
