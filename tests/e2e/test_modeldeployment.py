"""ModelDeployments on the local cluster: `kubectl apply` of examples/, the operator
reconciling them into GPU pods that answer through the Service, status a GitOps tool can
trust, rolling revisions, drift repair, bad input, and CEL at apply time."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
import yaml

from hedge_core.contracts import PROVIDER_KEY_LABEL

from .conftest import (
    API,
    ROOT,
    E2ECluster,
    Operator,
    condition,
    current,
    get_md,
    wait_for,
    wait_ready,
)

EXAMPLES = ROOT / "examples"
FAST = {"sim.hedge.dev/ttft-ms": "1", "sim.hedge.dev/itl-ms": "1"}


# ---------------------------------------------------------------------------- helpers


def example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return doc


def fast(doc: dict[str, Any]) -> dict[str, Any]:
    """The example with instant simulated latency (the spec is otherwise unchanged)."""
    doc["spec"].setdefault("engine", {}).setdefault("podAnnotations", {}).update(FAST)
    return doc


def wait_reason(
    cluster: E2ECluster,
    namespace: str,
    name: str,
    type_: str,
    status: str,
    reason: str,
    timeout: float = 60,
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        md = get_md(cluster, namespace, name)
        c = condition(md, type_)
        return (
            md if current(md) and (c.get("status"), c.get("reason")) == (status, reason) else None
        )

    return wait_for(check, timeout, f"{name} {type_}={status} ({reason})", interval=0.3)


def events(cluster: E2ECluster, namespace: str, name: str) -> list[tuple[str, str, str]]:
    items = cluster.get(f"/api/v1/namespaces/{namespace}/events")["items"]
    return [
        (e["type"], e["reason"], e.get("message", ""))
        for e in items
        if e["involvedObject"].get("kind") == "ModelDeployment"
        and e["involvedObject"].get("name") == name
    ]


def children(
    cluster: E2ECluster, namespace: str, plural: str, group: str = "apps/v1", md: str | None = None
) -> list[dict[str, Any]]:
    base = "/api/v1" if group == "v1" else f"/apis/{group}"
    selector = "app.kubernetes.io%2Fmanaged-by%3Dhedge-operator"
    if md:
        selector += f",hedge.dev%2Fmodel-deployment%3D{md}"
    items: list[dict[str, Any]] = cluster.get(
        f"{base}/namespaces/{namespace}/{plural}?labelSelector={selector}"
    )["items"]
    return [i for i in items if not i["metadata"].get("deletionTimestamp")]


def chat(url: str, model: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{url}/chat/completions",
        data=json.dumps(
            {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hello"}]}
        ).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        reply: dict[str, Any] = json.loads(resp.read())
    return reply


def secret(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}


def provider_key_secret(name: str, **data: str) -> dict[str, Any]:
    """A Secret that opted in to be read as a fallback provider key."""
    body = secret(name, **data)
    body["metadata"]["labels"] = {PROVIDER_KEY_LABEL: "true"}
    return body


# ------------------------------------------------------------------------------ tests


def test_quickstart_is_ready_on_an_a100_and_answers_through_the_service(
    cluster: E2ECluster, namespace: str, operator: Operator
) -> None:
    cluster.apply(fast(example("quickstart.yaml")), namespace)
    md = wait_ready(cluster, namespace, "llama-3-8b")
    status = md["status"]
    assert status["servedModel"] == "llama-3-8b"
    assert status["url"] == f"http://llama-3-8b.{namespace}.svc:8000/v1"
    assert status["selector"] == "hedge.dev/model-deployment=llama-3-8b,hedge.dev/component=engine"
    for type_ in ("Ready", "Progressing", "Degraded"):
        c = condition(md, type_)
        assert c["observedGeneration"] == md["metadata"]["generation"]
        assert c["reason"] and c["message"] and c["lastTransitionTime"]
    assert condition(md, "Degraded")["status"] == "False"

    # The engine pod runs on an A100 node, with the GPU it asked for.
    (pod,) = children(cluster, namespace, "pods", "v1", "llama-3-8b")
    node = cluster.get(f"/api/v1/nodes/{pod['spec']['nodeName']}")
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"
    (engine,) = pod["spec"]["containers"]
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["metadata"]["labels"]["hedge.dev/revision"] == status["revision"]

    # Through the Service's ClusterIP, as a client in the cluster would.
    svc = cluster.get(f"/api/v1/namespaces/{namespace}/services/llama-3-8b")
    reply = wait_for(
        lambda: chat(f"http://{svc['spec']['clusterIP']}:8000/v1", "llama-3-8b"),
        30,
        "a chat completion through the Service",
    )
    assert reply["model"] == "llama-3-8b"
    assert reply["choices"][0]["message"]["content"]

    # kubectl get md: the printer columns.
    out = cluster.kubectl("get", "md", "-n", namespace).stdout.splitlines()
    assert out[0].split() == [
        "NAME", "MODEL", "READY", "REPLICAS", "DESIRED", "REVISION", "STEP", "WEIGHT",
        "FALLBACK", "AGE",
    ]  # fmt: skip
    row = out[1].split()  # empty cells (no autoscaling, no rollout) print as blanks
    assert row[:5] == ["llama-3-8b", "llama-3-8b", "True", "1", status["revision"]]

    reasons = {r for _, r, _ in events(cluster, namespace, "llama-3-8b")}
    assert {"NewRevision", "ReplicasReady"} <= reasons


def test_kubectl_scale_goes_through_the_scale_subresource(
    cluster: E2ECluster, namespace: str, operator: Operator
) -> None:
    cluster.apply(fast(example("quickstart.yaml")), namespace)
    wait_ready(cluster, namespace, "llama-3-8b")
    cluster.kubectl("scale", "md/llama-3-8b", "-n", namespace, "--replicas=3")
    md = wait_ready(cluster, namespace, "llama-3-8b", replicas=3)
    assert md["spec"]["replicas"] == 3
    pods = children(cluster, namespace, "pods", "v1", "llama-3-8b")
    assert len(pods) == 3
    scale = cluster.get(f"{API}/namespaces/{namespace}/modeldeployments/llama-3-8b/scale")
    assert scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == md["status"]["selector"]


def test_editing_the_spec_rolls_a_new_revision(
    cluster: E2ECluster, namespace: str, operator: Operator
) -> None:
    doc = fast(example("quickstart.yaml"))
    doc["spec"]["replicas"] = 2
    cluster.apply(doc, namespace)
    first = wait_ready(cluster, namespace, "llama-3-8b", replicas=2)["status"]["revision"]

    doc["spec"]["engine"]["maxModelLen"] = 4096
    cluster.apply(doc, namespace)
    md = wait_ready(cluster, namespace, "llama-3-8b", replicas=2, not_revision=first)
    second = md["status"]["revision"]
    assert second != first and md["status"]["observedGeneration"] == 2

    deployments = wait_for(
        lambda: (
            d
            if len(d := children(cluster, namespace, "deployments", md="llama-3-8b")) == 1
            else None
        ),
        60,
        "the old revision's Deployment to go",
    )
    assert deployments[0]["metadata"]["name"] == f"llama-3-8b-{second}"
    pods = wait_for(
        lambda: (
            p if len(p := children(cluster, namespace, "pods", "v1", "llama-3-8b")) == 2 else None
        ),
        60,
        "only the new revision's pods",
    )
    for pod in pods:
        assert pod["metadata"]["labels"]["hedge.dev/revision"] == second
        args = pod["spec"]["containers"][0]["args"]
        assert args[args.index("--max-model-len") + 1] == "4096"
    messages = [m for _, r, m in events(cluster, namespace, "llama-3-8b") if r == "NewRevision"]
    assert f"revision {second} replaces {first}" in messages


def test_deleted_and_edited_children_are_repaired(
    cluster: E2ECluster, namespace: str, operator: Operator
) -> None:
    cluster.apply(fast(example("quickstart.yaml")), namespace)
    md = wait_ready(cluster, namespace, "llama-3-8b")
    revision = md["status"]["revision"]
    svc_uid = cluster.get(f"/api/v1/namespaces/{namespace}/services/llama-3-8b")["metadata"]["uid"]

    cluster.kubectl(
        "delete", "service/llama-3-8b", "poddisruptionbudget/llama-3-8b", "-n", namespace
    )
    wait_for(
        lambda: (
            cluster.get(f"/api/v1/namespaces/{namespace}/services/llama-3-8b")["metadata"]["uid"]
            != svc_uid
        ),
        30,
        "the Service to be recreated",
    )
    wait_for(
        lambda: children(cluster, namespace, "poddisruptionbudgets", "policy/v1"),
        30,
        "the PodDisruptionBudget to be recreated",
    )

    name = f"llama-3-8b-{revision}"
    cluster.kubectl("delete", f"deployment/{name}", "-n", namespace, "--wait=false")
    wait_for(
        lambda: [
            d for d in children(cluster, namespace, "deployments") if d["metadata"]["name"] == name
        ],
        30,
        "the Deployment to be recreated",
    )
    cluster.kubectl("scale", f"deployment/{name}", "-n", namespace, "--replicas=4")
    wait_for(
        lambda: (
            cluster.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")["spec"][
                "replicas"
            ]
            == 1
        ),
        30,
        "the operator to restore replicas=1",
    )
    wait_ready(cluster, namespace, "llama-3-8b")
    repaired = [m for _, r, m in events(cluster, namespace, "llama-3-8b") if r == "DriftRepaired"]
    assert any("Service llama-3-8b" in m for m in repaired)
    assert any(f"Deployment {name}" in m for m in repaired)


def test_absent_gpu_type_ends_degraded_no_matching_nodes(
    cluster: E2ECluster, namespace: str, operator: Operator
) -> None:
    doc = fast(example("quickstart.yaml"))
    doc["metadata"]["name"] = "on-l4"
    doc["spec"]["resources"]["gpuType"] = "nvidia-l4"  # known type, but no such node here
    cluster.apply(doc, namespace)
    md = wait_reason(cluster, namespace, "on-l4", "Degraded", "True", "NoMatchingNodes")
    assert "no node matches accelerator profile 'nvidia-l4'" in condition(md, "Degraded")["message"]
    assert (condition(md, "Ready")["status"], condition(md, "Ready")["reason"]) == (
        "False",
        "NoMatchingNodes",
    )
    assert ("Warning", "NoMatchingNodes") in [
        (t, r) for t, r, _ in events(cluster, namespace, "on-l4")
    ]


@pytest.mark.parametrize("state", ["CrashLoopBackOff", "ImagePullBackOff"])
def test_broken_pods_show_as_degraded_with_the_cause(
    cluster: E2ECluster, namespace: str, operator: Operator, state: str
) -> None:
    doc = fast(example("quickstart.yaml"))
    doc["spec"]["engine"]["podAnnotations"]["sim.hedge.dev/container-state"] = state
    cluster.apply(doc, namespace)
    md = wait_reason(cluster, namespace, "llama-3-8b", "Degraded", "True", state)
    assert state in condition(md, "Degraded")["message"]
    assert condition(md, "Ready")["status"] == "False"


def test_bad_input_is_reported_and_others_keep_being_served(
    cluster: E2ECluster, namespace: str, operator: Operator
) -> None:
    good = fast(example("quickstart.yaml"))
    unknown = fast(example("quickstart.yaml"))
    unknown["metadata"]["name"] = "unknown-gpu"
    unknown["spec"]["resources"]["gpuType"] = "nvidia-b300"
    conflicting = fast(example("quickstart.yaml"))
    conflicting["metadata"]["name"] = "conflicting"
    conflicting["spec"]["engine"]["extraArgs"] = ["--tensor-parallel-size", "2"]
    needs_secret = fast(example("quickstart.yaml"))
    needs_secret["metadata"]["name"] = "needs-secret"
    needs_secret["spec"]["model"]["credentialsSecretRef"] = {"name": "hf-token"}
    # Each its own model name: a refused ModelDeployment keeps the names it claims (so that
    # fixing it moves no traffic), and the oldest claim owns a name (docs/gateway.md).
    for bad in (unknown, conflicting, needs_secret):
        bad["spec"]["model"]["name"] = bad["metadata"]["name"]
    cluster.apply([unknown, conflicting, needs_secret, good], namespace)

    md = wait_reason(cluster, namespace, "unknown-gpu", "Ready", "False", "UnknownGPUType")
    assert "'nvidia-b300'" in condition(md, "Ready")["message"]
    md = wait_reason(cluster, namespace, "conflicting", "Ready", "False", "ConflictingArgs")
    assert "--tensor-parallel-size" in condition(md, "Ready")["message"]
    md = wait_reason(cluster, namespace, "needs-secret", "Ready", "False", "SecretNotFound")
    assert "'hf-token'" in condition(md, "Ready")["message"]
    wait_ready(cluster, namespace, "llama-3-8b")
    for name, reason in (
        ("unknown-gpu", "UnknownGPUType"),
        ("conflicting", "ConflictingArgs"),
        ("needs-secret", "SecretNotFound"),
    ):
        assert ("Warning", reason) in [(t, r) for t, r, _ in events(cluster, namespace, name)]
        assert children(cluster, namespace, "deployments", md=name) == []

    # The missing Secret appears: the operator notices without a spec change.
    cluster.apply(secret("hf-token", token="hf_not_a_real_token"), namespace)
    md = wait_ready(cluster, namespace, "needs-secret", timeout=120)
    (dep,) = children(cluster, namespace, "deployments", md="needs-secret")
    env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}},
    } in env
    assert "hf_not_a_real_token" not in json.dumps(md) + json.dumps(dep)
    assert "hf_not_a_real_token" not in (operator.proc.log() if operator.proc else "")


CEL_CASES = [
    (
        {"engine": {"tensorParallelSize": 3}, "resources": {"gpus": 2}},
        "engine.tensorParallelSize * engine.pipelineParallelSize must equal resources.gpus",
    ),
    (
        {"model": {"source": "ftp://host/model"}},
        "source must start with hf://, s3://, gs:// or pvc://",
    ),
    (
        {
            "fallback": {
                "providers": [
                    {
                        "type": "AzureOpenAI",
                        "model": "gpt-4o",
                        "apiKeySecretRef": {"name": "a", "key": "k"},
                    }
                ]
            }
        },
        "AzureOpenAI providers need baseURL and apiVersion",
    ),
    (
        {"autoscaling": {"minReplicas": 4, "maxReplicas": 2}},
        "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
    ),
    ({"rollout": {"strategy": "Canary"}}, "the Canary strategy needs at least one step"),
    (
        {"resources": {"gpus": 0, "gpuType": "nvidia-l4"}},
        "resources.gpuType needs resources.gpus > 0",
    ),
    (
        {"rollout": {"maxSurge": 0, "maxUnavailable": "0%"}},
        "rollout.maxSurge and rollout.maxUnavailable must not both be 0",
    ),
    (
        {"rollout": {"strategy": "Canary", "steps": [{"weight": 50}, {"weight": 20}]}},
        "rollout.steps must not decrease in weight",
    ),
    (
        {"rollout": {"analysis": {"maxErrorRatePercent": 150}}},
        "spec.rollout.analysis.maxErrorRatePercent",
    ),
    (
        {"serving": {"requestTimeoutSeconds": 30, "coldStartHoldSeconds": 60}},
        "serving.coldStartHoldSeconds must not exceed serving.requestTimeoutSeconds",
    ),
    (
        {"autoscaling": {"maxReplicas": 3, "targetRequests": 0}},
        "spec.autoscaling.targetRequests",
    ),
]


def test_cel_rejects_bad_specs_at_apply_time(
    cluster: E2ECluster, namespace: str, crd: None
) -> None:
    for change, message in CEL_CASES:
        doc = example("quickstart.yaml")
        for key, value in change.items():
            doc["spec"][key] = {**doc["spec"].get(key, {}), **value}
        proc = cluster.kubectl(
            "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc), check=False
        )
        assert proc.returncode != 0, f"accepted: {change}"
        assert message in proc.stderr, proc.stderr
    doc = example("quickstart.yaml")
    doc["metadata"]["name"] = "x" * 53
    proc = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc), check=False
    )
    assert "at most 52 characters" in proc.stderr
    assert cluster.get(f"{API}/namespaces/{namespace}/modeldeployments")["items"] == []


def test_examples_apply_and_store_fallback_lora_and_cache(
    cluster: E2ECluster, namespace: str, operator: Operator
) -> None:
    cluster.apply(
        [
            provider_key_secret("openai", **{"api-key": "sk-test"}),
            provider_key_secret("anthropic", **{"api-key": "sk-ant-test"}),
            secret("hf-token", token="hf_test"),
        ],
        namespace,
    )
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES))

    fallback = wait_ready(cluster, namespace, "qwen-chat", replicas=2)
    assert fallback["status"]["fallback"] == "OpenAI,Anthropic"
    assert [p["type"] for p in fallback["spec"]["fallback"]["providers"]] == ["OpenAI", "Anthropic"]
    row = next(
        line.split()
        for line in cluster.kubectl("get", "md", "qwen-chat", "-n", namespace).stdout.splitlines()[
            1:
        ]
    )
    assert "OpenAI,Anthropic" in row
    for pod in children(cluster, namespace, "pods", "v1", "qwen-chat"):
        node = cluster.get(f"/api/v1/nodes/{pod['spec']['nodeName']}")
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"

    wait_ready(cluster, namespace, "llama-3-8b-lora")
    (pod,) = children(cluster, namespace, "pods", "v1", "llama-3-8b-lora")
    args = pod["spec"]["containers"][0]["args"]
    assert "--enable-lora" in args
    svc = cluster.get(f"/api/v1/namespaces/{namespace}/services/llama-3-8b-lora")
    url = f"http://{svc['spec']['clusterIP']}:8000/v1"
    for served in ("llama-3-8b-base", "sql-lora"):
        assert wait_for(lambda s=served: chat(url, s), 30, f"{served} to answer")["model"] == served

    # The cache claim is created and owned; without a storage provisioner it stays Pending.
    (pvc,) = children(cluster, namespace, "persistentvolumeclaims", "v1", "llama-3-70b")
    assert pvc["metadata"]["name"] == "llama-3-70b-cache"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "200Gi"
    assert pvc["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"


def test_deleting_the_model_deployment_removes_its_children(
    cluster: E2ECluster, namespace: str, operator: Operator
) -> None:
    doc = fast(example("quickstart.yaml"))
    doc["spec"]["cache"] = {"size": "10Gi"}
    cluster.apply(doc, namespace)
    wait_for(
        lambda: children(cluster, namespace, "persistentvolumeclaims", "v1"), 60, "the cache claim"
    )
    wait_for(lambda: children(cluster, namespace, "deployments"), 60, "the engine Deployment")
    cluster.kubectl("delete", "md/llama-3-8b", "-n", namespace)

    def gone() -> bool:
        return not any(
            children(cluster, namespace, plural, group)
            for plural, group in (
                ("deployments", "apps/v1"),
                ("services", "v1"),
                ("poddisruptionbudgets", "policy/v1"),
                ("pods", "v1"),
            )
        )

    wait_for(gone, 60, "the garbage collector to remove every child")


def test_an_unchanged_object_costs_no_writes_after_a_restart(
    cluster: E2ECluster, namespace: str, operator: Operator
) -> None:
    cluster.apply(fast(example("quickstart.yaml")), namespace)
    md = wait_ready(cluster, namespace, "llama-3-8b")
    operator.stop()
    restarted = operator.start()
    # The resume handler and the nudges from the initial listing of the children run;
    # none of them needs a write.
    for trigger in ("spec", "child"):
        wait_for(
            lambda t=trigger: restarted.counter("hedge_operator_reconciles_total", trigger=t) >= 1,
            30,
            f"a {trigger} reconcile after the restart",
        )
    writes = sum(
        restarted.counter("hedge_operator_api_requests_total", verb=verb)
        for verb in ("PATCH", "POST", "PUT", "DELETE")
    )
    assert writes == 0
    after = get_md(cluster, namespace, "llama-3-8b")
    assert after["metadata"]["resourceVersion"] == md["metadata"]["resourceVersion"]
