"""Pure spec -> manifest functions: the engine Deployment of a revision, the Service, the
PodDisruptionBudget and the cache PersistentVolumeClaim. No I/O; unit tests call them over a
table of specs. Names and labels follow docs/contracts.md.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from hedge_core.api import (
    API_VERSION,
    COMPONENT_LABEL,
    ENGINE_COMPONENT,
    ENGINE_PORT,
    FIELD_MANAGER,
    KIND,
    MANAGED_BY_LABEL,
    MD_LABEL,
    PART_OF_LABEL,
    PORT_NAME,
    REVISION_LABEL,
    ModelDeployment,
)
from hedge_operator.config import NetworkPolicyConfig, OperatorConfig
from hedge_operator.placement import pod as placement
from hedge_operator.placement.profiles import AcceleratorProfile, resolve

ENGINE_CONTAINER = "engine"
HEALTH_PATH = "/health"

MODELS_DIR = "/models"  # the cache volume (or an emptyDir without one)
HF_HOME = f"{MODELS_DIR}/huggingface"
HF_DOWNLOAD_DIR = f"{HF_HOME}/hub"
PVC_MOUNT_ROOT = "/mnt/pvc"  # pvc:// sources, read-only
GCS_CREDENTIALS_DIR = "/var/run/secrets/hedge/gcs"
DEFAULT_HF_TOKEN_KEY = "token"
DEFAULT_GCS_KEY = "key.json"

STARTUP_PROBE_PERIOD = 10
REVISION_LENGTH = 10
#: A stopping engine pod first waits this long (preStop) while the gateways see its endpoint
#: leave the EndpointSlices and stop sending to it; then vLLM drains (--shutdown-timeout).
PRE_STOP_SECONDS = 5
#: Time for the engine process to exit once drained, within the grace period.
EXIT_SECONDS = 15

#: spec.engine.securityProfile: Restricted, what Pod Security `restricted` requires.
RESTRICTED_UID = 1000
RESTRICTED_POD_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RESTRICTED_UID,
    "runAsGroup": RESTRICTED_UID,
    "fsGroup": RESTRICTED_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}

#: Environment variables the operator sets on the engine; spec.engine.env may not redefine them.
OPERATOR_ENV = frozenset({"HF_HOME", "HF_TOKEN"})


# ------------------------------------------------------------------------------- naming


def common_labels(md_name: str) -> dict[str, str]:
    """Labels on every child (docs/contracts.md)."""
    return {
        MANAGED_BY_LABEL: FIELD_MANAGER,
        PART_OF_LABEL: "hedge",
        MD_LABEL: md_name,
    }


def engine_selector(md_name: str) -> dict[str, str]:
    """Selects the engine pods of every revision."""
    return {MD_LABEL: md_name, COMPONENT_LABEL: ENGINE_COMPONENT}


def selector_string(md_name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in engine_selector(md_name).items())


def deployment_name(md_name: str, revision: str) -> str:
    return f"{md_name}-{revision}"


def cache_claim_name(md: ModelDeployment) -> str | None:
    cache = md.spec.cache
    if cache is None:
        return None
    return cache.existing_claim or f"{md.name}-cache"


def service_url(md: ModelDeployment) -> str:
    return f"http://{md.name}.{md.namespace}.svc:{ENGINE_PORT}/v1"


def owner_reference(md: ModelDeployment) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": md.name,
        "uid": md.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(md: ModelDeployment, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": md.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(md)],
    }


# ------------------------------------------------------------------------------ sources


@dataclass(frozen=True)
class Source:
    """A parsed source URI: `scheme://authority/path`."""

    scheme: str  # hf, s3, gs, pvc
    authority: str  # HF org (or repo), bucket, claim
    path: str  # may be empty

    @classmethod
    def parse(cls, uri: str) -> Source:
        scheme, _, rest = uri.partition("://")
        authority, _, path = rest.partition("/")
        return cls(scheme, authority, path.strip("/"))

    @property
    def hf_repo(self) -> str:
        return f"{self.authority}/{self.path}" if self.path else self.authority

    @property
    def downloaded(self) -> bool:
        return self.scheme in ("s3", "gs")

    def uri(self) -> str:
        return f"{self.scheme}://{self.authority}" + (f"/{self.path}" if self.path else "")

    def local_path(self) -> str:
        """Where the engine finds it: an HF repo id, or a directory inside the pod."""
        if self.scheme == "hf":
            return self.hf_repo
        root = (
            f"{PVC_MOUNT_ROOT}/{self.authority}"
            if self.scheme == "pvc"
            else (f"{MODELS_DIR}/{self.scheme}/{self.authority}")
        )
        return f"{root}/{self.path}" if self.path else root


def pvc_claims(md: ModelDeployment) -> list[str]:
    """Claims of pvc:// sources (model first, then adapters), each once."""
    claims: list[str] = []
    for uri in [md.spec.model.source, *(a.source for a in md.spec.adapters)]:
        src = Source.parse(uri)
        if src.scheme == "pvc" and src.authority not in claims:
            claims.append(src.authority)
    return claims


