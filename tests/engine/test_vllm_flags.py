"""The operator's `vllm serve` arguments, judged by real vLLM itself.

Every argument list the builders produce over a matrix of specs (sources, GPU counts and
tensor/pipeline layouts, every quantization method and dtype, LoRA, cache, engine toggles,
extraArgs, the repository's examples) goes through vLLM's own `vllm serve` parser, the serve
command's validation, `AsyncEngineArgs.from_cli_args` and `create_engine_config()`, in one
subprocess of the cached vLLM (tests/engine/vllm_check_args.py). A flag vLLM renamed or
removed, a value it refuses, or a combination its configuration rejects fails here with
vLLM's own message.

The engine configuration is checked against a weightless model directory shaped like the
quickstart's Llama-3.1-8B (its real config.json values), since weights cannot be fetched;
quantized specs stop after the engine arguments, because matching a method against a
quantized checkpoint and a GPU kernel needs both.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from hedge_core.api import Dtype, ModelDeployment, QuantizationMethod
from hedge_core.api.constants import DEFAULT_ENGINE_IMAGE
from hedge_dev import vllm
from hedge_operator.config import OperatorConfig
from hedge_operator.placement.catalog import shipped_profiles
from hedge_operator.provisioning.builders import ENGINE_CONTAINER, build_engine_deployment
from tests.engine.conftest import HERE, run_in_vllm
from tests.operator.factories import model, spec_with

# The first test also waits for vLLM (and, on a fresh machine, its install).
pytestmark = pytest.mark.timeout(900)
ROOT = HERE.parents[1]
CHECKER = HERE / "vllm_check_args.py"
CONFIG = OperatorConfig()

# meta-llama/Llama-3.1-8B-Instruct's config.json, the quickstart model: 32 heads (8 KV heads)
# and 32 layers take every tensor/pipeline layout the API allows (gpus <= 16).
LLAMA_3_1_8B_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "vocab_size": 128256,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}

SOURCES = [
    "hf://meta-llama/Llama-3.1-8B-Instruct",
    "pvc://weights/llama/8b",
    "s3://acme-models/llama/8b",
    "gs://acme-models/llama",
]
# (gpus, explicit tensorParallelSize, pipelineParallelSize)
LAYOUTS = [(0, None, 1), (1, None, 1), (2, None, 1), (4, None, 1), (8, None, 1),
           (8, None, 2), (16, None, 1), (16, None, 4), (4, 2, 2), (8, 8, 1)]  # fmt: skip
ADAPTERS = [
    {"name": "sql-lora", "source": "hf://org/sql-lora"},
    {"name": "tone-lora", "source": "pvc://adapters/tone"},
    {"name": "s3-lora", "source": "s3://acme-models/adapters/s3"},
]


def _resources(gpus: int) -> dict[str, Any]:
    if gpus == 0:
        return {"gpus": 0, "gpuType": None}
    return {"gpus": gpus, "gpuType": "nvidia-h100-80gb"}


def spec_matrix() -> dict[str, dict[str, Any]]:
    """Named specs covering every value of every engine-relevant field at least once, and
    every source with every GPU layout."""
    specs: dict[str, dict[str, Any]] = {}
    for i, source in enumerate(SOURCES):
        for j, (gpus, tp, pp) in enumerate(LAYOUTS):
            engine: dict[str, Any] = {"pipelineParallelSize": pp}
            if tp is not None:
                engine["tensorParallelSize"] = tp
            spec = spec_with(model={"source": source}, resources=_resources(gpus), engine=engine)
            if (i + j) % 2:
                spec["adapters"] = ADAPTERS
            if (i + j) % 3 == 0:
                spec["cache"] = {"size": "200Gi"}
            specs[f"{source.split(':')[0]}-gpus{gpus}-tp{tp}-pp{pp}"] = spec
    for dtype in get_args(Dtype):
        specs[f"dtype-{dtype}"] = spec_with(engine={"dtype": dtype})
    for method in get_args(QuantizationMethod):
        specs[f"quantization-{method}"] = spec_with(engine={"quantization": method})
    for prefix in (True, False):
        for chunked in (True, False):
            specs[f"prefix-{prefix}-chunked-{chunked}"] = spec_with(
                engine={
                    "enablePrefixCaching": prefix,
                    "enableChunkedPrefill": chunked,
                    "maxModelLen": 8192,
                    "gpuMemoryUtilization": 0.85,
                }
            )
    specs["revision-and-long-context"] = spec_with(
        model={"revision": "0e9e39f249a16976918f6564b8830bc894c89659"},
        engine={"maxModelLen": 131072},
    )
    specs["extra-args"] = spec_with(
        engine={
            "extraArgs": [
                "--max-num-seqs", "128",
                "--max-num-batched-tokens=16384",
                "--kv-cache-dtype", "fp8",
                "--max-loras", "4",
                "--max-lora-rank", "64",
                "--enable-auto-tool-choice", "--tool-call-parser", "llama3_json",
                "--uvicorn-log-level", "warning",
            ]
        },
        adapters=ADAPTERS[:1],
    )  # fmt: skip
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for n, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc and doc.get("kind") == "ModelDeployment":
                specs[f"example-{path.stem}-{n}"] = doc["spec"]
    for name in shipped_profiles():
        specs[f"profile-{name}"] = _profile_spec(name)
    return specs


def _profile_spec(gpu_type: str) -> dict[str, Any]:
    """One GPU of a shipped profile: the profile moves the pod (and may swap the image and
    env), never vLLM's arguments."""
    return spec_with(resources={"gpus": 1, "gpuType": gpu_type})


