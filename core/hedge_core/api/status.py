"""The ModelDeployment's status types (what the CRD's status schema is generated from)."""

# ruff: noqa: RUF009

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hedge_core.api.schema import prop


@dataclass(frozen=True, kw_only=True)
class Condition:
    """One aspect of the ModelDeployment's state."""

    type: str = prop(
        "Condition type: Ready, Progressing, Degraded, and kstatus' Reconciling and Stalled "
        "(what Flux and Helm read).",
        maxLength=64,
    )
    status: Literal["True", "False", "Unknown"] = prop("True, False or Unknown.")
    reason: str = prop("One CamelCase word saying why.", maxLength=128)
    message: str = prop("Details for humans.", maxLength=4096)
    last_transition_time: str = prop("When status last changed.", format="date-time", maxLength=64)
    observed_generation: int = prop(
        "metadata.generation this condition was computed from.",
        minimum=0,
        format="int64",
    )


@dataclass(frozen=True, kw_only=True)
class AutoscalingStatus:
    """The autoscaler's last decision."""

    desired_replicas: int | None = prop(
        "Replicas the autoscaler asks for (the engine Deployments follow it).", default=None
    )
    demand: float | None = prop(
        "Requests in flight, averaged over the stable window, summed over the gateways.",
        default=None,
    )
    reason: str | None = prop(
        "Why, in one word (ScaleUp, PanicScaleUp, ScaleDown, ScaleToZero, WakeFromZero, "
        "Steady, ScaleDownDelayed, PodsStarting, NoMetrics).",
        default=None,
        maxLength=64,
    )
    message: str | None = prop("The decision with its numbers.", default=None, maxLength=1024)
    last_scale_time: str | None = prop(
        "When the replica count last changed.", default=None, format="date-time", maxLength=64
    )
    last_request_time: str | None = prop(
        "When a request for the model last arrived (scale to zero counts from here).",
        default=None,
        format="date-time",
        maxLength=64,
    )


@dataclass(frozen=True, kw_only=True)
class FallbackBudgetStatus:
    """What the fallback spent in the current windows, summed over the gateways."""

    minute_start: str | None = prop(
        "Start of the current minute window.", default=None, format="date-time", maxLength=64
    )
    minute_tokens: int | None = prop("Tokens spent in it.", default=None, minimum=0, format="int64")
    day_start: str | None = prop(
        "Start of the current UTC day.", default=None, format="date-time", maxLength=64
    )
    day_tokens: int | None = prop("Tokens spent in it.", default=None, minimum=0, format="int64")
    exhausted_until: str | None = prop(
        "Set while a budget is spent: when the window turns and spilling resumes.",
        default=None,
        format="date-time",
        maxLength=64,
    )


@dataclass(frozen=True, kw_only=True)
class RevisionMetrics:
    """What the gateways measured for one revision during a canary step."""

    requests: int = prop("Requests served.", minimum=0, format="int64")
    error_rate_percent: float | None = prop(
        "Engine errors per 100 requests (client errors excluded).", default=None
    )
    ttft_mean_seconds: float | None = prop("Mean time to first token.", default=None)
    itl_mean_seconds: float | None = prop("Mean inter-token latency.", default=None)


@dataclass(frozen=True, kw_only=True)
class AnalysisStatus:
    """The last judgement of the canary."""

    time: str = prop("When it was made.", format="date-time", maxLength=64)
    verdict: Literal["Pass", "Fail", "Inconclusive"] = prop(
        "Pass promotes to the next step, Fail aborts, Inconclusive waits for more requests."
    )
    message: str = prop("The comparison with its numbers.", maxLength=1024)
    canary: RevisionMetrics | None = prop("The canary revision.", default=None)
    stable: RevisionMetrics | None = prop("The stable revision.", default=None)


@dataclass(frozen=True, kw_only=True)
class RolloutStatus:
    """Where the rollout of a new revision stands. The state lives here (not in the
    operator's memory), so a restarted operator carries on from it."""

    strategy: str | None = prop("RollingUpdate or Canary.", default=None, maxLength=32)
    stable_revision: str | None = prop(
        "The revision serving most of the traffic.", default=None, maxLength=64
    )
    canary_revision: str | None = prop(
        "The revision being rolled out, while a canary runs.", default=None, maxLength=64
    )
    step: int | None = prop("Canary step (1-based; 0 before the first).", default=None, minimum=0)
    canary_weight: int | None = prop(
        "Percent of the traffic the gateways send to the canary revision.",
        default=None,
        minimum=0,
        maximum=100,
    )
    step_start_time: str | None = prop(
        "When the current step began sending traffic.",
        default=None,
        format="date-time",
        maxLength=64,
    )
    paused: bool | None = prop("Held at the current step by a person.", default=None)
    aborted_revision: str | None = prop(
        "A revision whose rollout was aborted: it stays aborted until the spec changes again "
        "or a retry is asked for.",
        default=None,
        maxLength=64,
    )
    abort_reason: str | None = prop("Why it was aborted.", default=None, maxLength=1024)
    last_analysis: AnalysisStatus | None = prop("The last judgement.", default=None)
    handled_commands: dict[str, str] = prop(
        "The command annotations already acted on (promote, abort, retry -> the value seen), "
        "so each value acts once.",
        default_factory=dict,
        maxProperties=8,
    )


@dataclass(frozen=True, kw_only=True)
class ModelDeploymentStatus:
    """Observed state, for kubectl, Argo CD and Flux."""

    observed_generation: int | None = prop(
        "metadata.generation the status describes.", default=None, format="int64"
    )
    replicas: int | None = prop("Engine pods, all revisions.", default=None)
    ready_replicas: int | None = prop("Ready engine pods, all revisions.", default=None)
    updated_replicas: int | None = prop("Engine pods at the current revision.", default=None)
    available_replicas: int | None = prop(
        "Ready engine pods at the current revision.", default=None
    )
    selector: str | None = prop(
        "Label selector of the engine pods (for the scale subresource).",
        default=None,
        maxLength=1024,
    )
    revision: str | None = prop(
        "Current revision: hash of the engine pod template.", default=None, maxLength=64
    )
    served_model: str | None = prop("Model name clients send.", default=None, maxLength=128)
    url: str | None = prop(
        "In-cluster OpenAI-compatible base URL of the engine Service.",
        default=None,
        maxLength=512,
    )
    fallback: str | None = prop("Fallback provider types, in order.", default=None, maxLength=256)
    autoscaling: AutoscalingStatus | None = prop(
        "The autoscaler's last decision (with spec.autoscaling).", default=None
    )
    fallback_budget: FallbackBudgetStatus | None = prop(
        "Fallback spending (with spec.fallback.budget).", default=None
    )
    rollout: RolloutStatus | None = prop("Where the rollout stands.", default=None)
    conditions: list[Condition] = prop(
        "Ready, Progressing, Degraded, Reconciling and Stalled.",
        default_factory=list,
        maxItems=16,
        list_map_keys=("type",),
    )