# --------------------------------------------------------------------------- the engine


def tensor_parallel_size(md: ModelDeployment) -> int | None:
    """Explicit, or GPUs / pipeline stages; None without GPUs (vLLM's CPU backend)."""
    engine, gpus = md.spec.engine, md.spec.resources.gpus
    if engine.tensor_parallel_size is not None:
        return engine.tensor_parallel_size
    if gpus == 0:
        return None
    return max(1, gpus // engine.pipeline_parallel_size)


def engine_args(md: ModelDeployment) -> list[str]:
    """`vllm serve` arguments: the model first, then flags from the typed fields, then
    spec.engine.extraArgs."""
    spec, engine = md.spec, md.spec.engine
    source = Source.parse(spec.model.source)
    args = [source.local_path(), "--served-model-name", md.served_model, "--port", str(ENGINE_PORT)]
    if source.scheme == "hf":
        args += ["--download-dir", HF_DOWNLOAD_DIR]
        if spec.model.revision:
            args += ["--revision", spec.model.revision]
    args += ["--dtype", engine.dtype]
    if engine.max_model_len is not None:
        args += ["--max-model-len", str(engine.max_model_len)]
    if engine.quantization is not None:
        args += ["--quantization", engine.quantization]
    args += ["--gpu-memory-utilization", _number(engine.gpu_memory_utilization)]
    args.append(
        "--enable-prefix-caching" if engine.enable_prefix_caching else "--no-enable-prefix-caching"
    )
    args.append(
        "--enable-chunked-prefill"
        if engine.enable_chunked_prefill
        else "--no-enable-chunked-prefill"
    )
    tp = tensor_parallel_size(md)
    if tp is not None:
        args += ["--tensor-parallel-size", str(tp)]
    if engine.pipeline_parallel_size > 1:
        args += ["--pipeline-parallel-size", str(engine.pipeline_parallel_size)]
    if spec.adapters:
        args += ["--enable-lora", "--lora-modules"]
        args += [f"{a.name}={Source.parse(a.source).local_path()}" for a in spec.adapters]
    # On SIGTERM vLLM aborts what it is generating unless told to drain: give requests in
    # flight as long as a request may take, so a scale-down or rollout cuts no stream.
    args += ["--shutdown-timeout", str(spec.serving.request_timeout_seconds)]
    args += list(engine.extra_args)
    return args


def termination_grace_seconds(md: ModelDeployment) -> int:
    """preStop, then the drain of requests in flight (--shutdown-timeout), then the exit."""
    return PRE_STOP_SECONDS + md.spec.serving.request_timeout_seconds + EXIT_SECONDS


def _number(value: float) -> str:
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _engine_env(md: ModelDeployment, profile: AcceleratorProfile | None) -> list[dict[str, Any]]:
    """The operator's variables, the accelerator profile's, then spec.engine.env."""
    env: list[dict[str, Any]] = [{"name": "HF_HOME", "value": HF_HOME}]
    creds = md.spec.model.credentials_secret_ref
    if creds is not None and md.spec.model.source.startswith("hf://"):
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {
                    "secretKeyRef": {"name": creds.name, "key": creds.key or DEFAULT_HF_TOKEN_KEY}
                },
            }
        )
    env += [v for v in placement.profile_env(md, profile) if v["name"] not in OPERATOR_ENV]
    for var in md.spec.engine.env:
        if var.secret_key_ref is not None:
            ref = var.secret_key_ref
            env.append(
                {
                    "name": var.name,
                    "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
                }
            )
        else:
            env.append({"name": var.name, "value": var.value or ""})
    return env


