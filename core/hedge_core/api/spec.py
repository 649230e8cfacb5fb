"""The ModelDeployment spec (hedge.dev/v1alpha1): the dataclasses the CRD's spec schema
(descriptions, defaults, bounds, CEL rules) is generated from, and that `parse` fills in
with the same rules in Python, so objects that never met the API server (unit tests,
clusters without the CRD's CEL) are judged alike."""

# The fields of the API's dataclasses are declared with `prop(...)`, a dataclasses.field()
# wrapper carrying the CRD description and schema keywords.
# ruff: noqa: RUF009

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from hedge_core.api.constants import (
    BUCKET_SOURCE,
    DEFAULT_COLD_START_HOLD_SECONDS,
    DEFAULT_ENGINE_IMAGE,
    DNS_LABEL,
    DNS_SUBDOMAIN,
    ENV_NAME,
    HF_SOURCE,
    PVC_SOURCE,
    SECRET_KEY,
    SERVED_NAME,
)
from hedge_core.api.schema import (
    IntOrPercent,
    KubeObject,
    NamedKubeObject,
    Quantity,
    Rule,
    prop,
)


def _matches(pattern: str) -> Callable[[Any], bool]:
    return lambda value: re.search(pattern, value) is not None


def _cel_string(text: str) -> str:
    """A CEL string literal (regex backslashes must be escaped in CEL source)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _source_rules() -> tuple[Rule, ...]:
    return (
        Rule(
            "self.startsWith('hf://') || self.startsWith('s3://') || self.startsWith('gs://')"
            " || self.startsWith('pvc://')",
            "source must start with hf://, s3://, gs:// or pvc://",
            lambda s: s.startswith(("hf://", "s3://", "gs://", "pvc://")),
        ),
        Rule(
            f"!self.startsWith('hf://') || self.matches({_cel_string(HF_SOURCE)})",
            "hf:// sources look like hf://org/name",
            lambda s: not s.startswith("hf://") or _matches(HF_SOURCE)(s),
        ),
        Rule(
            f"!(self.startsWith('s3://') || self.startsWith('gs://'))"
            f" || self.matches({_cel_string(BUCKET_SOURCE)})",
            "s3:// and gs:// sources look like s3://bucket/path",
            lambda s: not s.startswith(("s3://", "gs://")) or _matches(BUCKET_SOURCE)(s),
        ),
        Rule(
            f"!self.startsWith('pvc://') || self.matches({_cel_string(PVC_SOURCE)})",
            "pvc:// sources look like pvc://claim/path",
            lambda s: not s.startswith("pvc://") or _matches(PVC_SOURCE)(s),
        ),
        Rule(
            "!self.contains('..')",
            "source must not contain '..'",
            lambda s: ".." not in s,
        ),
    )


@dataclass(frozen=True, kw_only=True)
class SecretKeyRef:
    """A key of a Secret in the ModelDeployment's namespace."""

    name: str = prop(
        "Name of the Secret, in the ModelDeployment's namespace.",
        maxLength=253,
        pattern=DNS_SUBDOMAIN,
    )
    key: str = prop("Key within the Secret.", maxLength=253, pattern=SECRET_KEY)


