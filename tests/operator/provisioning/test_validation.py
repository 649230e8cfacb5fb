"""Checks beyond the CRD schema: each failure has one precise reason."""

from __future__ import annotations

from typing import Any

import pytest

from hedge_operator.config import OperatorConfig
from hedge_operator.placement.catalog import gfd_profile
from hedge_operator.provisioning.validation import (
    CONFLICTING_ARGS,
    SECRET_NOT_FOUND,
    SECRET_NOT_OPTED_IN,
    UNKNOWN_GPU_TYPE,
    ProviderKeys,
    flag_name,
    secret_uses,
    validate,
)
from tests.operator.factories import model, spec_with

CONFIG = OperatorConfig()


def reason_of(
    spec: dict[str, Any], secrets: dict[str, frozenset[str] | None] | None = None
) -> str | None:
    problem = validate(model(spec), CONFIG, secrets or {})
    return problem.reason if problem else None


def test_a_valid_spec_has_no_problem() -> None:
    assert reason_of(spec_with()) is None


def test_unknown_gpu_type() -> None:
    problem = validate(model(spec_with(resources={"gpuType": "nvidia-b300"})), CONFIG, {})
    assert problem is not None
    assert problem.reason == UNKNOWN_GPU_TYPE
    assert "'nvidia-b300'" in problem.message and "nvidia-a100-80gb" in problem.message
    assert not problem.waiting


def test_gpu_table_is_configurable() -> None:
    config = OperatorConfig(
        accelerator_profiles={"nvidia-b300": gfd_profile("nvidia-b300", "NVIDIA-B300")}
    )
    assert validate(model(spec_with(resources={"gpuType": "nvidia-b300"})), config, {}) is None
    assert validate(model(spec_with()), config, {}) is not None  # a100 no longer known


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--max-model-len", "4096"], "--max-model-len"),
        (["--max_model_len=4096"], "--max-model-len"),
        (["--tensor-parallel-size=2"], "--tensor-parallel-size"),
        (["-tp", "2"], "-tp"),
        (["--served-model-name", "x"], "--served-model-name"),
        (["--port", "9000"], "--port"),
        (["--no-enable-prefix-caching"], "--no-enable-prefix-caching"),
        (["--lora-modules", "a=b"], "--lora-modules"),
        (["--hf-token", "hf_xxx"], "--hf-token"),
        (["--quantization", "fp8"], "--quantization"),
        (["--shutdown-timeout=0"], "--shutdown-timeout"),
    ],
)
def test_extra_args_that_fight_typed_fields(extra: list[str], flag: str) -> None:
    problem = validate(model(spec_with(engine={"extraArgs": extra})), CONFIG, {})
    assert problem is not None and problem.reason == CONFLICTING_ARGS
    assert f"sets {flag}," in problem.message


def test_other_extra_args_pass() -> None:
    spec = spec_with(engine={"extraArgs": ["--max-num-seqs", "64", "--enforce-eager", "-O3"]})
    assert reason_of(spec) is None


def test_env_that_fights_the_operator() -> None:
    problem = validate(
        model(spec_with(engine={"env": [{"name": "HF_TOKEN", "value": "x"}]})), CONFIG, {}
    )
    assert problem is not None and problem.reason == CONFLICTING_ARGS
    assert "HF_TOKEN" in problem.message


def test_flag_name() -> None:
    assert flag_name("--max_model_len=8") == "--max-model-len"
    assert flag_name("-tp") == "-tp"
    assert flag_name("128") is None
    assert flag_name("-1") is None


def test_secrets_are_required_with_their_keys() -> None:
    spec = spec_with(
        model={"credentialsSecretRef": {"name": "hf"}},
        fallback={
            "providers": [
                {
                    "type": "OpenAI",
                    "model": "gpt-4o-mini",
                    "apiKeySecretRef": {"name": "openai", "key": "api-key"},
                },
            ]
        },
    )
    uses = secret_uses(model(spec))
    assert [(u.name, u.key) for u in uses] == [("hf", "token"), ("openai", "api-key")]

    # A provider key's Secret that is missing reads as one that did not opt in (issue 16
    # High-2: the message is no oracle for which Secrets exist), see test_secret_opt_in.py.
    problem = validate(model(spec), CONFIG, {"hf": frozenset({"token"}), "openai": None})
    assert problem is not None and problem.reason == SECRET_NOT_OPTED_IN and problem.waiting
    assert "'openai'" in problem.message and "spec.fallback.providers[0]" in problem.message
    assert "team-a" in problem.message

    problem = validate(
        model(spec), CONFIG, {"hf": frozenset({"HF_TOKEN"}), "openai": ProviderKeys({"api-key"})}
    )
    assert problem is not None and problem.reason == SECRET_NOT_FOUND
    assert "has no key 'token'" in problem.message

    ok = {"hf": frozenset({"token"}), "openai": ProviderKeys({"api-key"})}
    assert validate(model(spec), CONFIG, ok) is None


def test_s3_credentials_need_only_the_secret() -> None:
    spec = spec_with(model={"source": "s3://bkt/m", "credentialsSecretRef": {"name": "aws"}})
    assert reason_of(spec, {"aws": frozenset({"AWS_ACCESS_KEY_ID"})}) is None
    assert reason_of(spec, {"aws": None}) == SECRET_NOT_FOUND


def test_static_problems_come_before_secret_lookups() -> None:
    spec = spec_with(
        resources={"gpuType": "nvidia-b300"}, model={"credentialsSecretRef": {"name": "x"}}
    )
    assert reason_of(spec, {"x": None}) == UNKNOWN_GPU_TYPE


def test_missing_pull_secrets_are_only_those_found_absent() -> None:
    from hedge_operator.provisioning.secrets import UNCHECKED
    from hedge_operator.provisioning.validation import missing_pull_secrets

    pulls = [{"name": "gone"}, {"name": "here"}, {"name": "forbidden"}, {"name": "unlooked"}]
    md = model(spec_with(engine={"pod": {"imagePullSecrets": pulls}}))
    found = {"gone": None, "here": frozenset({".dockerconfigjson"}), "forbidden": UNCHECKED}
    assert missing_pull_secrets(md, found) == ("gone",)
