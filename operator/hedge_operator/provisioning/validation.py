"""Pure: checks the CRD schema cannot make: the GPU type against the operator's table, referenced
Secrets, and extraArgs/env that fight the typed fields. Each failure is a `Problem` whose
reason becomes the Ready condition's reason.

Fallback provider keys come only from Secrets that opted in with the label
`hedge.dev/provider-key: "true"` (the gateway watches no other). A reference to any other
Secret is `SecretNotOptedIn`, and its message is the same whether that Secret exists or not
and says nothing of its keys: creating a ModelDeployment must not become a way to learn
which Secrets a namespace holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hedge_core.api import ModelDeployment
from hedge_core.contracts import PROVIDER_KEY_LABEL, shadowed_namespace
from hedge_operator.config import OperatorConfig
from hedge_operator.placement.pod import INVALID_POD_SETTINGS, pod_settings_problem
from hedge_operator.provisioning.builders import (
    DEFAULT_GCS_KEY,
    DEFAULT_HF_TOKEN_KEY,
    OPERATOR_ENV,
    RESTRICTED_CONTAINER_CONTEXT,
    RESTRICTED_POD_CONTEXT,
    Source,
    accelerator_profile,
)

INVALID_SPEC = "InvalidSpec"
UNKNOWN_GPU_TYPE = "UnknownGPUType"
SECRET_NOT_FOUND = "SecretNotFound"
SECRET_NOT_OPTED_IN = "SecretNotOptedIn"
CONFLICTING_ARGS = "ConflictingArgs"
RESERVED_MODEL_NAME = "ReservedModelName"
APPLY_FAILED = "ApplyFailed"


@dataclass(frozen=True)
class Problem:
    """Why a ModelDeployment cannot be (fully) realised."""

    reason: str
    message: str

    @property
    def waiting(self) -> bool:
        """True when the fix can come from outside the spec (e.g. creating the Secret)."""
        return self.reason in (SECRET_NOT_FOUND, SECRET_NOT_OPTED_IN, APPLY_FAILED)


# vLLM flags set from typed fields -> the field to use instead.
MANAGED_FLAGS: dict[str, str] = {
    "--model": "spec.model.source",
    "--served-model-name": "spec.model.name",
    "--port": "the operator (port 8000, named http)",
    "--download-dir": "the operator (the cache volume)",
    "--revision": "spec.model.revision",
    "--hf-token": "spec.model.credentialsSecretRef",
    "--dtype": "spec.engine.dtype",
    "--max-model-len": "spec.engine.maxModelLen",
    "--quantization": "spec.engine.quantization",
    "-q": "spec.engine.quantization",
    "--gpu-memory-utilization": "spec.engine.gpuMemoryUtilization",
    "--enable-prefix-caching": "spec.engine.enablePrefixCaching",
    "--no-enable-prefix-caching": "spec.engine.enablePrefixCaching",
    "--enable-chunked-prefill": "spec.engine.enableChunkedPrefill",
    "--no-enable-chunked-prefill": "spec.engine.enableChunkedPrefill",
    "--tensor-parallel-size": "spec.engine.tensorParallelSize",
    "-tp": "spec.engine.tensorParallelSize",
    "--pipeline-parallel-size": "spec.engine.pipelineParallelSize",
    "-pp": "spec.engine.pipelineParallelSize",
    "--enable-lora": "spec.adapters",
    "--no-enable-lora": "spec.adapters",
    "--lora-modules": "spec.adapters",
    "--shutdown-timeout": "spec.serving.requestTimeoutSeconds (how long a stopping engine "
    "drains the requests in flight)",
}


def flag_name(arg: str) -> str | None:
    """`--max_model_len=8` -> `--max-model-len`; None for values."""
    if not arg.startswith("-") or arg == "-" or arg[1:2].isdigit():
        return None
    name = arg.split("=", 1)[0]
    if name.startswith("--"):
        name = "--" + name[2:].replace("_", "-")
    return name


def conflicting_args(md: ModelDeployment) -> Problem | None:
    for arg in md.spec.engine.extra_args:
        name = flag_name(arg)
        if name in MANAGED_FLAGS:
            return Problem(
                CONFLICTING_ARGS,
                f"spec.engine.extraArgs sets {name}, which comes from "
                f"{MANAGED_FLAGS[name]}; remove it from extraArgs",
            )
    for var in md.spec.engine.env:
        if var.name in OPERATOR_ENV:
            return Problem(
                CONFLICTING_ARGS,
                f"spec.engine.env sets {var.name}, which the operator sets "
                "(use spec.model.credentialsSecretRef for the Hugging Face token)",
            )
    return None


class ProviderKeys(frozenset[str]):
    """The keys of a Secret labelled `hedge.dev/provider-key: "true"` (opted in to be read
    as a fallback provider key); a plain frozenset is a Secret without the label."""


@dataclass(frozen=True)
class SecretUse:
    name: str
    key: str | None  # None: the Secret must exist, any keys
    where: str
    provider_key: bool = False  # read by the gateway: the Secret must have opted in


def secret_uses(md: ModelDeployment) -> list[SecretUse]:
    """Every Secret the spec references, with the key it needs."""
    uses: list[SecretUse] = []
    creds = md.spec.model.credentials_secret_ref
    if creds is not None:
        scheme = Source.parse(md.spec.model.source).scheme
        key = {"hf": creds.key or DEFAULT_HF_TOKEN_KEY, "gs": creds.key or DEFAULT_GCS_KEY}.get(
            scheme
        )
        uses.append(SecretUse(creds.name, key, "spec.model.credentialsSecretRef"))
    for var in md.spec.engine.env:
        if var.secret_key_ref is not None:
            ref = var.secret_key_ref
            uses.append(SecretUse(ref.name, ref.key, f"spec.engine.env[{var.name}]"))
    if md.spec.fallback is not None:
        for i, provider in enumerate(md.spec.fallback.providers):
            if provider.api_key_secret_ref is not None:
                ref = provider.api_key_secret_ref
                where = f"spec.fallback.providers[{i}].apiKeySecretRef"
                uses.append(SecretUse(ref.name, ref.key, where, provider_key=True))
    return uses


def pull_secret_names(md: ModelDeployment) -> list[str]:
    """spec.engine.pod.imagePullSecrets' names."""
    return [ref.name for ref in md.spec.engine.pod.image_pull_secrets]


