"""Prometheus metrics of one simulator, under vLLM's names, labels and buckets.

Each simulator owns a `CollectorRegistry`, so hundreds of simulators in one process keep their
numbers apart. Names, labels and buckets are vLLM 0.32's (held to it by
tests/engine/test_simulator_conformance.py): every series carries `model_name` (the primary
served name) and `engine` ("0"); `vllm:request_success_total` adds `finished_reason`. Gauges
are read at scrape time from the simulator's state through callbacks.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from hedge_core.contracts import ENGINE_KV_CACHE, ENGINE_RUNNING, ENGINE_WAITING

# vLLM's buckets, so dashboards and the autoscaler's quantiles read the same as on a GPU.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip

FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")


class SimulatorMetrics:
    """The vLLM metric set of one simulated engine."""

    def __init__(
        self,
        model_name: str,
        *,
        running: Callable[[], float],
        waiting: Callable[[], float],
        cache_usage: Callable[[], float],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        reg = self.registry
        names = ["model_name", "engine"]
        values = (model_name, "0")

        def gauge(name: str, doc: str, read: Callable[[], float]) -> None:
            Gauge(name, doc, names, registry=reg).labels(*values).set_function(read)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, names, registry=reg).labels(*values)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, names, registry=reg, buckets=buckets).labels(*values)

        gauge(ENGINE_RUNNING, "Number of requests in model execution batches.", running)
        gauge(ENGINE_WAITING, "Number of requests waiting to be processed.", waiting)
        gauge(ENGINE_KV_CACHE, "KV-cache usage. 1 means 100 percent usage.", cache_usage)

        # prometheus_client appends `_total` to counter names, giving vLLM's exposed names.
        self.prefix_cache_queries = counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
        )
        self.prefix_cache_hits = counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens."
        )
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter(
            "vllm:generation_tokens", "Number of generation tokens processed."
        )
        success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*names, "finished_reason"],
            registry=reg,
        )
        # Every reason exists from the start, as in vLLM, so rate() works before the first one.
        self.request_success = {r: success.labels(*values, r) for r in FINISHED_REASONS}

        self.time_to_first_token = histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            TTFT_BUCKETS,
        )
        self.inter_token_latency = histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            ITL_BUCKETS,
        )
        # Each request's mean time per output token (vLLM >= 0.11; the old per-token
        # `vllm:time_per_output_token_seconds` is gone in 0.32).
        self.time_per_output_token = histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            ITL_BUCKETS,
        )
        self.e2e_request_latency = histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.request_queue_time = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)