@dataclass(frozen=True, kw_only=True)
class CredentialsRef:
    """A Secret holding the credentials for downloading the weights."""

    name: str = prop(
        "Name of the Secret, in the ModelDeployment's namespace. Only referenced: its values "
        "never appear in arguments, environment values, logs or status.",
        maxLength=253,
        pattern=DNS_SUBDOMAIN,
    )
    key: str | None = prop(
        "For hf:// sources, the key holding the Hugging Face token (default `token`), "
        "passed to the engine as HF_TOKEN. For gs:// sources, the key holding the "
        "service-account JSON (default `key.json`). For s3:// sources the key is unused: "
        "every key of the Secret (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, "
        "AWS_ENDPOINT_URL…) becomes an environment variable of the download step.",
        default=None,
        maxLength=253,
        pattern=SECRET_KEY,
    )


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Which weights to serve and under which name."""

    source: str = prop(
        "Where the weights come from: hf://org/name (Hugging Face Hub, downloaded by the "
        "engine), s3://bucket/path or gs://bucket/path (copied into the cache by an init "
        "step), or pvc://claim/path (a PersistentVolumeClaim in this namespace, mounted "
        "read-only).",
        maxLength=512,
        rules=_source_rules(),
    )
    revision: str | None = prop(
        "Hugging Face revision (branch, tag or commit) to pin; hf:// sources only.",
        default=None,
        maxLength=128,
        pattern=r"^[-A-Za-z0-9._/]+$",
    )
    name: str | None = prop(
        "Served model name: what clients send as `model`. Defaults to the ModelDeployment's name.",
        default=None,
        maxLength=128,
        pattern=SERVED_NAME,
    )
    credentials_secret_ref: CredentialsRef | None = prop(
        "Secret with the credentials for the source (a Hugging Face token, S3 keys or a "
        "GCS service account). Optional for public models.",
        default=None,
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!has(self.revision) || self.source.startsWith('hf://')",
            "model.revision is only supported for hf:// sources",
            lambda m: m.revision is None or m.source.startswith("hf://"),
        ),
        Rule(
            "!has(self.credentialsSecretRef) || !self.source.startsWith('pvc://')",
            "model.credentialsSecretRef does not apply to pvc:// sources",
            lambda m: m.credentials_secret_ref is None or not m.source.startswith("pvc://"),
        ),
    )


@dataclass(frozen=True, kw_only=True)
class EnvVar:
    """An environment variable of the engine container."""

    name: str = prop("Variable name.", maxLength=253, pattern=ENV_NAME)
    value: str | None = prop(
        "Literal value. Never put a secret here.", default=None, maxLength=4096
    )
    secret_key_ref: SecretKeyRef | None = prop(
        "Take the value from a Secret key (by reference; the value is never copied).",
        default=None,
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "has(self.value) != has(self.secretKeyRef)",
            "env: set exactly one of value and secretKeyRef",
            lambda e: (e.value is None) != (e.secret_key_ref is None),
        ),
    )


#: Labels the operator sets on engine pods (selectors, ownership): spec.engine.pod.labels
#: may not set them, nor anything else under hedge.dev/.
OWNED_LABEL_KEYS = ("app.kubernetes.io/managed-by", "app.kubernetes.io/part-of")
OWNED_LABEL_PREFIX = "hedge.dev/"
#: The engine pod's own volumes; spec.engine.pod.volumes may not reuse the names.
OWNED_VOLUMES = ("dshm", "models", "gcs-credentials")
OWNED_VOLUME_PREFIX = "pvc-"
#: Where the operator mounts the weights, the shared memory and credentials.
OWNED_MOUNT_PATHS = ("/dev/shm", "/models", "/mnt/pvc", "/var/run/secrets/hedge")
#: Accelerator resources the GPU count (spec.resources.gpus) and its profile set.
GPU_RESOURCES = ("nvidia.com/gpu", "amd.com/gpu")


def _cel_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(_cel_string(v) for v in values) + "]"


def _owned_mount(path: str) -> bool:
    clean = "/" + path.strip("/")
    return any(clean == p or clean.startswith(p + "/") for p in OWNED_MOUNT_PATHS)


@dataclass(frozen=True, kw_only=True)
class Toleration:
    """A toleration of the engine pods (Kubernetes' own shape)."""

    key: str | None = prop(
        "Taint key; unset with operator Exists tolerates every taint.",
        default=None,
        maxLength=316,
    )
    operator: Literal["Equal", "Exists"] = prop(
        "Equal matches the value; Exists any value.", default="Equal"
    )
    value: str | None = prop("Taint value (operator Equal).", default=None, maxLength=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = prop(
        "Taint effect; unset matches every effect.", default=None
    )
    toleration_seconds: int | None = prop(
        "With NoExecute: how long the pod stays once the taint appears.",
        default=None,
        minimum=0,
        maximum=86400 * 365,
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "has(self.key) || self.operator == 'Exists'",
            "a toleration without a key needs operator Exists",
            lambda t: t.key is not None or t.operator == "Exists",
        ),
        Rule(
            "self.operator != 'Exists' || !has(self.value)",
            "a toleration with operator Exists takes no value",
            lambda t: t.operator != "Exists" or t.value is None,
        ),
        Rule(
            "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            "tolerationSeconds applies only to effect NoExecute",
            lambda t: t.toleration_seconds is None or t.effect == "NoExecute",
        ),
    )


@dataclass(frozen=True, kw_only=True)
class LocalObjectReference:
    """A Secret in the ModelDeployment's namespace, by name."""

    name: str = prop("Secret name.", maxLength=253, pattern=DNS_SUBDOMAIN)


@dataclass(frozen=True, kw_only=True)
class VolumeMount:
    """Where the engine container mounts one of spec.engine.pod.volumes."""

    name: str = prop("The volume's name.", maxLength=63, pattern=DNS_LABEL)
    mount_path: str = prop(
        "Absolute path in the engine container. /models, /dev/shm, /mnt/pvc and "
        "/var/run/secrets/hedge are the operator's.",
        maxLength=1024,
        pattern=r"^/",
        rules=(
            Rule(
                "!("
                + " || ".join(
                    f"self == {_cel_string(p)} || self.startsWith({_cel_string(p + '/')})"
                    for p in OWNED_MOUNT_PATHS
                )
                + ")",
                "engine.pod.volumeMounts: /models, /dev/shm, /mnt/pvc and "
                "/var/run/secrets/hedge are mounted by the operator",
                lambda path: not _owned_mount(path),
            ),
        ),
    )
    read_only: bool = prop("Mount read-only.", default=False)
    sub_path: str | None = prop(
        "A path inside the volume to mount instead of its root.",
        default=None,
        maxLength=1024,
        rules=(
            Rule(
                "!self.startsWith('/') && !self.contains('..')",
                "engine.pod.volumeMounts.subPath is relative and has no '..'",
                lambda p: not p.startswith("/") and ".." not in p,
            ),
        ),
    )


@dataclass(frozen=True, kw_only=True)
class PodSettings:
    """Settings of the engine pods that the platform needs (placement, identity, policy,
    extra volumes), merged with what the accelerator profile and the operator set. What the
    operator owns (the engine container's command, ports, probes, the GPU resource, Hedge's
    labels and volumes) cannot be set here; docs/placement.md gives the precedence."""

    node_selector: dict[str, str] = prop(
        "Node labels the engine pods require, added to the accelerator profile's (a key "
        "the profile sets cannot be given another value).",
        default_factory=dict,
        maxProperties=32,
    )
    tolerations: list[Toleration] = prop(
        "Tolerations added to the profile's.", default_factory=list, maxItems=32
    )
    affinity: KubeObject | None = prop(
        "A Kubernetes Affinity. Its required node affinity is ANDed with the profile's; "
        "preferences, pod affinity and anti-affinity are kept as given.",
        default=None,
    )
    topology_spread_constraints: list[KubeObject] = prop(
        "Kubernetes TopologySpreadConstraints of the engine pods (e.g. across zones); "
        "a labelSelector may use the pods' hedge.dev/model-deployment label.",
        default_factory=list,
        maxItems=8,
    )
    priority_class_name: str | None = prop(
        "PriorityClass of the engine pods.", default=None, maxLength=253, pattern=DNS_SUBDOMAIN
    )
    image_pull_secrets: list[LocalObjectReference] = prop(
        "Secrets (type kubernetes.io/dockerconfigjson) the kubelet pulls the images with.",
        default_factory=list,
        maxItems=8,
        list_map_keys=("name",),
    )
    service_account_name: str | None = prop(
        "ServiceAccount of the engine pods (e.g. one bound to a cloud identity for bucket "
        "access). Its API token is still not mounted: the engine never calls the API.",
        default=None,
        maxLength=253,
        pattern=DNS_SUBDOMAIN,
    )
    runtime_class_name: str | None = prop(
        "RuntimeClass of the engine pods; overrides the accelerator profile's.",
        default=None,
        maxLength=253,
        pattern=DNS_SUBDOMAIN,
    )
    security_context: KubeObject | None = prop(
        "The pod's securityContext. With securityProfile Restricted, the fields that "
        "profile sets may not be given other values.",
        default=None,
    )
    container_security_context: KubeObject | None = prop(
        "The engine container's securityContext (same rule as securityContext).",
        default=None,
    )
    volumes: list[NamedKubeObject] = prop(
        "Extra Kubernetes Volumes of the engine pods. dshm, models, gcs-credentials and "
        "pvc-* are the operator's names.",
        default_factory=list,
        maxItems=16,
        list_map_keys=("name",),
    )
    volume_mounts: list[VolumeMount] = prop(
        "Where the engine container mounts the extra volumes.",
        default_factory=list,
        maxItems=16,
        list_map_keys=("mountPath",),
    )
    extra_resources: dict[str, Quantity] = prop(
        "Other extended resources of the engine container, requested and limited alike "
        "(e.g. vpc.amazonaws.com/efa: 1, rdma/ib: 1). Not cpu or memory "
        "(spec.resources), nor the GPU (spec.resources.gpus and the profile's resource).",
        default_factory=dict,
        maxProperties=16,
    )
    labels: dict[str, str] = prop(
        "Labels added to the engine pods (not hedge.dev/*, app.kubernetes.io/managed-by "
        "or app.kubernetes.io/part-of).",
        default_factory=dict,
        maxProperties=32,
    )
    annotations: dict[str, str] = prop(
        "Annotations added to the engine pods (with engine.podAnnotations; these win).",
        default_factory=dict,
        maxProperties=64,
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!has(self.labels) || "
            f"self.labels.all(k, !k.startsWith({_cel_string(OWNED_LABEL_PREFIX)}) && "
            f"!(k in {_cel_list(OWNED_LABEL_KEYS)}))",
            "engine.pod.labels: hedge.dev/*, app.kubernetes.io/managed-by and "
            "app.kubernetes.io/part-of are set by the operator",
            lambda p: (
                not any(k.startswith(OWNED_LABEL_PREFIX) or k in OWNED_LABEL_KEYS for k in p.labels)
            ),
        ),
        Rule(
            "!has(self.extraResources) || "
            f"self.extraResources.all(k, k.contains('/') && !(k in {_cel_list(GPU_RESOURCES)}))",
            "engine.pod.extraResources: only extended resources other than the GPU; the GPU "
            "count is resources.gpus and its resource comes from the accelerator profile",
            lambda p: all("/" in k and k not in GPU_RESOURCES for k in p.extra_resources),
        ),
        Rule(
            "!has(self.volumes) || "
            f"self.volumes.all(v, !(v.name in {_cel_list(OWNED_VOLUMES)}) && "
            f"!v.name.startsWith({_cel_string(OWNED_VOLUME_PREFIX)}))",
            "engine.pod.volumes: dshm, models, gcs-credentials and pvc-* are the operator's "
            "volume names",
            lambda p: (
                not any(
                    v.get("name") in OWNED_VOLUMES
                    or str(v.get("name")).startswith(OWNED_VOLUME_PREFIX)
                    for v in p.volumes
                )
            ),
        ),
        Rule(
            "!has(self.volumeMounts) || self.volumeMounts.all(m, has(self.volumes) && "
            "self.volumes.exists(v, v.name == m.name))",
            "engine.pod.volumeMounts: each mount names one of engine.pod.volumes",
            lambda p: all(any(v.get("name") == m.name for v in p.volumes) for m in p.volume_mounts),
        ),
    )

    def is_empty(self) -> bool:
        return self == PodSettings()