def engine_container(spec: dict[str, Any]) -> dict[str, Any]:
    md: ModelDeployment = model(spec)
    dep = build_engine_deployment(md, CONFIG)
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["name"] == ENGINE_CONTAINER
    assert container["command"] == ["vllm", "serve"]
    return dict(container)


def engine_argv(spec: dict[str, Any]) -> list[str]:
    return list(engine_container(spec)["args"])


def test_every_shipped_profile_builds_the_same_vllm_arguments() -> None:
    """Where the pod runs is the profile's business; what vLLM is told is the spec's."""
    profiles = shipped_profiles()
    argvs = {name: engine_argv(_profile_spec(name)) for name in profiles}
    reference = argvs["nvidia-h100-80gb"]
    assert {n: a for n, a in argvs.items() if a != reference} == {}
    for name, profile in profiles.items():
        image = engine_container(_profile_spec(name))["image"]
        assert image == (profile.image or DEFAULT_ENGINE_IMAGE), name


@pytest.fixture(scope="module")
def shaped_model(tiny_model: Path, module_tmp: Path) -> Path:
    """Llama-3.1-8B's config with the tiny model's tokenizer, and no weights."""
    target = module_tmp / "llama-3.1-8b-shape"
    target.mkdir()
    (target / "config.json").write_text(json.dumps(LLAMA_3_1_8B_CONFIG))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tiny_model / name).exists():
            shutil.copy(tiny_model / name, target / name)
    return target


# Argument lists vLLM must refuse, each with the words it must refuse them in: the judge is
# not a rubber stamp.
REFUSED = {
    # Removed from `vllm serve` before 0.32 (request logging is --enable-log-requests now).
    "removed-flag": (["--disable-log-requests"], "unrecognized arguments: --disable-log-requests"),
    "misspelt-flag": (["--max-model-length", "4096"], "unrecognized arguments: --max-model-length"),
    "bad-choice": (["--kv-cache-dtype", "fp7"], "argument --kv-cache-dtype: invalid choice: 'fp7'"),
    "impossible-layout": (
        ["--tensor-parallel-size", "3"],
        "Total number of attention heads (32) must be divisible by tensor parallel size (3)",
    ),
}


@pytest.fixture(scope="module")
def verdicts(
    vllm_install: vllm.VllmInstall, shaped_model: Path, module_tmp: Path
) -> dict[str, dict[str, Any]]:
    """vLLM's verdict on the whole matrix and on `REFUSED`, from one subprocess."""
    cases = [
        {"id": k, "args": engine_argv(s), "config": "quantization" not in s.get("engine", {})}
        for k, s in spec_matrix().items()
    ]
    base = engine_argv(spec_with())
    cases += [{"id": k, "args": [*base, *extra]} for k, (extra, _) in REFUSED.items()]
    payload = {"model": str(shaped_model), "cases": cases}
    results = {r["id"]: r for r in run_in_vllm(vllm_install, CHECKER, payload, module_tmp)}
    assert set(results) == {c["id"] for c in cases}, "the checker skipped cases"
    for case in cases:
        results[case["id"]]["args"] = case["args"]
    return results


def test_every_builder_argument_list_is_accepted_by_vllm(
    verdicts: dict[str, dict[str, Any]],
) -> None:
    specs = spec_matrix()
    assert len(specs) > 60
    methods = {k: s.get("engine", {}).get("quantization") for k, s in specs.items()}
    assert set(methods.values()) == {None, *get_args(QuantizationMethod)}
    results = {k: verdicts[k] for k in specs}

    failures = [
        f"{k}: {r['stage']}: {r['error']}\n    args: {' '.join(r['args'])}"
        for k, r in results.items()
        if not r["ok"]
    ]
    assert not failures, "vLLM refused builder output:\n" + "\n".join(failures)
    deprecated = [f"{k}: {r['deprecated']}" for k, r in results.items() if r["deprecated"]]
    assert not deprecated, "builder output uses deprecated vLLM arguments:\n" + "\n".join(
        deprecated
    )
    # As deep as vLLM goes here: the whole engine config, or the engine arguments where
    # that needs a quantized checkpoint.
    for k, r in results.items():
        assert r["stage"] == ("engine" if methods[k] else "config"), (k, r)


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_vllm_refuses_what_it_does_not_know_with_its_own_message(
    verdicts: dict[str, dict[str, Any]], case: str
) -> None:
    verdict = verdicts[case]
    assert not verdict["ok"], verdict
    assert REFUSED[case][1] in verdict["error"], verdict
