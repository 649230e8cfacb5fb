"""The Argo CD health check for ModelDeployments, run in Lua 5.1 (the dialect of gopher-lua,
Argo CD's interpreter) against sample objects; docs/gitops.md shows the same script."""

from __future__ import annotations

import re
from typing import Any

import pytest
from lupa import lua51  # lupa (dev extra) ships a Lua 5.1 runtime

from tests.chart.chart_support import ROOT

LUA = (ROOT / "deploy" / "argocd" / "modeldeployment-health.lua").read_text()


def health(obj: dict[str, Any]) -> tuple[str, str]:
    runtime = lua51.LuaRuntime()
    runtime.globals().obj = runtime.table_from(obj, recursive=True)
    result = runtime.execute(LUA)
    return result["status"], result["message"]


def md(
    generation: int = 2, observed: int | None = 2, conditions: list[Any] | None = None
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "hedge.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "llama", "namespace": "team-a", "generation": generation},
    }
    if conditions is not None:
        obj["status"] = {"conditions": conditions}
        if observed is not None:
            obj["status"]["observedGeneration"] = observed
    return obj


def cond(type_: str, status: str, reason: str = "", message: str = "") -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


READY = cond("Ready", "True", "Serving", "2/2 replicas ready")
NOT_PROGRESSING = cond("Progressing", "False", "RolloutComplete")
NOT_DEGRADED = cond("Degraded", "False", "AllReplicasReady")


@pytest.mark.parametrize(
    ("obj", "status", "message_part"),
    [
        (md(conditions=None), "Progressing", "Waiting for the Hedge operator"),
        (md(conditions=[]), "Progressing", "Waiting for the Hedge operator"),
        (md(generation=3, observed=2, conditions=[READY]), "Progressing", "observe generation 3"),
        (md(observed=None, conditions=[READY]), "Progressing", "observe generation 2"),
        (
            md(conditions=[READY, NOT_PROGRESSING, NOT_DEGRADED]),
            "Healthy",
            "Ready=True (Serving): 2/2",
        ),
        (
            md(
                conditions=[
                    READY,
                    NOT_PROGRESSING,
                    cond("Degraded", "True", "ServingFromFallback", "0/2 ready"),
                ]
            ),
            "Degraded",
            "Degraded=True (ServingFromFallback): 0/2 ready",
        ),
        (
            md(
                conditions=[
                    READY,
                    cond("Progressing", "True", "CanaryAnalysis", "step 2/4 at 25%"),
                    NOT_DEGRADED,
                ]
            ),
            "Progressing",
            "Progressing=True (CanaryAnalysis): step 2/4 at 25%",
        ),
        (
            md(
                conditions=[
                    cond("Ready", "False", "InvalidSpec", "tensorParallelSize > gpus"),
                    NOT_PROGRESSING,
                ]
            ),
            "Degraded",
            "Ready=False (InvalidSpec): tensorParallelSize > gpus",
        ),
        (
            md(
                conditions=[
                    cond("Ready", "False", "PodsStarting"),
                    cond("Progressing", "True", "ScalingUp"),
                ]
            ),
            "Progressing",
            "Progressing=True (ScalingUp)",
        ),
        (
            md(conditions=[cond("Ready", "False", "PodsStarting")]),
            "Progressing",
            "Ready=False (PodsStarting)",
        ),
        (md(conditions=[cond("Ready", "Unknown", "Reconciling")]), "Progressing", "Ready=Unknown"),
        # Rollouts, as the operator reports them.
        (
            md(
                conditions=[
                    cond("Ready", "False", "RollingOut", "1/4 replicas ready at revision b"),
                    cond("Progressing", "True", "RollingOut", "step 1 of 2: 20% of the traffic"),
                    NOT_DEGRADED,
                ]
            ),
            "Progressing",
            "Progressing=True (RollingOut): step 1 of 2: 20% of the traffic",
        ),
        (
            md(
                conditions=[
                    cond("Ready", "False", "RollingOut", "1/4 replicas ready at revision b"),
                    cond("Progressing", "Unknown", "RolloutPaused", "paused at step 1 of 2 (20%)"),
                    NOT_DEGRADED,
                ]
            ),
            "Suspended",
            "Progressing=Unknown (RolloutPaused): paused at step 1 of 2 (20%)",
        ),
        (
            md(
                conditions=[
                    cond("Ready", "False", "RolloutAborted", "the rollout of b was aborted"),
                    cond("Progressing", "False", "RolloutAborted", "the rollout of b was aborted"),
                    cond(
                        "Degraded",
                        "True",
                        "RolloutAborted",
                        "the rollout of revision b was aborted: canary error rate 31.0%",
                    ),
                ]
            ),
            "Degraded",
            "Degraded=True (RolloutAborted): the rollout of revision b was aborted: canary error",
        ),
        (md(conditions=[{"status": "True"}, READY]), "Healthy", "Ready=True"),
        (md(conditions=[{"type": "Ready", "status": "True"}]), "Healthy", "Ready=True"),
    ],
)
def test_health_from_conditions(obj: dict[str, Any], status: str, message_part: str) -> None:
    got_status, got_message = health(obj)
    assert got_status == status
    assert message_part in got_message