Dtype = Literal["auto", "half", "float16", "bfloat16", "float", "float32"]
# vLLM's own spellings, so values copy straight from vLLM's documentation.
QuantizationMethod = Literal[
    "awq",
    "awq_marlin",
    "gptq",
    "gptq_marlin",
    "fp8",
    "bitsandbytes",
    "compressed-tensors",
    "gguf",
    "marlin",
    "modelopt",
    "mxfp4",
    "experts_int8",
]


@dataclass(frozen=True, kw_only=True)
class EngineSpec:
    """The vLLM engine: image and the common `vllm serve` settings."""

    image: str = prop(
        "Engine image (vLLM's OpenAI-compatible server). Pinned by default.",
        default=DEFAULT_ENGINE_IMAGE,
        maxLength=512,
        minLength=1,
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = prop(
        "When the kubelet pulls the image.", default="IfNotPresent"
    )
    security_profile: Literal["Unset", "Restricted"] = prop(
        "Restricted: the engine pods (init containers included) pass Pod Security "
        "`restricted`: run as a non-root user (uid/gid 1000, fsGroup 1000 so the cache "
        "volume is writable), no privilege escalation, every capability dropped, the "
        "runtime's default seccomp profile, HOME on the cache volume. Unset: no "
        "securityContext (the vLLM image runs as root); left as the default so that an "
        "upgrade does not restart every engine with a new pod template.",
        default="Unset",
    )
    max_model_len: int | None = prop(
        "Context length (--max-model-len). Defaults to the model's own.",
        default=None,
        minimum=1,
        maximum=10_000_000,
    )
    dtype: Dtype = prop("Weights and activations dtype (--dtype).", default="auto")
    quantization: QuantizationMethod | None = prop(
        "Quantization method (--quantization), in vLLM's spelling. Unset: as the checkpoint says.",
        default=None,
    )
    gpu_memory_utilization: float = prop(
        "Fraction of each GPU's memory vLLM may use (--gpu-memory-utilization).",
        default=0.9,
        minimum=0,
        exclusiveMinimum=True,
        maximum=1,
    )
    enable_prefix_caching: bool = prop(
        "Automatic prefix caching (--enable-prefix-caching / --no-enable-prefix-caching).",
        default=True,
    )
    enable_chunked_prefill: bool = prop(
        "Chunked prefill (--enable-chunked-prefill / --no-enable-chunked-prefill).",
        default=True,
    )
    tensor_parallel_size: int | None = prop(
        "Tensor parallel size (--tensor-parallel-size). Default: resources.gpus / "
        "pipelineParallelSize.",
        default=None,
        minimum=1,
        maximum=64,
    )
    pipeline_parallel_size: int = prop(
        "Pipeline parallel size (--pipeline-parallel-size).",
        default=1,
        minimum=1,
        maximum=64,
    )
    startup_timeout_seconds: int = prop(
        "How long the engine may take to download and load the weights before the "
        "startup probe gives up and the container restarts.",
        default=1800,
        minimum=60,
        maximum=86400,
    )
    extra_args: list[str] = prop(
        "More `vllm serve` arguments, appended as given. Flags the operator sets from "
        "typed fields (--served-model-name, --max-model-len, --tensor-parallel-size…) "
        "are refused with reason ConflictingArgs.",
        default_factory=list,
        maxItems=64,
        items={"maxLength": 1024},
    )
    env: list[EnvVar] = prop(
        "Extra environment variables of the engine container.",
        default_factory=list,
        maxItems=64,
        list_map_keys=("name",),
    )
    pod_annotations: dict[str, str] = prop(
        "Annotations added to the engine pods (e.g. for log shippers, or the local "
        "cluster's sim.hedge.dev/* simulator knobs).",
        default_factory=dict,
        maxProperties=64,
    )
    pod: PodSettings = prop(
        "Settings of the engine pods the platform needs: node selector, tolerations, "
        "affinity, priority class, pull secrets, service account, runtime class, security "
        "contexts, extra volumes, labels and annotations (docs/placement.md).",
        default_factory=PodSettings,
    )


@dataclass(frozen=True, kw_only=True)
class ResourcesSpec:
    """GPUs and the other resources of each engine pod."""

    gpus: int = prop(
        "GPUs per engine pod (nvidia.com/gpu). 0 runs the engine without GPUs.",
        default=1,
        minimum=0,
        maximum=16,
    )
    gpu_type: str | None = prop(
        "GPU type from the operator's GPU table (e.g. nvidia-a100-80gb, nvidia-h100-80gb, "
        "nvidia-l4); pods are scheduled on nodes whose nvidia.com/gpu.product label "
        "matches. Unset: any GPU.",
        default=None,
        maxLength=63,
        pattern=DNS_LABEL,
    )
    cpu: Quantity = prop("CPU request of each engine pod.", default=Quantity("4"))
    memory: Quantity = prop(
        "Memory request and limit of each engine pod (the shared memory counts against it).",
        default=Quantity("32Gi"),
    )
    shm_size: Quantity = prop(
        "Size of /dev/shm (memory-backed), used by vLLM's workers for tensor parallelism.",
        default=Quantity("8Gi"),
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.gpus > 0 || !has(self.gpuType)",
            "resources.gpuType needs resources.gpus > 0",
            lambda r: r.gpus > 0 or r.gpu_type is None,
        ),
    )