def _download_containers(md: ModelDeployment, config: OperatorConfig) -> list[dict[str, Any]]:
    """One init container per s3:// or gs:// source; sync skips files already cached."""
    spec = md.spec
    creds = spec.model.credentials_secret_ref
    model_scheme = Source.parse(spec.model.source).scheme
    wanted = [("download-model", spec.model.source)] + [
        (f"download-adapter-{i}", a.source) for i, a in enumerate(spec.adapters)
    ]
    containers: list[dict[str, Any]] = []
    for name, uri in wanted:
        src = Source.parse(uri)
        if not src.downloaded:
            continue
        container: dict[str, Any] = {"name": name}
        # Adapters in the same kind of store as the model use the model's credentials.
        use_creds = creds is not None and src.scheme == model_scheme
        if src.scheme == "s3":
            container["image"] = config.s3_downloader_image
            container["command"] = [
                "aws",
                "s3",
                "sync",
                "--only-show-errors",
                "--no-progress",
                src.uri(),
                src.local_path(),
            ]
            if use_creds and creds is not None:
                container["envFrom"] = [{"secretRef": {"name": creds.name}}]
        else:
            container["image"] = config.gcs_downloader_image
            container["command"] = [
                "gcloud",
                "storage",
                "rsync",
                "--recursive",
                src.uri(),
                src.local_path(),
            ]
            if use_creds and creds is not None:
                key_file = f"{GCS_CREDENTIALS_DIR}/{creds.key or DEFAULT_GCS_KEY}"
                container["env"] = [
                    {"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": key_file},
                    {"name": "CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE", "value": key_file},
                ]
                container["volumeMounts"] = [
                    {"name": "gcs-credentials", "mountPath": GCS_CREDENTIALS_DIR, "readOnly": True},
                ]
        container.setdefault("volumeMounts", []).insert(
            0, {"name": "models", "mountPath": MODELS_DIR}
        )
        container["resources"] = {
            "requests": {"cpu": "500m", "memory": "512Mi"},
            "limits": {"memory": "2Gi"},
        }
        containers.append(container)
    return containers