def missing_pull_secrets(
    md: ModelDeployment, secrets: Mapping[str, frozenset[str] | None]
) -> tuple[str, ...]:
    """The pull secrets the lookup found absent (not those it may not read: those are
    passed on unchecked, as every Secret outside rbac.secretNamespaces)."""
    return tuple(n for n in pull_secret_names(md) if n in secrets and secrets[n] is None)


def opted_in(keys: frozenset[str] | None) -> bool:
    """Whether a Secret's keys (as the reader returned them) are those of an opted-in
    Secret."""
    return isinstance(keys, ProviderKeys)


def not_opted_in(md: ModelDeployment, use: SecretUse) -> Problem:
    """The same words for a Secret without the label and for no Secret at all."""
    return Problem(
        SECRET_NOT_OPTED_IN,
        f"{use.where} names Secret {use.name!r}, which is not a provider-key Secret: "
        f"fallback provider keys are read only from Secrets labelled "
        f'{PROVIDER_KEY_LABEL}: "true" in namespace {md.namespace!r} (create the Secret '
        f"with that label, or add it: kubectl label secret {use.name} "
        f"{PROVIDER_KEY_LABEL}=true)",
    )


def check_secrets(
    md: ModelDeployment, secrets: Mapping[str, frozenset[str] | None]
) -> Problem | None:
    """`secrets` maps each referenced Secret name to its keys (None: it does not exist; a
    `ProviderKeys`: it carries the provider-key label). Provider-key references are
    checked first, so a Secret that did not opt in is never described further."""
    uses = secret_uses(md)
    for use in uses:
        if use.provider_key and not opted_in(secrets.get(use.name)):
            return not_opted_in(md, use)
    for use in uses:
        keys = secrets.get(use.name)
        if keys is None:
            return Problem(
                SECRET_NOT_FOUND,
                f"Secret {use.name!r} ({use.where}) not found in namespace {md.namespace!r}",
            )
        if use.key is not None and use.key not in keys:
            return Problem(
                SECRET_NOT_FOUND,
                f"Secret {use.name!r} ({use.where}) has no key {use.key!r}",
            )
    return None


def reserved_names(md: ModelDeployment) -> Problem | None:
    """A served name (the model's or an adapter's) `<ns>/<name>` with another namespace's
    name in front would shadow that namespace's qualified names: refused, never routed."""
    for where, name in (
        ("spec.model.name", md.served_model),
        *((f"spec.adapters[{a.name}].name", a.name) for a in md.spec.adapters),
    ):
        other = shadowed_namespace(name, md.namespace)
        if other is not None:
            return Problem(
                RESERVED_MODEL_NAME,
                f"{where} {name!r} has the form <namespace>/<name> of namespace {other!r}'s "
                f"models, which clients reach as {other}/<name>; a served name with a '/' "
                f"starts with this namespace ({md.namespace}/...) or with something that is "
                "not a namespace name (e.g. capitals: 'Org/model')",
            )
    return None


def pod_settings(md: ModelDeployment, config: OperatorConfig) -> Problem | None:
    """spec.engine.pod against the accelerator profile and the security profile."""
    problem = pod_settings_problem(
        md, accelerator_profile(md, config), RESTRICTED_POD_CONTEXT, RESTRICTED_CONTAINER_CONTEXT
    )
    return None if problem is None else Problem(INVALID_POD_SETTINGS, problem)


def validate_static(md: ModelDeployment, config: OperatorConfig) -> Problem | None:
    """Checks that need nothing from the cluster."""
    gpu_type = md.spec.resources.gpu_type
    if (
        md.spec.resources.gpus > 0
        and gpu_type is not None
        and (gpu_type not in config.accelerator_profiles)
    ):
        known = ", ".join(sorted(config.accelerator_profiles))
        return Problem(
            UNKNOWN_GPU_TYPE,
            f"spec.resources.gpuType {gpu_type!r} is not one of the operator's "
            f"accelerator profiles (known: {known}); see docs/placement.md",
        )
    return conflicting_args(md) or reserved_names(md) or pod_settings(md, config)


def validate(
    md: ModelDeployment,
    config: OperatorConfig,
    secrets: Mapping[str, frozenset[str] | None],
) -> Problem | None:
    return validate_static(md, config) or check_secrets(md, secrets)
