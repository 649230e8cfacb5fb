"""The thin kopf layer: handlers fill patch.status, map problems to kopf errors, and
coalesce child events into one reconcile per ModelDeployment."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import kopf
import pytest

from hedge_core.kube import ServerError
from hedge_operator import handlers, runtime
from hedge_operator.config import OperatorConfig
from hedge_operator.dataplane.signals import Counters, Snapshot
from hedge_operator.handlers import Indexes, Nudger, Runtime
from hedge_operator.kube import Conflict
from hedge_operator.provisioning.observed import summarize_pod
from hedge_operator.reconcile.reconciler import Reconciler, RetryableError
from tests.operator.factories import as_served, body, pod_body, spec_with
from tests.operator.reconcile.test_reconciler import FakeKube
from tests.operator.tenants.test_driver import SPEC, MemoryAPI, secret
from tests.operator.tenants.test_driver import body as cpol_body

# kopf's decorators type the handler as its callback protocol; call it as it is.
RECONCILE = cast(Any, handlers.reconcile)


def merge(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    """JSON merge patch (RFC 7386), as the API server applies it."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class StatusKube(FakeKube):
    """FakeKube plus the ModelDeployments themselves, with resourceVersion preconditions
    on status writes as the API server enforces them."""

    def __init__(self) -> None:
        super().__init__()
        self.models: dict[tuple[str, str], dict[str, Any]] = {}
        self.status_patches: list[tuple[str, str, dict[str, Any]]] = []
        self.gate: asyncio.Event | None = None  # holds the next status write until set
        self.conflicts = 0

    def serve(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self.models[(meta["namespace"], meta["name"])] = copy.deepcopy(obj)

    def _bump(self, served: dict[str, Any]) -> None:
        meta = served["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)

    async def get_model(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.requests.append(("get", "ModelDeployment", name))
        served = self.models.get((namespace, name))
        return copy.deepcopy(served) if served is not None else None

    async def patch_status(
        self, namespace: str, name: str, patch: Any, resource_version: str
    ) -> str | None:
        if self.gate is not None:
            gate, self.gate = self.gate, None
            await gate.wait()
        self.requests.append(("status", name))
        served = self.models.get((namespace, name))
        if served is not None:
            if served["metadata"]["resourceVersion"] != resource_version:
                self.conflicts += 1
                raise Conflict(
                    409, "Conflict", f"the object has been modified ({resource_version})"
                )
            merge(served.setdefault("status", {}), patch)
            self._bump(served)
        self.status_patches.append((namespace, name, dict(patch)))
        return None if served is None else str(served["metadata"]["resourceVersion"])

    def apply_kopf_patch(self, namespace: str, name: str, patch: kopf.Patch) -> None:
        """What kopf does with a handler's patch once the handler returns: a merge patch
        without a resourceVersion."""
        served = self.models[(namespace, name)]
        if patch.get("status"):
            merge(served.setdefault("status", {}), patch["status"])
        self._bump(served)

    async def close(self) -> None:
        pass


async def until(check: Callable[[], bool], what: str, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.005)
    assert check(), what


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


async def test_reconcile_handler_writes_status_itself_not_through_kopf(
    kube: StatusKube, memo: dict[str, Any]
) -> None:
    obj = body()
    patch = await call_reconcile(obj, memo, indexes([obj]))
    assert "status" not in patch  # kopf would apply it later, without a resourceVersion
    ((ns, name, status),) = kube.status_patches
    assert (ns, name) == ("team-a", "llama")
    assert status["observedGeneration"] == 1
    assert {c["type"] for c in status["conditions"]} == {
        "Ready",
        "Progressing",
        "Degraded",
        "Reconciling",
        "Stalled",
    }
    assert [w[1] for w in kube.writes()].count("Deployment") == 1


async def test_invalid_spec_is_a_permanent_error_with_status(
    kube: StatusKube, memo: dict[str, Any]
) -> None:
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
    ((_, _, status),) = kube.status_patches
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
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
    kube.status_patches.clear()
    await rt.reconcile_key(("team-a", "llama"))
    ((ns, name, patch),) = kube.status_patches
    assert (ns, name) == ("team-a", "llama")
    assert patch["readyReplicas"] == 1
    await rt.nudger.close()


async def test_interleaved_status_writes_lose_nothing(
    kube: StatusKube, memo: dict[str, Any]
) -> None:
    """kopf's handler and a child nudge reconcile the same object at once. The handler saw
    no ready replica, the nudge (later, from kopf's index, whose copy of the object is stale)
    saw one. Whatever order the writes land in, the newer status must stay."""
    rt: Runtime = memo["hedge"]
    obj = body()
    obj["metadata"]["resourceVersion"] = "10"
    kube.serve(obj)
    await call_reconcile(obj, memo, indexes([obj]))  # creates the children, writes status
    obj = copy.deepcopy(kube.models[("team-a", "llama")])
    unready = [as_served(o, ready=0) for o in kube.objects.values()]
    ready = [as_served(o) for o in kube.objects.values()]
    seen_by_handler = indexes([obj], unready)
    rt.indexes = Indexes.from_kwargs(seen_by_handler)

    # The handler computes "0 ready" and is held just before its status write …
    gate = kube.gate = asyncio.Event()
    patch = kopf.Patch()
    handler = asyncio.create_task(
        RECONCILE(
            body=kopf.Body(cast(Any, copy.deepcopy(obj))),
            namespace="team-a",
            name="llama",
            patch=patch,
            memo=memo,
            **seen_by_handler,
        )
    )
    await until(lambda: kube.gate is None, "the handler at its status write")
    # … a replica turns ready and its event nudges a reconcile, from the index's copy, which
    # waits for the object's lock while the handler holds it.
    rt.indexes = Indexes.from_kwargs(indexes([obj], ready))
    nudge = asyncio.create_task(rt.reconcile_key(("team-a", "llama")))
    for _ in range(5):
        await asyncio.sleep(0)  # let the nudge start and block on the lock
    assert not nudge.done()
    gate.set()
    await asyncio.gather(handler, nudge)
    kube.apply_kopf_patch("team-a", "llama", patch)  # kopf's own patch lands last

    def served() -> dict[str, Any]:
        return dict(kube.models[("team-a", "llama")]["status"])

    assert served()["readyReplicas"] == 1
    assert condition_status(served(), "Ready") == "True"
    # The nudge knew its copy predates the handler's write: nothing conflicted.
    assert kube.conflicts == 0

    # kopf's patch moved the object on (as its annotation writes do). The replica goes
    # unready and a nudge reconciles from the index's copy, older than anything written
    # since — a copy whose status happens to say "0 ready" already: the write must still
    # happen, be refused, and be redone on the object as it is now.
    rt.indexes = Indexes.from_kwargs(indexes([obj], unready))
    await rt.reconcile_key(("team-a", "llama"))
    assert kube.conflicts == 1
    assert served()["readyReplicas"] == 0
    assert condition_status(served(), "Ready") == "False"
    await rt.nudger.close()


def condition_status(status: Mapping[str, Any], type_: str) -> str:
    return str(next(c for c in status["conditions"] if c["type"] == type_)["status"])


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
    monkeypatch.setattr(runtime, "RETRY_DELAY", 0.01)
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


# ------------------------------------------------------------------------------ tenants

CLIENT_POLICY = cast(Any, handlers.client_policy)
CLIENT_POLICY_RESYNC = cast(Any, handlers.client_policy_resync)
CLIENT_POLICY_USAGE = cast(Any, handlers.client_policy_usage)
CLIENT_POLICY_EVENT = cast(Any, handlers.client_policy_event)


def _tenant_memo(api: Any) -> dict[str, Any]:
    config = OperatorConfig()
    return {"hedge": Runtime(config=config, kube=api, reconciler=Reconciler(api, config))}


async def test_client_policy_handlers_fill_patch_status_and_only_when_it_changed() -> None:

    api = MemoryAPI({"keys": secret(a="v"), "more": secret(ci="v")})
    patch = kopf.Patch()
    obj = cpol_body(SPEC)
    await CLIENT_POLICY(body=obj, patch=patch, memo=_tenant_memo(api))
    assert patch["status"]["keys"] == 2
    assert patch["status"]["conditions"][0]["reason"] == "KeysFound"
    # The timer, with that status in place, sends nothing.
    again = kopf.Patch()
    resynced = cpol_body(SPEC, dict(patch["status"]))
    await CLIENT_POLICY_RESYNC(body=resynced, patch=again, memo=_tenant_memo(api))
    assert "status" not in again


async def test_client_policy_api_trouble_is_a_temporary_error_for_the_handler_only() -> None:

    api = MemoryAPI({"keys": ServerError(503, "ServiceUnavailable", "busy")})
    with pytest.raises(kopf.TemporaryError):
        await CLIENT_POLICY(body=cpol_body(SPEC), patch=kopf.Patch(), memo=_tenant_memo(api))
    patch = kopf.Patch()
    await CLIENT_POLICY_RESYNC(body=cpol_body(SPEC), patch=patch, memo=_tenant_memo(api))
    assert "status" not in patch


class OnePlane:
    """A data plane whose scrape read one gateway with the given tenant counters."""

    configured = True

    def __init__(self, counters: Mapping[tuple[str, ...], float]) -> None:
        self.counters = Counters()
        self.counters.update("http://gw/metrics", counters)

    def set_engines(self, engines: Any) -> None:
        pass

    async def snapshot(self) -> Snapshot:
        return Snapshot(0.0, 1, [], {}, self.counters)


async def test_client_policy_usage_timer_writes_status_usage_and_forgets_deleted() -> None:
    config = OperatorConfig()
    api = MemoryAPI({})
    plane = OnePlane({("tenant_tokens", "team-a/team-a", "ci", "m", "self-hosted"): 5})
    rt = Runtime(config, api, Reconciler(api, config), dataplane=cast(Any, plane))
    memo = {"hedge": rt}
    patch = kopf.Patch()
    await CLIENT_POLICY_USAGE(body=cpol_body(SPEC), uid="u1", patch=patch, memo=memo)
    assert set(patch["status"]["usage"]) >= {"minuteStart", "minuteTokens", "dayTokens"}
    assert "conditions" not in patch["status"]
    await CLIENT_POLICY_EVENT(type="DELETED", uid="u1", memo=memo)
    assert rt.usages == {}
    # Without a gateway to read, nothing is written.
    patch = kopf.Patch()
    await CLIENT_POLICY_USAGE(body=cpol_body(SPEC), uid="u1", patch=patch, memo=_tenant_memo(api))
    assert "status" not in patch
