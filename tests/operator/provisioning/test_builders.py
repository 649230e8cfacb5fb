"""Spec -> manifests, over a matrix of specs, field by field."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import pytest

from hedge_core.api import SpecError
from hedge_operator.config import NetworkPolicyConfig, OperatorConfig
from hedge_operator.placement.catalog import gfd_profile
from hedge_operator.provisioning.builders import (
    build_cache_pvc,
    build_engine_deployment,
    build_network_policy,
    build_pdb,
    build_service,
    revision_of,
    selector_string,
    service_url,
)
from hedge_operator.provisioning.plan import desired_children
from tests.operator.factories import model, spec_with

CONFIG = OperatorConfig()
CONTRACT_LABELS = {
    "app.kubernetes.io/managed-by": "hedge-operator",
    "app.kubernetes.io/part-of": "hedge",
    "hedge.dev/model-deployment": "llama",
}
SOURCES = {
    "hf": ("hf://meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct"),
    "pvc": ("pvc://weights/llama/8b", "/mnt/pvc/weights/llama/8b"),
    "s3": ("s3://acme-models/llama/8b", "/models/s3/acme-models/llama/8b"),
    "gs": ("gs://acme-models/llama", "/models/gs/acme-models/llama"),
}
GPU_COUNTS = [1, 2, 4, 8]


def flags(args: list[str]) -> dict[str, list[str]]:
    """`--flag v1 v2 --bool` -> {"--flag": ["v1", "v2"], "--bool": []} (after the model)."""
    out: dict[str, list[str]] = {}
    current = None
    for arg in args[1:]:
        if arg.startswith("--"):
            current = arg
            out[current] = []
        else:
            assert current is not None, arg
            out[current].append(arg)
    return out


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def engine(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec(deployment)["containers"]
    assert container["name"] == "engine"
    return dict(container)


MATRIX = list(
    itertools.product(
        SOURCES,  # source
        GPU_COUNTS,  # gpus
        [None, "awq"],  # quantization
        [False, True],  # LoRA
        [False, True],  # cache
    )
)


@pytest.mark.parametrize(("source", "gpus", "quantization", "lora", "cache"), MATRIX)
def test_engine_deployment_matrix(
    source: str, gpus: int, quantization: str | None, lora: bool, cache: bool
) -> None:
    uri, model_path = SOURCES[source]
    spec = spec_with(
        model={"source": uri},
        resources={"gpus": gpus, "gpuType": "nvidia-h100-80gb"},
        replicas=2,
    )
    if quantization:
        spec["engine"] = {"quantization": quantization}
    if lora:
        spec["adapters"] = [
            {"name": "sql-lora", "source": "hf://org/sql-lora"},
            {"name": "tone-lora", "source": "pvc://adapters/tone"},
        ]
    if cache:
        spec["cache"] = {"size": "200Gi", "storageClassName": "fast"}
    md = model(spec)
    dep = build_engine_deployment(md, CONFIG)
    revision = revision_of(md, CONFIG)

    # Identity, labels (docs/contracts.md), owner.
    meta = dep["metadata"]
    assert meta["name"] == f"llama-{revision}"
    assert meta["namespace"] == "team-a"
    assert meta["labels"] == {
        **CONTRACT_LABELS,
        "hedge.dev/component": "engine",
        "hedge.dev/revision": revision,
    }
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "hedge.dev/v1alpha1",
            "kind": "ModelDeployment",
            "name": "llama",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert dep["spec"]["replicas"] == 2
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector == {
        "hedge.dev/model-deployment": "llama",
        "hedge.dev/component": "engine",
        "hedge.dev/revision": revision,
    }
    template_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= template_labels.items()
    assert CONTRACT_LABELS.items() <= template_labels.items()

    # The engine container: vLLM args.
    c = engine(dep)
    assert c["command"] == ["vllm", "serve"]
    assert c["args"][0] == model_path
    f = flags(c["args"])
    assert f["--served-model-name"] == ["llama-3-8b"]
    assert f["--port"] == ["8000"]
    assert f["--tensor-parallel-size"] == [str(gpus)]
    assert "--pipeline-parallel-size" not in f
    assert f["--gpu-memory-utilization"] == ["0.9"]
    assert f["--dtype"] == ["auto"]
    assert "--enable-prefix-caching" in f and "--enable-chunked-prefill" in f
    assert ("--quantization" in f) == bool(quantization)
    if quantization:
        assert f["--quantization"] == [quantization]
    if source == "hf":
        assert f["--download-dir"] == ["/models/huggingface/hub"]
    else:
        assert "--download-dir" not in f
    if lora:
        assert f["--enable-lora"] == []
        assert f["--lora-modules"] == ["sql-lora=org/sql-lora", "tone-lora=/mnt/pvc/adapters/tone"]
    else:
        assert "--enable-lora" not in f and "--lora-modules" not in f
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]

    # GPUs, placement.
    res = c["resources"]
    assert res["limits"]["nvidia.com/gpu"] == str(gpus)
    assert res["requests"]["nvidia.com/gpu"] == str(gpus)
    assert res["requests"]["cpu"] == "4" and res["requests"]["memory"] == "32Gi"
    assert res["limits"]["memory"] == "32Gi" and "cpu" not in res["limits"]
    ps = pod_spec(dep)
    assert ps["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert ps["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert ps["automountServiceAccountToken"] is False
    assert ps["enableServiceLinks"] is False

    # Probes on vLLM's /health; the startup probe covers the whole loading window.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800

    # Volumes: memory-backed /dev/shm, the model cache, pvc:// sources read-only.
    volumes = {v["name"]: v for v in ps["volumes"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert mounts["dshm"]["mountPath"] == "/dev/shm"
    assert mounts["models"]["mountPath"] == "/models"
    if cache:
        assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "llama-cache"}
    else:
        assert volumes["models"]["emptyDir"] == {}
    claims = {
        v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]
        for k, v in volumes.items()
        if k.startswith("pvc-")
    }
    expected_claims = ({"weights"} if source == "pvc" else set()) | (
        {"adapters"} if lora else set()
    )
    assert set(claims) == expected_claims
    assert all(c["readOnly"] for c in claims.values())

    # s3:// and gs:// are copied into the cache by an init container before the engine starts.
    init = {i["name"]: i for i in ps.get("initContainers", [])}
    if source in ("s3", "gs"):
        download = init["download-model"]
        assert uri in download["command"] and model_path in download["command"]
        assert download["command"][0] == ("aws" if source == "s3" else "gcloud")
        assert {"name": "models", "mountPath": "/models"} in download["volumeMounts"]
    else:
        assert "download-model" not in init

    # HF home on the cache volume; no secret anywhere by value.
    env = {e["name"]: e for e in c["env"]}
    assert env["HF_HOME"] == {"name": "HF_HOME", "value": "/models/huggingface"}
    assert "HF_TOKEN" not in env


def test_revision_is_a_hash_of_the_pod_template() -> None:
    base = model()
    assert revision_of(base, CONFIG) == revision_of(model(), CONFIG)
    assert len(revision_of(base, CONFIG)) == 10
    # Replicas do not touch the pod template; engine settings do.
    assert revision_of(model(spec_with(replicas=5)), CONFIG) == revision_of(base, CONFIG)
    for change in (
        {"engine": {"maxModelLen": 4096}},
        {"engine": {"image": "vllm/vllm-openai:v0.10.2"}},
        {"resources": {"memory": "64Gi"}},
        {"engine": {"podAnnotations": {"sim.hedge.dev/ttft-ms": "50"}}},
    ):
        assert revision_of(model(spec_with(**change)), CONFIG) != revision_of(base, CONFIG)
    # The GPU table is part of the template: a new product label is a new revision.
    other = OperatorConfig().with_profiles(
        {"nvidia-a100-80gb": gfd_profile("nvidia-a100-80gb", "NVIDIA-A100-80GB-PCIe")}
    )
    assert revision_of(base, other) != revision_of(base, CONFIG)


def test_parallelism_and_engine_settings() -> None:
    md = model(
        spec_with(
            resources={"gpus": 8},
            engine={
                "pipelineParallelSize": 2,
                "maxModelLen": 32768,
                "dtype": "bfloat16",
                "gpuMemoryUtilization": 0.85,
                "enablePrefixCaching": False,
                "enableChunkedPrefill": False,
                "extraArgs": ["--max-num-seqs", "128"],
            },
            model={"revision": "a1b2c3"},
        )
    )
    c = engine(build_engine_deployment(md, CONFIG))
    f = flags(c["args"])
    assert f["--tensor-parallel-size"] == ["4"]
    assert f["--pipeline-parallel-size"] == ["2"]
    assert f["--max-model-len"] == ["32768"]
    assert f["--dtype"] == ["bfloat16"]
    assert f["--gpu-memory-utilization"] == ["0.85"]
    assert f["--revision"] == ["a1b2c3"]
    assert "--no-enable-prefix-caching" in f and "--enable-prefix-caching" not in f
    assert "--no-enable-chunked-prefill" in f and "--enable-chunked-prefill" not in f
    assert c["args"][-2:] == ["--max-num-seqs", "128"]  # extraArgs come last, as given


def test_cpu_only_engine_has_no_gpu_request_or_toleration() -> None:
    md = model(spec_with(resources={"gpus": 0, "gpuType": None, "cpu": "500m", "memory": "1Gi"}))
    dep = build_engine_deployment(md, CONFIG)
    c, ps = engine(dep), pod_spec(dep)
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert "nvidia.com/gpu" not in c["resources"]["requests"]
    assert "tolerations" not in ps and "nodeSelector" not in ps
    assert "--tensor-parallel-size" not in flags(c["args"])


def test_any_gpu_without_a_type_gets_no_node_selector() -> None:
    spec = spec_with(resources={"gpus": 2})
    del spec["resources"]["gpuType"]
    ps = pod_spec(build_engine_deployment(model(spec), CONFIG))
    assert "nodeSelector" not in ps
    assert ps["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_credentials_are_only_referenced() -> None:
    hf = model(spec_with(model={"credentialsSecretRef": {"name": "hf-token"}}))
    env = {e["name"]: e for e in engine(build_engine_deployment(hf, CONFIG))["env"]}
    assert env["HF_TOKEN"] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}},
    }

    s3 = model(spec_with(model={"source": "s3://bkt/m", "credentialsSecretRef": {"name": "aws"}}))
    dep = build_engine_deployment(s3, CONFIG)
    (download,) = pod_spec(dep)["initContainers"]
    assert download["envFrom"] == [{"secretRef": {"name": "aws"}}]
    assert "HF_TOKEN" not in {e["name"] for e in engine(dep)["env"]}

    gs = model(
        spec_with(
            model={
                "source": "gs://bkt/m",
                "credentialsSecretRef": {"name": "gcp", "key": "sa.json"},
            }
        )
    )
    ps = pod_spec(build_engine_deployment(gs, CONFIG))
    (download,) = ps["initContainers"]
    assert {"name": "gcs-credentials", "secret": {"secretName": "gcp"}} in ps["volumes"]
    assert {
        "name": "GOOGLE_APPLICATION_CREDENTIALS",
        "value": "/var/run/secrets/hedge/gcs/sa.json",
    } in download["env"]

    user = model(
        spec_with(
            engine={
                "env": [
                    {"name": "VLLM_API_KEY", "secretKeyRef": {"name": "engine", "key": "key"}},
                    {"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"},
                ]
            }
        )
    )
    env = {e["name"]: e for e in engine(build_engine_deployment(user, CONFIG))["env"]}
    assert env["VLLM_API_KEY"] == {
        "name": "VLLM_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "engine", "key": "key"}},
    }
    assert env["VLLM_LOGGING_LEVEL"]["value"] == "DEBUG"


def test_adapters_from_buckets_are_downloaded_with_the_models_credentials() -> None:
    md = model(
        spec_with(
            model={"source": "s3://bkt/base", "credentialsSecretRef": {"name": "aws"}},
            adapters=[
                {"name": "a1", "source": "s3://bkt/adapters/a1"},
                {"name": "a2", "source": "gs://other/a2"},
            ],
        )
    )
    dep = build_engine_deployment(md, CONFIG)
    init = {i["name"]: i for i in pod_spec(dep)["initContainers"]}
    assert list(init) == ["download-model", "download-adapter-0", "download-adapter-1"]
    assert init["download-adapter-0"]["envFrom"] == [{"secretRef": {"name": "aws"}}]
    assert "envFrom" not in init["download-adapter-1"] and "env" not in init["download-adapter-1"]
    f = flags(engine(dep)["args"])
    assert f["--lora-modules"] == ["a1=/models/s3/bkt/adapters/a1", "a2=/models/gs/other/a2"]


def test_pod_annotations_reach_the_pods() -> None:
    md = model(spec_with(engine={"podAnnotations": {"sim.hedge.dev/ttft-ms": "50"}}))
    template = build_engine_deployment(md, CONFIG)["spec"]["template"]
    assert template["metadata"]["annotations"] == {"sim.hedge.dev/ttft-ms": "50"}


def test_service_pdb_and_cache_claim() -> None:
    md = model(spec_with(cache={"size": "300Gi", "storageClassName": "premium-rwo"}))
    svc = build_service(md)
    assert svc["metadata"]["name"] == "llama"
    assert svc["metadata"]["labels"] == CONTRACT_LABELS
    assert svc["spec"]["selector"] == {
        "hedge.dev/model-deployment": "llama",
        "hedge.dev/component": "engine",
    }
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}
    ]
    assert service_url(md) == "http://llama.team-a.svc:8000/v1"
    assert selector_string("llama") == "hedge.dev/model-deployment=llama,hedge.dev/component=engine"

    pdb = build_pdb(md)
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"

    pvc = build_cache_pvc(md)
    assert pvc is not None
    assert pvc["metadata"]["name"] == "llama-cache"
    assert pvc["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert pvc["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "300Gi"}},
        "storageClassName": "premium-rwo",
    }
    assert build_cache_pvc(model()) is None
    existing = model(spec_with(cache={"existingClaim": "shared-weights"}))
    assert build_cache_pvc(existing) is None
    volumes = pod_spec(build_engine_deployment(existing, CONFIG))["volumes"]
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "shared-weights"}} in volumes


def test_unknown_gpu_type_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="unknown GPU type"):
        build_engine_deployment(model(spec_with(resources={"gpuType": "nvidia-b200"})), CONFIG)


@pytest.mark.parametrize("timeout", [30, 300])
def test_a_stopping_engine_pod_stops_getting_requests_then_drains_them(timeout: int) -> None:
    """preStop keeps the engine serving while the gateways drop its endpoint; vLLM then
    drains for as long as a request may take (it aborts at once without the flag); the
    grace period covers both and the exit."""
    deployment = build_engine_deployment(
        model(spec_with(serving={"requestTimeoutSeconds": timeout})), CONFIG
    )
    container = engine(deployment)
    assert container["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    assert flags(container["args"])["--shutdown-timeout"] == [str(timeout)]
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] == 5 + timeout + 15


def test_engine_network_policy_admits_only_gateways_operator_and_allow_from() -> None:
    md = model(
        spec_with(
            serving={
                "allowFrom": [
                    {"namespaceLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                    {"podLabels": {"app": "batch"}},
                ]
            }
        )
    )
    config = NetworkPolicyConfig(
        gateway_namespace="hedge-system",
        gateway_pod_labels={"app.kubernetes.io/component": "gateway", "i": "hedge"},
        operator_namespace="hedge-system",
    )
    policy = build_network_policy(md, config)
    assert policy["kind"] == "NetworkPolicy" and policy["metadata"]["name"] == "llama"
    assert policy["metadata"]["ownerReferences"][0]["uid"] == md.uid
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    assert spec["podSelector"] == {
        "matchLabels": {"hedge.dev/model-deployment": "llama", "hedge.dev/component": "engine"}
    }
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"port": 8000, "protocol": "TCP"}]
    ns = {"matchLabels": {"kubernetes.io/metadata.name": "hedge-system"}}
    assert rule["from"] == [
        {
            "namespaceSelector": ns,
            "podSelector": {
                "matchLabels": {"app.kubernetes.io/component": "gateway", "i": "hedge"}
            },
        },
        {
            "namespaceSelector": ns,
            "podSelector": {"matchLabels": {"app.kubernetes.io/component": "operator"}},
        },
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
        {"podSelector": {"matchLabels": {"app": "batch"}}},  # this namespace only
    ]


def test_an_empty_allow_from_peer_is_refused() -> None:
    with pytest.raises(SpecError, match="allowFrom"):
        model(spec_with(serving={"allowFrom": [{}]}))


def test_no_network_policy_when_turned_off() -> None:
    config = replace(OperatorConfig(), network_policy=None)
    kinds = [c["kind"] for c in desired_children(model(), config).children]
    assert "NetworkPolicy" not in kinds
    assert "NetworkPolicy" in [
        c["kind"] for c in desired_children(model(), OperatorConfig()).children
    ]


def test_restricted_profile_passes_pod_security_restricted() -> None:
    """The checks of Pod Security `restricted` (kubernetes.io/docs/concepts/security/
    pod-security-standards), on every container, init containers included."""
    md = model(
        spec_with(
            engine={"securityProfile": "Restricted"},
            model={"source": "s3://bucket/llama", "name": "llama"},
            cache={"size": "10Gi"},
        )
    )
    deployment = build_engine_deployment(md, OperatorConfig())
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    assert pod["initContainers"], "the s3 download step is checked too"
    for c in [*pod["initContainers"], *pod["containers"]]:
        ctx = c["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False, c["name"]
        assert ctx["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert ctx["runAsNonRoot"] is True
        assert {"name": "HOME", "value": "/models/home"} in c["env"], c["name"]
        assert "privileged" not in ctx and not c.get("ports", [{}])[0].get("hostPort")
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    assert all("hostPath" not in v for v in pod["volumes"])


def test_the_default_profile_leaves_the_pod_template_as_it_was() -> None:
    """Unset (the default) writes no securityContext, so an upgrade keeps every revision."""
    pod = build_engine_deployment(model(), OperatorConfig())["spec"]["template"]["spec"]
    assert "securityContext" not in pod
    assert all("securityContext" not in c for c in pod["containers"])
