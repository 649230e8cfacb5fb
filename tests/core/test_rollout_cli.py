"""`hedge rollout` / `kubectl hedge rollout`: the annotation each command writes and the
status it prints (the API calls are exercised on the local cluster, tests/e2e)."""

from __future__ import annotations

from typing import Any

import pytest

from hedge_core.rollout_cli import RolloutCommandError, command, describe, kubectl_main

NOW = "20260501T120000Z"
STABLE, CANARY = "aaaaaaaaaa", "bbbbbbbbbb"


def body(rollout: dict[str, Any], *, generation: int = 2, observed: int = 2) -> dict[str, Any]:
    return {
        "metadata": {"name": "llama", "namespace": "team-a", "generation": generation},
        "spec": {
            "rollout": {
                "strategy": "Canary",
                "steps": [{"weight": 20, "pauseSeconds": 30}, {"weight": 50}],
            }
        },
        "status": {
            "observedGeneration": observed,
            "revision": CANARY,
            "replicas": 4,
            "readyReplicas": 4,
            "rollout": rollout,
            # As the API server holds them: the CRD requires every field of a condition.
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "RollingOut",
                    "message": "1/4",
                    "lastTransitionTime": "2026-05-01T11:59:30Z",
                    "observedGeneration": observed,
                },
                {
                    "type": "Progressing",
                    "status": "True",
                    "reason": "RollingOut",
                    "message": "step 1 of 2",
                    "lastTransitionTime": "2026-05-01T11:59:30Z",
                    "observedGeneration": observed,
                },
            ],
        },
    }


IN_STEP = {
    "strategy": "Canary",
    "stableRevision": STABLE,
    "canaryRevision": CANARY,
    "step": 1,
    "canaryWeight": 20,
    "stepStartTime": "2026-05-01T11:59:30.000Z",
}
ABORTED = {
    "strategy": "Canary",
    "stableRevision": STABLE,
    "abortedRevision": CANARY,
    "abortReason": "canary error rate 30.0% (9 of 30) reached the tripwire 20.0%",
}


@pytest.mark.parametrize(
    ("action", "annotations"),
    [
        ("pause", {"hedge.dev/pause": CANARY}),
        ("resume", {"hedge.dev/pause": None}),
        ("promote", {"hedge.dev/promote": f"{CANARY}/{NOW}"}),
        ("abort", {"hedge.dev/abort": f"{CANARY}/{NOW}"}),
    ],
)
def test_commands_name_the_revision_being_rolled_out(
    action: str, annotations: dict[str, str | None]
) -> None:
    patch, note = command(action, body(IN_STEP), NOW)
    assert patch == annotations
    assert note.startswith("team-a/llama: ")


def test_retry_is_for_an_aborted_revision() -> None:
    patch, _ = command("retry", body(ABORTED), NOW)
    assert patch == {"hedge.dev/retry": f"{CANARY}/{NOW}"}
    with pytest.raises(RolloutCommandError, match="was not aborted"):
        command("retry", body(IN_STEP), NOW)


def test_commands_without_a_rollout_in_progress_are_refused() -> None:
    with pytest.raises(RolloutCommandError, match=r"was aborted \(canary error rate 30\.0%"):
        command("promote", body(ABORTED), NOW)
    stable = {"strategy": "Canary", "stableRevision": CANARY}
    with pytest.raises(RolloutCommandError, match="is stable; to hold the next rollout"):
        command("pause", body(stable), NOW)


def test_a_spec_the_operator_has_not_seen_is_refused_not_misdirected() -> None:
    with pytest.raises(RolloutCommandError, match="not reported generation 3"):
        command("promote", body(IN_STEP, generation=3, observed=2), NOW)


def test_resume_says_when_the_spec_still_pauses() -> None:
    b = body(IN_STEP)
    b["spec"]["rollout"]["paused"] = True
    _, note = command("resume", b, NOW)
    assert "spec.rollout.paused is still true" in note


def test_status_text() -> None:
    text = describe(body({**IN_STEP, "paused": True}))
    assert text.splitlines()[0] == "team-a/llama  (Canary)"
    assert f"rolling out   {CANARY} over {STABLE}; 4/4 pods ready" in text
    assert (
        "step          1 of 2: 20% of the traffic to the canary since 2026-05-01T11:59:30" in text
    )
    assert "steps         20% for 30s, 50% for 60s" in text
    assert "paused        yes" in text
    assert "Progressing   True (RollingOut): step 1 of 2" in text
    aborted = describe(body(ABORTED))
    assert f"aborted       {CANARY}: canary error rate 30.0%" in aborted


def test_the_kubectl_plugin_parses_like_kubectl_argo_rollouts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        kubectl_main(["rollout", "promote", "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("usage: kubectl hedge rollout promote")
    with pytest.raises(SystemExit):
        kubectl_main(["rollout", "promote"])  # NAME is required
    assert "required: NAME" in capsys.readouterr().err