@dataclass(frozen=True, kw_only=True)
class AdapterSpec:
    """A LoRA adapter served by the same engine pods under its own model name."""

    name: str = prop(
        "Model name clients send to use this adapter.", maxLength=128, pattern=SERVED_NAME
    )
    source: str = prop(
        "Where the adapter comes from (hf://, s3://, gs:// or pvc://, as model.source).",
        maxLength=512,
        rules=_source_rules(),
    )


@dataclass(frozen=True, kw_only=True)
class CacheSpec:
    """A persistent volume for downloaded weights, so restarts do not download again."""

    size: Quantity = prop(
        "Size of the cache volume (ignored with existingClaim).", default=Quantity("100Gi")
    )
    storage_class_name: str | None = prop(
        "StorageClass of the cache volume. Unset: the cluster's default.",
        default=None,
        maxLength=253,
        pattern=DNS_SUBDOMAIN,
        rules=(Rule("self == oldSelf", "cache.storageClassName is immutable", None),),
    )
    existing_claim: str | None = prop(
        "Use this existing PersistentVolumeClaim instead of creating one.",
        default=None,
        maxLength=253,
        pattern=DNS_SUBDOMAIN,
    )
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"] = prop(
        "Access mode of the created volume. Use ReadWriteMany when replicas may land on "
        "different nodes and the storage class supports it.",
        default="ReadWriteOnce",
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!(has(self.existingClaim) && has(self.storageClassName))",
            "cache.existingClaim and cache.storageClassName are mutually exclusive",
            lambda c: not (c.existing_claim and c.storage_class_name),
        ),
    )


