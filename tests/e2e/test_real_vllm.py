"""The whole chain with a real engine: ModelDeployment → operator → engine pod → the pod
runner's real `vllm serve` (the cached CPU build of the pinned release, on the tiny local
model, with the pod's own arguments) → `hedge gateway` → clients using the `openai` SDK.

The gateway routes chat and streamed chat to vLLM, scrapes its /metrics (visible in vLLM's
own access log, and parsed by the gateway's own parser), falls back to the provider when the
engine stops, and returns to it once the pod runner has restarted it (as a kubelet restarts a
container that exited).
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hedge_dev import vllm
from hedge_serving.gateway.engine_metrics import parse_waiting

from .conftest import E2ECluster, HedgeProcess, Operator, pod_ready, scrape, wait_for, wait_ready
from .test_gateway import FALLBACK_KEY, Gateway, fallback_secret
from .traffic import EGRESS_ARGS, FALLBACK_MODEL, FallbackProvider

# Two engine starts on two shared cores (pytest-timeout counts fixture setup too).
pytestmark = pytest.mark.timeout(900)

MD = "tiny"
MODEL = "tiny-llama"
MAX_MODEL_LEN = 512
SELECTOR = f"hedge.dev%2Fmodel-deployment%3D{MD},hedge.dev%2Fcomponent%3Dengine"
# vLLM on two shared cores: ~30 s to /health when the machine is idle, more under load.
ENGINE_START_TIMEOUT = 300


def model_deployment(fallback_url: str) -> dict[str, Any]:
    return {
        "apiVersion": "hedge.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": MD},
        "spec": {
            "model": {"source": "hf://org/tiny-llama", "name": MODEL},
            # A CPU engine: no GPU request, no --tensor-parallel-size.
            "resources": {"gpus": 0, "cpu": "1", "memory": "6Gi"},
            "engine": {
                "maxModelLen": MAX_MODEL_LEN,
                "podAnnotations": {"sim.hedge.dev/engine": "vllm"},
            },
            "serving": {"requestTimeoutSeconds": 60},
            "fallback": {
                "providers": [
                    {
                        "type": "OpenAICompatible",
                        "model": FALLBACK_MODEL,
                        "baseURL": fallback_url,
                        "apiKeySecretRef": {"name": "fallback", "key": "api-key"},
                    }
                ]
            },
        },
    }


@pytest.fixture(scope="module")
def real_engine(pytestconfig: pytest.Config) -> Path:
    """vLLM and the tiny model in the cache before the pod runner needs them (it would
    install them itself, but the pod would then wait minutes in ContainerCreating)."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        return vllm.ensure_tiny_model(vllm.ensure_vllm())


@pytest.fixture
def fallback_provider() -> Iterator[FallbackProvider]:
    provider = FallbackProvider(FALLBACK_KEY)
    yield provider
    provider.close()


@pytest.fixture
def gateway(
    cluster: E2ECluster, namespace: str, hedge_process: Callable[..., HedgeProcess]
) -> Gateway:
    args = ["--kubeconfig", str(cluster.kubeconfig), "--namespace", namespace]
    args += ["--port", "0", "--admin-port", "0", "--engine-metrics-interval", "0.5"]
    args += EGRESS_ARGS
    return Gateway(hedge_process("gateway", *args))


def backends(gateway: Gateway) -> list[str]:
    return sorted(
        s.labels["backend"]
        for f in text_string_to_metric_families(gateway.metrics())
        for s in f.samples
        if s.name == "hedge_gateway_backend_in_flight" and s.labels.get("model") == MODEL
    )


def engine_pod(cluster: E2ECluster, namespace: str) -> dict[str, Any]:
    (pod,) = cluster.get(f"/api/v1/namespaces/{namespace}/pods?labelSelector={SELECTOR}")["items"]
    return dict(pod)