def test_degraded_wins_over_progressing() -> None:
    obj = md(
        conditions=[cond("Progressing", "True"), cond("Degraded", "True", "CanaryFailed"), READY]
    )
    assert health(obj) == ("Degraded", "Degraded=True (CanaryFailed)")


def test_runs_under_lua_51() -> None:
    """Lua 5.1's parser rejects what gopher-lua lacks (goto, //, bitwise operators), so the
    samples above passing under this runtime is the dialect check."""
    assert lua51.LuaRuntime().lua_version == (5, 1)


def test_docs_show_the_same_script() -> None:
    docs = (ROOT / "docs" / "gitops.md").read_text()
    blocks = re.findall(r"```lua\n(.*?)```", docs, flags=re.S)
    assert LUA in blocks, "docs/gitops.md must show deploy/argocd/modeldeployment-health.lua as is"
    assert "resource.customizations.health.hedge.dev_ModelDeployment" in docs


# ------------------------------------------------------------------------- ClientPolicy

CLIENT_POLICY_LUA = (ROOT / "deploy" / "argocd" / "clientpolicy-health.lua").read_text()


def cpol_health(obj: dict[str, Any]) -> tuple[str, str]:
    runtime = lua51.LuaRuntime()
    runtime.globals().obj = runtime.table_from(obj, recursive=True)
    result = runtime.execute(CLIENT_POLICY_LUA)
    return result["status"], result["message"]


def cpol(generation: int = 1, observed: int | None = 1, ready: Any = None) -> dict[str, Any]:
    obj = md(generation, observed, None if ready is None else [ready])
    obj["kind"] = "ClientPolicy"
    return obj


@pytest.mark.parametrize(
    ("obj", "status", "message"),
    [
        (cpol(), "Progressing", "Waiting for the Hedge operator to check the keys"),
        (
            cpol(2, 1, cond("Ready", "True", "KeysFound", "2 keys in 1 Secret")),
            "Progressing",
            "observe generation 2",
        ),
        (
            cpol(ready=cond("Ready", "True", "KeysFound", "2 keys in 1 Secret")),
            "Healthy",
            "Ready=True (KeysFound): 2 keys in 1 Secret",
        ),
        (
            cpol(ready=cond("Ready", "False", "SecretNotLabelled", "label it")),
            "Degraded",
            "Ready=False (SecretNotLabelled): label it",
        ),
        (cpol(ready=cond("Ready", "Unknown")), "Progressing", "Ready=Unknown"),
    ],
)
def test_client_policy_health(obj: dict[str, Any], status: str, message: str) -> None:
    got_status, got_message = cpol_health(obj)
    assert got_status == status
    assert message in got_message


def test_docs_show_the_client_policy_script() -> None:
    docs = (ROOT / "docs" / "gitops.md").read_text()
    assert CLIENT_POLICY_LUA in re.findall(r"```lua\n(.*?)```", docs, flags=re.S)
    assert "resource.customizations.health.hedge.dev_ClientPolicy" in docs