@dataclass(frozen=True, kw_only=True)
class AutoscalingSpec:
    """How the operator sizes the model to its demand: requests in flight, measured at the
    gateways (served, held while scaling from zero, or spilled to a fallback) and at the
    engines. With autoscaling, the operator owns the replica count (status.autoscaling);
    spec.replicas is then ignored, so a GitOps tool sees no drift."""

    min_replicas: int = prop(
        "Fewest replicas; 0 allows scaling to zero (requests are then answered by the fallback "
        "providers, or held, until a pod is ready).",
        default=1,
        minimum=0,
        maximum=512,
    )
    max_replicas: int = prop("Most replicas.", minimum=1, maximum=512)
    target_requests: int = prop(
        "Requests in flight per replica the autoscaler aims for (desired replicas = "
        "ceil(demand / targetRequests)).",
        default=16,
        minimum=1,
        maximum=100000,
    )
    stable_window_seconds: int = prop(
        "Demand is averaged over this window for ordinary decisions.",
        default=60,
        minimum=2,
        maximum=3600,
    )
    panic_window_seconds: int | None = prop(
        "A short window: when its average asks for panicThresholdPercent of the ready "
        "capacity or more, the model scales up at once and does not scale down until the "
        "stable window has passed calmly. Unset: a tenth of the stable window (at least 1).",
        default=None,
        minimum=1,
        maximum=600,
    )
    panic_threshold_percent: int = prop(
        "How far above the ready capacity the panic window's demand must be to panic.",
        default=200,
        minimum=110,
        maximum=1000,
    )
    scale_down_delay_seconds: int = prop(
        "How long load must stay low before scaling down: the highest replica count asked "
        "for in this window is kept.",
        default=300,
        minimum=0,
        maximum=86400,
    )
    scale_to_zero_after_seconds: int = prop(
        "With minReplicas 0: scale to zero after no request arrived for this long.",
        default=600,
        minimum=1,
        maximum=604800,
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.minReplicas <= self.maxReplicas",
            "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
            lambda a: a.min_replicas <= a.max_replicas,
        ),
        Rule(
            "!has(self.panicWindowSeconds) || self.panicWindowSeconds <= self.stableWindowSeconds",
            "autoscaling.panicWindowSeconds must not exceed autoscaling.stableWindowSeconds",
            lambda a: (
                a.panic_window_seconds is None or a.panic_window_seconds <= a.stable_window_seconds
            ),
        ),
    )

    @property
    def panic_window(self) -> int:
        """The panic window in effect (Knative's: a tenth of the stable window)."""
        if self.panic_window_seconds is not None:
            return self.panic_window_seconds
        return max(1, round(self.stable_window_seconds / 10))


