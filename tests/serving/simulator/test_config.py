"""The simulator's pure parts: vLLM command lines, annotations, faults, prefix cache, FIFO."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hedge_serving.simulator.config import ANNOTATION_KNOBS, Faults, SimulatorConfig
from hedge_serving.simulator.engine import FifoSlots, Sequence
from hedge_serving.simulator.prefix_cache import PrefixCache

LLAMA = "meta-llama/Meta-Llama-3-8B-Instruct"

VLLM_COMMAND_LINES: list[tuple[str, list[str], dict[str, Any]]] = [
    (
        "vllm serve with positional model and unknown flags",
        ["vllm", "serve", LLAMA, "--port", "8000", "--served-model-name", "llama-3-8b",
         "--max-num-seqs", "64", "--max-model-len", "4096", "--gpu-memory-utilization", "0.9",
         "--enforce-eager", "--tensor-parallel-size", "2", "--dtype", "bfloat16"],
        {"served_model_names": ["llama-3-8b"], "model_path": LLAMA, "port": 8000,
         "max_concurrency": 64, "max_model_len": 4096},
    ),
    (
        "api_server module with --model, --flag=value and several served names",
        ["python3", "-m", "vllm.entrypoints.openai.api_server", "--model", "/models/mistral",
         "--host", "0.0.0.0", "--port=9000", "--served-model-name", "mistral", "mistral-7b",
         "--disable-log-requests"],
        {"served_model_names": ["mistral", "mistral-7b"], "model_path": "/models/mistral",
         "host": "0.0.0.0", "port": 9000, "max_concurrency": 256},
    ),
    (
        "bare args with LoRA modules in both syntaxes",
        ["--model", "base", "--enable-lora", "--lora-modules", "sql-lora=/adapters/sql",
         json.dumps({"name": "chat-lora", "path": "/adapters/chat", "base_model_name": "base"}),
         "--max-loras", "4", "--max-lora-rank", "64"],
        {"served_model_names": ["base"], "lora_modules": {"sql-lora": "/adapters/sql",
                                                          "chat-lora": "/adapters/chat"}},
    ),
    (
        "serve without vllm, underscores, human-readable length, prefix caching off",
        ["serve", "Qwen/Qwen2.5-0.5B-Instruct", "--trust-remote-code", "--max_model_len", "32k",
         "--no-enable-prefix-caching", "--seed", "-1", "--block-size", "32"],
        {"served_model_names": ["Qwen/Qwen2.5-0.5B-Instruct"], "max_model_len": 32000,
         "prefix_cache_blocks": 0, "seed": -1, "block_size": 32},
    ),
    (
        "unknown flags with values before the positional model, JSON values, short flags",
        ["/usr/local/bin/vllm", "serve", "--dtype", "auto", "-tp", "2",
         "--kv-transfer-config", '{"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_both"}',
         "--enable-chunked-prefill", "org/model", "--max-model-len", "8K"],
        {"served_model_names": ["org/model"], "model_path": "org/model", "max_model_len": 8192},
    ),
    (
        "the same flag twice: the last wins, as with argparse",
        ["vllm", "serve", "m", "--port", "8001", "--port", "8002", "--speculative-config",
         '{"method": "ngram"}', "--max-num-seqs=8"],
        {"port": 8002, "max_concurrency": 8},
    ),
    (
        "drain on shutdown, as the operator asks for it",
        ["vllm", "serve", "m", "--shutdown-timeout", "300"],
        {"shutdown_timeout_s": 300.0},
    ),
    (
        "abort on shutdown: vLLM's default",
        ["vllm", "serve", "m"],
        {"shutdown_timeout_s": 0.0},
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "expected"),
    [pytest.param(args, expected, id=name) for name, args, expected in VLLM_COMMAND_LINES],
)
def test_from_vllm_args_reads_real_command_lines(args: list[str], expected: dict[str, Any]) -> None:
    config = SimulatorConfig.from_vllm_args(args)
    for attr, value in expected.items():
        assert getattr(config, attr) == value, attr
    assert config.model_name == config.served_model_names[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["vllm", "serve"], "no model"),
        (["vllm", "serve", "m", "--port", "http"], "--port"),
        (["vllm", "serve", "m", "--port"], "--port needs a value"),
        (["vllm", "serve", "m", "--max-num-seqs", "many"], "--max-num-seqs"),
        (["vllm", "serve", "m", "--max-model-len", "long"], "--max-model-len"),
        (["vllm", "serve", "m", "--lora-modules", "a=/x"], "--enable-lora"),
        (["vllm", "serve", "m", "--enable-lora", "--lora-modules", "nopath"], "name=path"),
        (["vllm", "serve", "m", "--max-num-seqs", "0"], "max_concurrency"),
        (["vllm", "serve", "m", "--shutdown-timeout", "soon"], "--shutdown-timeout"),
    ],
)
def test_from_vllm_args_rejects_what_vllm_would(args: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimulatorConfig.from_vllm_args(args)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "vllm",
                "serve",
                "m",
                "--port",
                "80",
                "--model",
                "x",
                "=",
                "--served-model-name",
                "--lora-modules",
                "a=b",
                "--enable-lora",
                "-",
                "--",
                "--dtype",
                "{",
                "-1",
                "--max-model-len",
                "4k",
                "",
            ]
        )
    )
)
def test_from_vllm_args_either_parses_or_raises_value_error(args: list[str]) -> None:
    try:
        config = SimulatorConfig.from_vllm_args(args)
    except ValueError:
        return
    assert config.served_model_names and all(config.served_model_names)


def test_annotations_set_knobs_and_override_vllm_flags() -> None:
    config = SimulatorConfig.from_vllm_args(
        ["vllm", "serve", LLAMA, "--max-num-seqs", "64"],
        {
            "sim.hedge.dev/ttft-ms": "50",
            "sim.hedge.dev/itl-ms": "7.5",
            "sim.hedge.dev/max-concurrency": "3",
            "sim.hedge.dev/prefill-ms-per-token": "0.25",
            "sim.hedge.dev/prefix-cache-blocks": "10",
            "sim.hedge.dev/fail-health": "true",
            "sim.hedge.dev/error-rate": "0.25",
            "sim.hedge.dev/drop-after-chunks": "3",
            "sim.hedge.dev/slowdown": "2",
            "sim.hedge.dev/container-state": "CrashLoopBackOff",  # the pod runner's, ignored
            "sim.hedge.dev/no-such-knob": "1",  # logged and ignored
            "kubectl.kubernetes.io/restartedAt": "2025-01-01T00:00:00Z",
        },
    )
    assert (config.ttft_ms, config.itl_ms, config.max_concurrency) == (50.0, 7.5, 3)
    assert (config.prefill_ms_per_token, config.prefix_cache_blocks) == (0.25, 10)
    assert config.faults == Faults(
        fail_health=True, error_rate=0.25, drop_after_chunks=3, slowdown=2.0
    )


@pytest.mark.parametrize(
    ("knob", "value"),
    [
        ("ttft-ms", "fast"),
        ("ttft-ms", "-1"),
        ("max-concurrency", "0"),
        ("max-concurrency", "2.5"),
        ("error-rate", "2"),
        ("fail-health", "maybe"),
        ("error-status", "200"),
        ("slowdown", "0"),
        ("drop-after-chunks", "-3"),
    ],
)
def test_bad_annotation_values_name_the_annotation(knob: str, value: str) -> None:
    key = f"sim.hedge.dev/{knob}"
    with pytest.raises(ValueError, match=key):
        SimulatorConfig.from_vllm_args(["vllm", "serve", "m"], {key: value})


def test_every_annotation_knob_names_a_real_field() -> None:
    config = SimulatorConfig()
    for attr, _, is_fault in ANNOTATION_KNOBS.values():
        assert hasattr(config.faults if is_fault else config, attr)


def test_faults_updates_from_json_are_typed() -> None:
    faults = Faults().updated({"fail-health": True, "error_rate": 1, "drop_after_chunks": None})
    assert faults == Faults(fail_health=True, error_rate=1.0)
    assert isinstance(faults.error_rate, float)
    for bad in ({"hang": 1}, {"error_status": True}, {"error_rate": "0.5"}, {"nope": 1},
                {"error_rate": 1.5}, {"drop_after_chunks": 1.5}):  # fmt: skip
        with pytest.raises(ValueError):
            Faults().updated(bad)


# --- prefix cache -------------------------------------------------------------------------------


def _words(n: int, tag: str = "w") -> list[str]:
    return [f"{tag}{i}" for i in range(n)]


def test_prefix_cache_hits_whole_blocks_and_recomputes_the_last_token() -> None:
    cache = PrefixCache(capacity_blocks=100, block_size=16)
    first = cache.match_and_store(_words(40))
    assert (first.queried_tokens, first.hit_tokens) == (40, 0)
    assert cache.used_blocks == 2
    assert cache.match_and_store(_words(40)).hit_tokens == 32
    # Exactly two blocks long: the last token is recomputed, so only one block can hit.
    assert cache.match_and_store(_words(32)).hit_tokens == 16
    # Longer prompt with the same start: the shared blocks hit, the new ones are stored.
    assert cache.match_and_store(_words(70)).hit_tokens == 32
    assert cache.used_blocks == 4


def test_prefix_cache_blocks_are_chained_on_their_prefix() -> None:
    cache = PrefixCache(capacity_blocks=100, block_size=4)
    cache.match_and_store(["a", "b", "c", "d", "e", "f", "g", "h", "i"])
    # Same second block after a different first block: no hit at all.
    assert cache.match_and_store(["X", "b", "c", "d", "e", "f", "g", "h", "i"]).hit_tokens == 0
    assert cache.match_and_store(["a", "b", "c", "d", "X", "f", "g", "h", "i"]).hit_tokens == 4


def test_prefix_cache_evicts_least_recently_used_tail_first() -> None:
    cache = PrefixCache(capacity_blocks=4, block_size=2)
    a, b = _words(7, "a"), _words(7, "b")  # three full blocks each
    cache.match_and_store(a)
    cache.match_and_store(b)  # 6 blocks > 4: a loses its two last blocks first
    assert cache.used_blocks == 4
    assert cache.usage == 1.0
    assert cache.match_and_store(a).hit_tokens == 2
    assert cache.match_and_store(b).hit_tokens == 2  # refilling a pushed out b's later blocks


def test_prefix_cache_with_no_capacity_is_disabled() -> None:
    cache = PrefixCache(capacity_blocks=0)
    cache.match_and_store(_words(64))
    assert (cache.match_and_store(_words(64)).hit_tokens, cache.used_blocks) == (0, 0)
    assert not cache.enabled and cache.usage == 0.0


# --- admission and generation -------------------------------------------------------------------


async def test_fifo_slots_admit_in_arrival_order_and_survive_cancellation() -> None:
    slots = FifoSlots(capacity=1)
    await slots.acquire()
    order: list[int] = []

    async def waiter(i: int) -> None:
        await slots.acquire()
        order.append(i)
        slots.release()

    tasks = [asyncio.create_task(waiter(i)) for i in range(4)]
    for _ in range(3):
        await asyncio.sleep(0)  # let every waiter queue
    assert (slots.running, slots.waiting) == (1, 4)
    tasks[1].cancel()
    await asyncio.sleep(0)
    assert slots.waiting == 3
    slots.release()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert order == [0, 2, 3]
    assert (slots.running, slots.waiting) == (0, 0)


def test_sequence_stops_before_a_stop_string_spanning_words() -> None:
    free = Sequence(0, 12, True, [], random.Random(7))
    while not free.finished:
        free.step()
    assert free.finish_reason == "length" and free.generated == 12
    words = free.text.split()
    stop = f"{words[3]} {words[4]}"
    seq = Sequence(0, 12, True, [stop], random.Random(7))
    deltas = []
    while not seq.finished:
        deltas.append(seq.step())
    assert seq.finish_reason == "stop" and seq.stop_reason == stop
    assert seq.text == free.text[: free.text.index(stop)]
    assert stop not in "".join(deltas)
    default_length = Sequence(0, 5, False, [], random.Random(1))
    while not default_length.finished:
        default_length.step()
    assert default_length.finish_reason == "stop" and default_length.stop_reason is None
