"""The thin kopf layer: handlers fill patch.status, map problems to kopf errors, and
coalesce child events into one reconcile per ModelDeployment."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import kopf
import pytest

from hedge_operator import handlers
from hedge_operator.config import OperatorConfig
from hedge_operator.handlers import Indexes, Nudger, Runtime
from hedge_operator.observed import summarize_pod
from hedge_operator.reconciler import Reconciler, RetryableError
from tests.operator.factories import as_served, body, pod_body, spec_with
from tests.operator.test_reconciler import FakeKube

# kopf's decorators type the handler as its callback protocol; call it as it is.
RECONCILE = cast(Any, handlers.reconcile)


class StatusKube(FakeKube):
    def __init__(self) -> None:
        super().__init__()
        self.status_patches: list[tuple[str, str, dict[str, Any]]] = []

    async def patch_status(self, namespace: str, name: str, patch: Any) -> None:
        self.status_patches.append((namespace, name, dict(patch)))

    async def close(self) -> None:
        pass


def indexes(
    models: list[dict[str, Any]],
    children: Sequence[dict[str, Any]] = (),
    pods: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    def index(objs: list[Any], kind: str | None = None) -> dict[tuple[str, str], list[Any]]:
        out: dict[tuple[str, str], list[Any]] = {}
        for obj in objs:
            if kind is not None and obj["kind"] != kind:
                continue
            meta = obj["metadata"]
            md = meta.get("labels", {}).get("hedge.dev/model-deployment", meta["name"])
            out.setdefault((meta["namespace"], md), []).append(obj)
        return out

    pod_index: dict[tuple[str, str], list[Any]] = {}
    for pod in pods:
        pod_index.setdefault(("team-a", "llama"), []).append(summarize_pod(pod))
    return {
        "hedge_models": index(models),
        "hedge_deployments": index(list(children), "Deployment"),
        "hedge_services": index(list(children), "Service"),
        "hedge_pdbs": index(list(children), "PodDisruptionBudget"),
        "hedge_pvcs": index(list(children), "PersistentVolumeClaim"),
        "hedge_pods": pod_index,
    }


@pytest.fixture
def kube() -> StatusKube:
    return StatusKube()


@pytest.fixture
def memo(kube: StatusKube) -> dict[str, Any]:
    config = OperatorConfig()
    return {
        "hedge": Runtime(
            config=config,
            kube=kube,  # type: ignore[arg-type]
            reconciler=Reconciler(kube, config),
        )
    }


async def call_reconcile(
    obj: dict[str, Any], memo: dict[str, Any], idx: dict[str, Any]
) -> kopf.Patch:
    patch = kopf.Patch()
    result = await RECONCILE(
        body=kopf.Body(cast(Any, obj)),
        namespace="team-a",
        name="llama",
        patch=patch,
        memo=memo,
        **idx,
    )
    assert result is None
    return patch


async def test_reconcile_handler_writes_status_through_the_patch(
    kube: StatusKube, memo: dict[str, Any]
) -> None:
    obj = body()
    patch = await call_reconcile(obj, memo, indexes([obj]))
    status = patch["status"]
    assert status["observedGeneration"] == 1
    assert {c["type"] for c in status["conditions"]} == {"Ready", "Progressing", "Degraded"}
    assert [w[1] for w in kube.writes()].count("Deployment") == 1
    assert kube.status_patches == []  # the kopf path never writes status itself


async def test_invalid_spec_is_a_permanent_error_with_status(memo: dict[str, Any]) -> None:
    obj = body(spec_with(resources={"gpuType": "nvidia-b300"}))
    patch = kopf.Patch()
    with pytest.raises(kopf.PermanentError, match="UnknownGPUType"):
        await RECONCILE(
            body=kopf.Body(cast(Any, obj)),
            namespace="team-a",
            name="llama",
            patch=patch,
            memo=memo,
            **indexes([obj]),
        )
    ready = next(c for c in patch["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "UnknownGPUType")


async def test_missing_secret_is_a_temporary_error(memo: dict[str, Any]) -> None:
    obj = body(spec_with(model={"credentialsSecretRef": {"name": "hf"}}))
    with pytest.raises(kopf.TemporaryError, match="SecretNotFound"):
        await call_reconcile(obj, memo, indexes([obj]))


async def test_server_trouble_is_a_temporary_error(kube: StatusKube, memo: dict[str, Any]) -> None:
    from hedge_operator.kube import ApiError

    kube.fail["apply"] = ApiError(500, "InternalError", "boom")
    obj = body()
    with pytest.raises(kopf.TemporaryError):
        await call_reconcile(obj, memo, indexes([obj]))


async def test_child_reconcile_writes_status_through_kube(
    kube: StatusKube, memo: dict[str, Any]
) -> None:
    obj = body()
    rt: Runtime = memo["hedge"]
    await call_reconcile(obj, memo, indexes([obj]))  # creates the children
    children = [as_served(o) for o in kube.objects.values()]
    obj["status"] = {}
    rt.indexes = Indexes.from_kwargs(indexes([obj], children, [pod_body("p", "x", ready=True)]))
    await rt.reconcile_key(("team-a", "llama"))
    ((ns, name, patch),) = kube.status_patches
    assert (ns, name) == ("team-a", "llama")
    assert patch["readyReplicas"] == 1
    await rt.nudger.close()


async def test_nudges_coalesce(monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[tuple[str, str]] = []
    done = asyncio.Event()

    async def run(key: tuple[str, str]) -> None:
        runs.append(key)
        done.set()

    nudger = Nudger(run, delay=0.01)
    for _ in range(5):
        nudger.nudge(("ns", "a"))
    nudger.nudge(("ns", "b"))
    await asyncio.wait_for(done.wait(), 1)
    await asyncio.sleep(0.05)
    assert sorted(runs) == [("ns", "a"), ("ns", "b")]
    done.clear()
    nudger.nudge(("ns", "a"))  # after the run, a new event schedules a new round
    await asyncio.wait_for(done.wait(), 1)
    assert runs.count(("ns", "a")) == 2
    await nudger.close()


async def test_nudge_retries_after_server_trouble(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers, "RETRY_DELAY", 0.01)
    calls = 0
    done = asyncio.Event()

    async def run(key: tuple[str, str]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RetryableError("API server busy")
        done.set()

    nudger = Nudger(run, delay=0.01)
    nudger.nudge(("ns", "a"))
    await asyncio.wait_for(done.wait(), 1)
    assert calls == 2
    await nudger.close()


async def test_child_event_is_not_swallowed_by_a_pending_long_recheck() -> None:
    """A re-check due in 30 s must not delay the reconcile a child event asks for now."""
    runs: list[tuple[str, str]] = []
    done = asyncio.Event()

    async def run(key: tuple[str, str]) -> None:
        runs.append(key)
        done.set()

    nudger = Nudger(run, delay=0.01)
    nudger.nudge(("ns", "a"), 30.0)  # in-flight write re-check
    nudger.nudge(("ns", "a"))  # a pod just turned Ready
    await asyncio.wait_for(done.wait(), 2)
    assert runs == [("ns", "a")]
    # The earlier, later-due round was replaced rather than kept as a second pending run.
    nudger.nudge(("ns", "a"), 30.0)
    nudger.nudge(("ns", "a"), 60.0)  # a later due time than the pending one is ignored
    assert len(nudger._pending) == 1
    await nudger.close()