@dataclass(frozen=True, kw_only=True)
class NetworkPeer:
    """Pods allowed to call the engine pods directly, besides the gateways and the operator
    (e.g. a Prometheus that scrapes them). Both selectors given: pods matching podLabels in
    namespaces matching namespaceLabels; one alone: that one; an empty peer is refused."""

    namespace_labels: dict[str, str] | None = prop(
        "Namespaces whose labels include all of these (e.g. "
        "kubernetes.io/metadata.name: monitoring). Unset: this namespace only.",
        default=None,
        maxProperties=16,
    )
    pod_labels: dict[str, str] | None = prop(
        "Pods whose labels include all of these. Unset: every pod of the namespaces selected.",
        default=None,
        maxProperties=16,
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "has(self.namespaceLabels) || has(self.podLabels)",
            "serving.allowFrom: give namespaceLabels, podLabels or both",
            lambda v: v.namespace_labels is not None or v.pod_labels is not None,
        ),
    )


@dataclass(frozen=True, kw_only=True)
class ServingSpec:
    """How the gateway treats requests for this model."""

    request_timeout_seconds: int = prop(
        "Whole-request timeout, self-hosted or fallback.",
        default=300,
        minimum=1,
        maximum=3600,
    )
    max_queue_depth: int = prop(
        "A backend with more waiting requests than this counts as full.",
        default=16,
        minimum=0,
        maximum=100000,
    )
    cold_start_hold_seconds: int | None = prop(
        "When no engine pod is ready (scaling from zero, restarting) and no fallback takes "
        "the request, the gateway holds it this long for a pod to become ready, then "
        "answers 503 with Retry-After. 0 answers at once. Unset: 120, or "
        "requestTimeoutSeconds when that is shorter.",
        default=None,
        minimum=0,
        maximum=3600,
    )
    allow_from: list[NetworkPeer] = prop(
        "Who else may call the engine pods directly. The operator writes a NetworkPolicy "
        "per ModelDeployment that admits only the gateways and the operator (for /metrics) "
        "on the engine port, plus these peers (a platform team can turn the policy off "
        "operator-wide).",
        default_factory=list,
        maxItems=16,
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!has(self.coldStartHoldSeconds) || "
            "self.coldStartHoldSeconds <= self.requestTimeoutSeconds",
            "serving.coldStartHoldSeconds must not exceed serving.requestTimeoutSeconds",
            lambda v: (
                v.cold_start_hold_seconds is None
                or v.cold_start_hold_seconds <= v.request_timeout_seconds
            ),
        ),
    )

    @property
    def hold_seconds(self) -> int:
        """How long a request waits for a ready pod when nothing else can serve it."""
        if self.cold_start_hold_seconds is not None:
            return self.cold_start_hold_seconds
        return min(DEFAULT_COLD_START_HOLD_SECONDS, self.request_timeout_seconds)


ProviderType = Literal["OpenAI", "AzureOpenAI", "Anthropic", "OpenAICompatible"]


@dataclass(frozen=True, kw_only=True)
class FallbackProvider:
    """An external API that serves the model's traffic when self-hosting cannot."""

    type: ProviderType = prop("Provider wire format.")
    model: str = prop("Model name at the provider.", maxLength=256, minLength=1)
    base_url: str | None = prop(
        "API base URL. Required for AzureOpenAI (the resource endpoint) and OpenAICompatible.",
        default=None,
        json_name="baseURL",
        maxLength=2048,
        pattern=r"^https?://[^\s]+$",
    )
    api_key_secret_ref: SecretKeyRef | None = prop(
        "Secret key holding the API key (required except for OpenAICompatible).",
        default=None,
    )
    api_version: str | None = prop(
        "Azure OpenAI API version (AzureOpenAI only).", default=None, maxLength=64
    )
    deployment: str | None = prop(
        "Azure OpenAI deployment name (AzureOpenAI only; default: model).",
        default=None,
        maxLength=256,
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.type != 'AzureOpenAI' || (has(self.baseURL) && has(self.apiVersion))",
            "AzureOpenAI providers need baseURL and apiVersion",
            lambda p: p.type != "AzureOpenAI" or bool(p.base_url and p.api_version),
        ),
        Rule(
            "self.type != 'OpenAICompatible' || has(self.baseURL)",
            "OpenAICompatible providers need baseURL",
            lambda p: p.type != "OpenAICompatible" or bool(p.base_url),
        ),
        Rule(
            "self.type == 'OpenAICompatible' || has(self.apiKeySecretRef)",
            "OpenAI, AzureOpenAI and Anthropic providers need apiKeySecretRef",
            lambda p: p.type == "OpenAICompatible" or p.api_key_secret_ref is not None,
        ),
        Rule(
            "self.type == 'AzureOpenAI' || (!has(self.apiVersion) && !has(self.deployment))",
            "apiVersion and deployment apply to AzureOpenAI providers only",
            lambda p: p.type == "AzureOpenAI" or (p.api_version is None and p.deployment is None),
        ),
    )