def _volumes(
    md: ModelDeployment, uses_gcs_credentials: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pod volumes, engine container mounts)."""
    spec = md.spec
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.resources.shm_size}},
    ]
    mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    claim = cache_claim_name(md)
    if claim is not None:
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": claim}})
    else:
        volumes.append({"name": "models", "emptyDir": {}})
    mounts.append({"name": "models", "mountPath": MODELS_DIR})
    for i, source_claim in enumerate(pvc_claims(md)):
        volumes.append(
            {
                "name": f"pvc-{i}",
                "persistentVolumeClaim": {"claimName": source_claim, "readOnly": True},
            }
        )
        mounts.append(
            {"name": f"pvc-{i}", "mountPath": f"{PVC_MOUNT_ROOT}/{source_claim}", "readOnly": True}
        )
    creds = spec.model.credentials_secret_ref
    if uses_gcs_credentials and creds is not None:
        volumes.append({"name": "gcs-credentials", "secret": {"secretName": creds.name}})
    return volumes, mounts


def _probe(*, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": HEALTH_PATH, "port": PORT_NAME},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def accelerator_profile(md: ModelDeployment, config: OperatorConfig) -> AcceleratorProfile | None:
    """The accelerator profile of a GPU engine pod (None without GPUs)."""
    res = md.spec.resources
    if res.gpus == 0:
        return None
    profile = resolve(res.gpu_type, config.accelerator_profiles, config.default_accelerator_profile)
    if profile is None:  # validation.validate reports UnknownGPUType first
        raise ValueError(f"unknown GPU type {res.gpu_type!r}")
    return profile


def engine_pod_template(md: ModelDeployment, config: OperatorConfig) -> dict[str, Any]:
    """The engine pod template, without the revision label (it is the hash of this)."""
    spec = md.spec
    profile = accelerator_profile(md, config)
    init = _download_containers(md, config)
    uses_gcs_creds = spec.model.credentials_secret_ref is not None and (
        Source.parse(spec.model.source).scheme == "gs"
    )
    volumes, mounts = _volumes(md, uses_gcs_creds)

    requests, limits = _resources(md, profile)

    startup_failures = math.ceil(spec.engine.startup_timeout_seconds / STARTUP_PROBE_PERIOD)
    container: dict[str, Any] = {
        "name": ENGINE_CONTAINER,
        "image": placement.engine_image(md, profile),
        "imagePullPolicy": spec.engine.image_pull_policy,
        "command": ["vllm", "serve"],
        "args": engine_args(md),
        "ports": [{"name": PORT_NAME, "containerPort": ENGINE_PORT, "protocol": "TCP"}],
        "env": _engine_env(md, profile),
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": mounts,
        "startupProbe": _probe(period=STARTUP_PROBE_PERIOD, failures=startup_failures),
        "readinessProbe": _probe(period=5, failures=3),
        "livenessProbe": _probe(period=15, failures=4),
        # The kubelet's own sleep (no shell or binary needed in the image).
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}},
    }
    pod_spec: dict[str, Any] = {
        # The engine never calls the Kubernetes API, and service links would put
        # VLLM_PORT-style variables into its environment, which vLLM reads as its own.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": termination_grace_seconds(md),
    }
    placement.place(pod_spec, md, profile)
    placement.apply_pod_settings(pod_spec, container, md)
    if spec.engine.security_profile == "Restricted":
        _restrict(pod_spec, [*init, container])
    if init:
        pod_spec["initContainers"] = init
    pod_spec["containers"] = [container]
    pod_spec["volumes"] = [*volumes, *placement.extra_volumes(md)]

    labels = {**common_labels(md.name), COMPONENT_LABEL: ENGINE_COMPONENT}
    return {"metadata": placement.pod_metadata(md, labels), "spec": pod_spec}


def _resources(
    md: ModelDeployment, profile: AcceleratorProfile | None
) -> tuple[dict[str, str], dict[str, str]]:
    """The engine container's (requests, limits)."""
    res = md.spec.resources
    requests: dict[str, str] = {"cpu": res.cpu, "memory": res.memory}
    limits: dict[str, str] = {"memory": res.memory}
    if profile is not None:
        requests[profile.resource] = str(res.gpus)
        limits[profile.resource] = str(res.gpus)
    return requests, limits


def _restrict(pod_spec: dict[str, Any], containers: list[dict[str, Any]]) -> None:
    """spec.engine.securityProfile: Restricted (Pod Security `restricted`)."""
    # spec.engine.pod's contexts first; validation refused any value Restricted contradicts.
    pod_spec["securityContext"] = {
        **pod_spec.get("securityContext", {}),
        **copy.deepcopy(RESTRICTED_POD_CONTEXT),
    }
    for c in containers:
        c["securityContext"] = {
            **c.get("securityContext", {}),
            **copy.deepcopy(RESTRICTED_CONTAINER_CONTEXT),
        }
        # The image's user (root) owns HOME; caches (triton, torch, vllm) go to the volume.
        c.setdefault("env", []).append({"name": "HOME", "value": f"{MODELS_DIR}/home"})


def content_hash(obj: Any, length: int = REVISION_LENGTH) -> str:
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


def revision_of(md: ModelDeployment, config: OperatorConfig) -> str:
    """The revision: a hash of the engine pod template."""
    return content_hash(engine_pod_template(md, config))


def build_engine_deployment(
    md: ModelDeployment, config: OperatorConfig, replicas: int | None = None
) -> dict[str, Any]:
    """The Deployment of the current revision, `<md>-<revision>`."""
    template = engine_pod_template(md, config)
    revision = content_hash(template)
    template["metadata"]["labels"][REVISION_LABEL] = revision
    labels = {**common_labels(md.name), COMPONENT_LABEL: ENGINE_COMPONENT, REVISION_LABEL: revision}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(md, deployment_name(md.name, revision), labels),
        "spec": {
            "replicas": md.spec.replicas if replicas is None else replicas,
            "selector": {"matchLabels": {**engine_selector(md.name), REVISION_LABEL: revision}},
            "revisionHistoryLimit": 2,
            "progressDeadlineSeconds": md.spec.engine.startup_timeout_seconds + 300,
            "template": template,
        },
    }