def vllm_processes(pod_ip: str) -> list[int]:
    """Process-group leaders of `vllm serve` bound to the pod's IP (the pod's container)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        pid = int(entry.name)
        if b"serve" in argv and pod_ip.encode() in argv and os.getpgid(pid) == pid:
            found.append(pid)
    return found


def test_real_vllm_behind_the_operator_and_the_gateway(
    cluster: E2ECluster,
    namespace: str,
    real_engine: Path,
    operator: Operator,
    fallback_provider: FallbackProvider,
    gateway: Gateway,
) -> None:
    cluster.apply(
        [fallback_secret(), model_deployment(fallback_provider.stub.url + "/v1")], namespace
    )
    wait_ready(cluster, namespace, MD, replicas=1, timeout=ENGINE_START_TIMEOUT)
    pod = engine_pod(cluster, namespace)
    engine = f"http://{pod['status']['podIP']}:8000"

    # -------- it is real vLLM of the pinned release, run with the pod's own arguments
    with urllib.request.urlopen(engine + "/version", timeout=10) as resp:
        assert json.load(resp) == {"version": vllm.engine_version()}
    with urllib.request.urlopen(engine + "/v1/models", timeout=10) as resp:
        (card,) = json.load(resp)["data"]
    assert (card["id"], card["max_model_len"], card["root"]) == (
        MODEL, MAX_MODEL_LEN, str(real_engine)
    )  # fmt: skip
    log_path = (
        cluster.cluster.dir / "pods" / f"{namespace}_{pod['metadata']['name']}" / "engine.log"
    )
    wait_for(lambda: backends(gateway) == [engine], 30, "the vLLM pod in the gateway's table")

    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0, timeout=60)
    try:
        # -------- chat, then streamed chat, through the gateway
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "Hello!"}], max_tokens=8,
            temperature=0,
        )  # fmt: skip
        assert raw.headers["x-hedge-served-by"] == "self-hosted"
        reply = raw.parse()
        assert reply.model == MODEL and reply.id.startswith("chatcmpl-")
        assert reply.usage is not None and 1 <= reply.usage.completion_tokens <= 8
        assert reply.choices[0].finish_reason in ("length", "stop")

        raw_stream = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "Count to ten."}], max_tokens=8,
            temperature=0, stream=True, stream_options={"include_usage": True},
        )  # fmt: skip
        assert raw_stream.headers["x-hedge-served-by"] == "self-hosted"
        chunks = list(raw_stream.parse())
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        streamed = sum(1 for c in chunks if c.choices and c.choices[0].delta.content)
        assert 1 <= streamed <= chunks[-1].usage.completion_tokens <= 8

        # -------- the gateway scrapes the engine's metrics, and can read them
        def scraped() -> int:
            return log_path.read_text(errors="replace").count('"GET /metrics HTTP/1.1" 200')

        wait_for(lambda: scraped() >= 3, 30, "the gateway scraping vLLM's /metrics")
        text = scrape(engine + "/metrics")
        assert parse_waiting(text) == 0.0
        success = sum(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "vllm:request_success_total"
        )
        assert success == 2

        # -------- the engine stops: the fallback answers; restarted, vLLM answers again.
        # SIGTERM to the container's main process, as `kubectl debug … kill 1` would (a
        # SIGKILL would leave vLLM's shared memory behind in this machine's /dev/shm). No
        # request is sent while vLLM shuts down: it answers those with a 500 of its own
        # ("cannot schedule new futures after shutdown"), which the gateway relays as is.
        (leader,) = vllm_processes(pod["status"]["podIP"])
        os.kill(leader, signal.SIGTERM)
        wait_for(lambda: backends(gateway) == [], 60, "the stopped engine out of the table")
        spilled = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "still there?"}], max_tokens=4
        )
        assert spilled.headers["x-hedge-served-by"] == "openai-compatible"
        assert spilled.headers["x-hedge-fallback-reason"] == "Unavailable"
        assert spilled.parse().model == FALLBACK_MODEL

        def restarted() -> bool:
            now = engine_pod(cluster, namespace)
            statuses = now["status"].get("containerStatuses") or [{}]
            return pod_ready(now) and statuses[0].get("restartCount", 0) >= 1

        wait_for(restarted, ENGINE_START_TIMEOUT, "the pod runner to restart vLLM")
        wait_for(lambda: backends(gateway) == [engine], 30, "vLLM back in the gateway's table")

        def self_hosted() -> Any:
            raw = client.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": "back?"}], max_tokens=4
            )
            return raw if raw.headers["x-hedge-served-by"] == "self-hosted" else None

        wait_for(self_hosted, 30, "a self-hosted answer from the restarted engine")
    finally:
        client.close()
    assert vllm_processes(pod["status"]["podIP"]), "the restarted vLLM is still running"
    gateway.proc.assert_running()