@dataclass(frozen=True, kw_only=True)
class FallbackBudget:
    """A ceiling on what the fallback may spend, in tokens (prompt + completion, as the
    providers report them), summed over every gateway replica."""

    tokens_per_minute: int | None = prop(
        "Most fallback tokens in one minute.", default=None, minimum=1, format="int64"
    )
    tokens_per_day: int | None = prop(
        "Most fallback tokens in one UTC day.", default=None, minimum=1, format="int64"
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "has(self.tokensPerMinute) || has(self.tokensPerDay)",
            "fallback.budget needs tokensPerMinute or tokensPerDay",
            lambda b: b.tokens_per_minute is not None or b.tokens_per_day is not None,
        ),
    )


@dataclass(frozen=True, kw_only=True)
class FallbackSpec:
    """External providers tried in order when self-hosted serving cannot answer."""

    on_unavailable: bool = prop("Use the providers when no engine pod is ready.", default=True)
    on_overload: bool = prop("Use the providers when every engine pod is full.", default=True)
    on_error: bool = prop("Use the providers when the engine failed after retries.", default=True)
    providers: list[FallbackProvider] = prop("Providers, tried in order.", minItems=1, maxItems=8)
    budget: FallbackBudget | None = prop(
        "Spending ceiling. Once spent, requests that only the fallback could serve get 429 "
        "with Retry-After until the window turns. Unset: no ceiling.",
        default=None,
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.onUnavailable || self.onOverload || self.onError",
            "fallback needs at least one of onUnavailable, onOverload and onError",
            lambda f: f.on_unavailable or f.on_overload or f.on_error,
        ),
    )


@dataclass(frozen=True, kw_only=True)
class RolloutStep:
    """One canary step."""

    weight: int = prop("Percent of traffic on the new revision.", minimum=1, maximum=100)
    pause_seconds: int = prop(
        "How long to hold this step before judging it.", default=60, minimum=0, maximum=86400
    )


@dataclass(frozen=True, kw_only=True)
class AnalysisSpec:
    """How a canary is judged against the stable revision, from what the gateways measured
    for each revision during the step."""

    max_error_rate_percent: float = prop(
        "Most engine errors (5xx, connection failures, stalls, broken streams) per 100 "
        "requests the canary may have; client errors (4xx) do not count.",
        default=5.0,
        minimum=0,
        maximum=100,
    )
    max_ttft_ratio: float = prop(
        "Most the canary's mean time to first token may be, as a multiple of the stable "
        "revision's.",
        default=1.5,
        minimum=1,
        maximum=100,
    )
    max_itl_ratio: float = prop(
        "Most the canary's mean inter-token latency may be, as a multiple of the stable "
        "revision's.",
        default=1.5,
        minimum=1,
        maximum=100,
    )
    min_ttft_increase_milliseconds: int = prop(
        "How much the canary's mean time to first token must also exceed the stable "
        "revision's, in milliseconds, before the ratio counts: differences at the scale of "
        "scheduling noise are not judged.",
        default=10,
        minimum=0,
        maximum=600000,
    )
    min_itl_increase_milliseconds: int = prop(
        "How much the canary's mean inter-token latency must also exceed the stable "
        "revision's, in milliseconds, before the ratio counts.",
        default=2,
        minimum=0,
        maximum=60000,
    )
    min_requests: int = prop(
        "Requests the canary must have served in a step before it is judged; with fewer, "
        "the step waits.",
        default=20,
        minimum=1,
        maximum=1000000,
    )
    tripwire_error_rate_percent: float = prop(
        "An error rate at which the canary is aborted at once, not at the end of its step.",
        default=20.0,
        minimum=0,
        maximum=100,
    )
    tripwire_min_requests: int = prop(
        "Requests the canary must have served before the tripwire can fire.",
        default=10,
        minimum=1,
        maximum=1000000,
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.tripwireErrorRatePercent >= self.maxErrorRatePercent",
            "rollout.analysis.tripwireErrorRatePercent must be at least maxErrorRatePercent",
            lambda a: a.tripwire_error_rate_percent >= a.max_error_rate_percent,
        ),
    )