def build_service(md: ModelDeployment) -> dict[str, Any]:
    """One Service for all revisions, `<md>`, port http 8000."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(md, md.name, common_labels(md.name)),
        "spec": {
            "type": "ClusterIP",
            "selector": engine_selector(md.name),
            "ports": [
                {"name": PORT_NAME, "port": ENGINE_PORT, "targetPort": PORT_NAME, "protocol": "TCP"}
            ],
        },
    }


def revision_service_name(md_name: str, revision: str) -> str:
    return f"{md_name}-{revision}"


def build_revision_service(md: ModelDeployment, revision: str) -> dict[str, Any]:
    """A headless Service per revision, `<md>-<revision>`, labelled with the revision: the
    EndpointSlice controller copies the label onto its slices, so the gateway learns which
    revision each ready endpoint serves (the shared Service's slices cannot say) and splits
    a canary's traffic by weight. Headless: it takes no ClusterIP, nothing proxies it."""
    labels = {**common_labels(md.name), REVISION_LABEL: revision}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(md, revision_service_name(md.name, revision), labels),
        "spec": {
            "clusterIP": "None",
            "selector": {**engine_selector(md.name), REVISION_LABEL: revision},
            "ports": [
                {"name": PORT_NAME, "port": ENGINE_PORT, "targetPort": PORT_NAME, "protocol": "TCP"}
            ],
        },
    }


def build_pdb(md: ModelDeployment) -> dict[str, Any]:
    """At most one engine pod evicted at a time; broken pods never block a drain."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(md, md.name, common_labels(md.name)),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": engine_selector(md.name)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def build_cache_pvc(md: ModelDeployment) -> dict[str, Any] | None:
    """The cache claim `<md>-cache`, or None without a cache or with an existing claim."""
    cache = md.spec.cache
    if cache is None or cache.existing_claim:
        return None
    spec: dict[str, Any] = {
        "accessModes": [cache.access_mode],
        "resources": {"requests": {"storage": cache.size}},
    }
    if cache.storage_class_name:
        spec["storageClassName"] = cache.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(md, f"{md.name}-cache", common_labels(md.name)),
        "spec": spec,
    }


NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def _peer(namespace: str | None, pods: dict[str, str] | None) -> dict[str, Any]:
    """A NetworkPolicyPeer: pods (None: all) in a namespace (None: any namespace)."""
    peer: dict[str, Any] = {
        "namespaceSelector": (
            {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}} if namespace is not None else {}
        )
    }
    if pods is not None:
        peer["podSelector"] = {"matchLabels": dict(sorted(pods.items()))}
    return peer


def build_network_policy(md: ModelDeployment, policy: NetworkPolicyConfig) -> dict[str, Any]:
    """`<md>`: only the gateways, the operator (it reads engine /metrics for the autoscaler)
    and spec.serving.allowFrom may open connections to the engine port; the engine pods
    answer nobody else (issue 16: a pod elsewhere in the cluster would bypass client keys,
    tenancy, budgets and the metrics the autoscaler and canary analysis read)."""
    peers = [
        _peer(policy.gateway_namespace, dict(policy.gateway_pod_labels)),
        _peer(policy.operator_namespace, dict(policy.operator_pod_labels)),
    ]
    for extra in md.spec.serving.allow_from:
        if extra.namespace_labels is None:
            assert extra.pod_labels is not None  # the CRD's rule
            peers.append({"podSelector": {"matchLabels": dict(sorted(extra.pod_labels.items()))}})
            continue
        peer: dict[str, Any] = {
            "namespaceSelector": {"matchLabels": dict(sorted(extra.namespace_labels.items()))}
        }
        if extra.pod_labels is not None:
            peer["podSelector"] = {"matchLabels": dict(sorted(extra.pod_labels.items()))}
        peers.append(peer)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(md, md.name, common_labels(md.name)),
        "spec": {
            "podSelector": {"matchLabels": engine_selector(md.name)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": peers,
                    "ports": [{"port": ENGINE_PORT, "protocol": "TCP"}],
                }
            ],
        },
    }