@dataclass(frozen=True, kw_only=True)
class RolloutSpec:
    """How a new revision (a changed pod template) replaces the running one."""

    strategy: Literal["RollingUpdate", "Canary"] = prop(
        "RollingUpdate replaces pods as new ones become ready; Canary sends each step's "
        "share of the traffic to the new revision, judges it against the stable one, and "
        "promotes or rolls back.",
        default="RollingUpdate",
    )
    steps: list[RolloutStep] = prop(
        "Canary steps, by increasing weight.", default_factory=list, maxItems=20
    )
    max_surge: IntOrPercent = prop(
        "Pods (or a percentage of the replicas, rounded up) above the desired count during a "
        "rollout: the free GPUs a rollout may use. 0 needs no free GPU: a stable pod is "
        "removed before a new one is created, and the fallback absorbs the gap.",
        default=IntOrPercent("0"),
    )
    max_unavailable: IntOrPercent = prop(
        "Pods (or a percentage of the replicas, rounded down) below the desired count during "
        "a rollout.",
        default=IntOrPercent("1"),
    )
    analysis: AnalysisSpec = prop("Canary analysis thresholds.", default_factory=AnalysisSpec)
    progress_deadline_seconds: int = prop(
        "How long a new revision's pods may take to become ready (model download and load "
        "included) before the rollout is aborted.",
        default=1800,
        minimum=60,
        maximum=86400,
    )
    gpu_wait_seconds: int = prop(
        "How long a new revision's pod may wait for a node (e.g. a free GPU) before the "
        "rollout is aborted.",
        default=300,
        minimum=0,
        maximum=86400,
    )
    paused: bool = prop(
        "Hold the rollout at its current step (GitOps-friendly; `hedge rollout pause` sets "
        "an annotation with the same effect).",
        default=False,
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.strategy == 'Canary' || !has(self.steps) || size(self.steps) == 0",
            "rollout.steps apply to the Canary strategy only",
            lambda r: r.strategy == "Canary" or not r.steps,
        ),
        Rule(
            "self.strategy != 'Canary' || (has(self.steps) && size(self.steps) > 0)",
            "the Canary strategy needs at least one step",
            lambda r: r.strategy != "Canary" or bool(r.steps),
        ),
        Rule(
            "!has(self.steps) || self.steps.map(s, s.weight).isSorted()",
            "rollout.steps must not decrease in weight",
            lambda r: [s.weight for s in r.steps] == sorted(s.weight for s in r.steps),
        ),
        Rule(
            "!(string(self.maxSurge) in ['0', '0%'] && string(self.maxUnavailable) in ['0', '0%'])",
            "rollout.maxSurge and rollout.maxUnavailable must not both be 0",
            lambda r: not (r.max_surge in ("0", "0%") and r.max_unavailable in ("0", "0%")),
        ),
    )


def _gpus_or_one(spec: ModelDeploymentSpec) -> int:
    return spec.resources.gpus or 1


@dataclass(frozen=True, kw_only=True)
class ModelDeploymentSpec:
    """A model served by vLLM on this cluster's GPUs, with gateway behaviour and fallback."""

    model: ModelSpec = prop("The model: weights, revision, served name, credentials.")
    engine: EngineSpec = prop("The vLLM engine and its settings.", default_factory=EngineSpec)
    resources: ResourcesSpec = prop(
        "GPUs, CPU and memory of each engine pod.", default_factory=ResourcesSpec
    )
    replicas: int = prop(
        "Engine pods (the scale subresource sets this; `kubectl scale md/x --replicas=3`).",
        default=1,
        minimum=0,
        maximum=512,
    )
    adapters: list[AdapterSpec] = prop(
        "LoRA adapters served by the same pods, each under its own model name.",
        default_factory=list,
        maxItems=32,
        list_map_keys=("name",),
    )
    cache: CacheSpec | None = prop(
        "Persistent cache for the weights. Unset: an emptyDir (downloaded on every start).",
        default=None,
    )
    autoscaling: AutoscalingSpec | None = prop(
        "Autoscaling bounds. Unset: replicas is fixed.", default=None
    )
    serving: ServingSpec = prop("Gateway behaviour for this model.", default_factory=ServingSpec)
    fallback: FallbackSpec | None = prop(
        "External providers used when self-hosted serving cannot answer.", default=None
    )
    rollout: RolloutSpec = prop("How spec changes roll out.", default_factory=RolloutSpec)

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!has(self.engine.tensorParallelSize) || self.engine.tensorParallelSize"
            " * self.engine.pipelineParallelSize"
            " == (self.resources.gpus == 0 ? 1 : self.resources.gpus)",
            "engine.tensorParallelSize * engine.pipelineParallelSize must equal resources.gpus",
            lambda s: (
                s.engine.tensor_parallel_size is None
                or s.engine.tensor_parallel_size * s.engine.pipeline_parallel_size
                == _gpus_or_one(s)
            ),
        ),
        Rule(
            "(self.resources.gpus == 0 ? 1 : self.resources.gpus)"
            " % self.engine.pipelineParallelSize == 0",
            "resources.gpus must be a multiple of engine.pipelineParallelSize",
            lambda s: _gpus_or_one(s) % s.engine.pipeline_parallel_size == 0,
        ),
    )
