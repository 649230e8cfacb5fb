"""`hedge rollout status|pause|resume|promote|abort|retry NAME [-n NAMESPACE]`, also installed as
the kubectl plugin `kubectl hedge rollout ...` (the `kubectl-hedge` command).

The commands are annotations on the ModelDeployment that name the revision they are for
(docs/rollouts.md), so `kubectl annotate` and GitOps can give the same ones and a command
never touches a revision it was not meant for:

    pause    hedge.dev/pause=<revision>            held while it names the revision rolled out
    resume   hedge.dev/pause removed
    promote  hedge.dev/promote=<revision>/<when>   each value acts once
    abort    hedge.dev/abort=<revision>/<when>
    retry    hedge.dev/retry=<revision>/<when>     an aborted revision rolls out again

The revision is the spec's current one as the operator last reported it (status.revision),
so a command given before the operator has seen a spec change is refused, not misdirected.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from hedge_core.api import (
    ABORT_ANNOTATION,
    API_VERSION,
    PAUSE_ANNOTATION,
    PLURAL,
    PROMOTE_ANNOTATION,
    RETRY_ANNOTATION,
    ModelDeploymentStatus,
    RolloutStatus,
)
from hedge_core.kube import ApiError, Kube, KubeConfigError, resource_path
from hedge_core.statuses import read

ACTIONS = ("status", "pause", "resume", "promote", "abort", "retry")


class RolloutCommandError(Exception):
    """A command that cannot be given now; the message says why and what to do."""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = "Watch and steer the rollout of a ModelDeployment's new revision."
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    helps = {
        "status": "where the rollout stands (steps, weight, last analysis, conditions)",
        "pause": "hold the rollout at its current step",
        "resume": "let a paused rollout go on",
        "promote": "make the revision being rolled out the stable one now",
        "abort": "roll back: the new revision to zero, its traffic back on the stable one",
        "retry": "roll an aborted revision out again",
    }
    for action in ACTIONS:
        p = sub.add_parser(action, help=helps[action], description=helps[action])
        p.add_argument("name", metavar="NAME", help="the ModelDeployment")
        p.add_argument(
            "-n", "--namespace", help="its namespace (default: the kubeconfig context's)"
        )
        p.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig file(s), as KUBECONFIG")
        if action == "status":
            p.add_argument(
                "-o", "--output", choices=("text", "json"), default="text", help="output format"
            )


def run(args: argparse.Namespace) -> int:
    try:
        out = asyncio.run(_run(args))
    except (RolloutCommandError, KubeConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ApiError as exc:
        print(f"error: the API server answered {exc.status}: {exc.message}", file=sys.stderr)
        return 1
    print(out)
    return 0


def kubectl_main(argv: Sequence[str] | None = None) -> int:
    """The `kubectl-hedge` plugin: `kubectl hedge rollout ACTION NAME [-n NS]`."""
    parser = argparse.ArgumentParser(prog="kubectl hedge", description="Hedge's kubectl plugin.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    configure_parser(sub.add_parser("rollout", help="watch and steer rollouts"))
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    return run(args)


# --------------------------------------------------------------------------------- I/O


async def _run(args: argparse.Namespace) -> str:
    kube = Kube(args.kubeconfig, user_agent="hedge-rollout")
    try:
        creds = await kube.login()
        namespace = args.namespace or creds.namespace or "default"
        path = resource_path(API_VERSION, PLURAL, namespace, args.name)
        body = await kube.request("GET", path, missing_ok=True)
        if body is None:
            raise RolloutCommandError(f"ModelDeployment {namespace}/{args.name} not found")
        if args.action == "status":
            if args.output == "json":
                return json.dumps((body.get("status") or {}).get("rollout") or {}, indent=2)
            return describe(body)
        annotations, note = command(args.action, body, _now())
        await kube.patch(path, {"metadata": {"annotations": annotations}})
        return note
    finally:
        await kube.close()


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")


# ------------------------------------------------------------------------------ pure


def command(action: str, body: Mapping[str, Any], now: str) -> tuple[dict[str, str | None], str]:
    """The annotation patch for `action` on the ModelDeployment `body`, and what to say."""
    meta = body.get("metadata") or {}
    status = read(ModelDeploymentStatus, body.get("status"))
    rollout = status.rollout or RolloutStatus()
    where = f"{meta.get('namespace')}/{meta.get('name')}"
    if status.observed_generation != meta.get("generation") or not status.revision:
        raise RolloutCommandError(
            f"the operator has not reported generation {meta.get('generation')} of {where} "
            "yet, so its revision is not known; try again in a moment"
        )
    revision = status.revision
    in_progress = rollout.canary_revision == revision
    aborted = rollout.aborted_revision == revision
    if action == "resume":
        note = f"{where}: removed {PAUSE_ANNOTATION}"
        if ((body.get("spec") or {}).get("rollout") or {}).get("paused"):
            note += "; spec.rollout.paused is still true, set it to false to resume"
        return {PAUSE_ANNOTATION: None}, note
    if action == "retry":
        if not aborted:
            raise RolloutCommandError(f"revision {revision} of {where} was not aborted")
        value = f"{revision}/{now}"
        return {RETRY_ANNOTATION: value}, f"{where}: {RETRY_ANNOTATION}={value}"
    if not in_progress:
        state = (
            f"was aborted ({rollout.abort_reason}); `retry` rolls it out again"
            if aborted
            else "is stable"
        )
        raise RolloutCommandError(
            f"no rollout of {where} in progress: revision {revision} {state}"
            + ("; to hold the next rollout, set spec.rollout.paused" if action == "pause" else "")
        )
    if action == "pause":
        return {PAUSE_ANNOTATION: revision}, f"{where}: {PAUSE_ANNOTATION}={revision}"
    key = {"promote": PROMOTE_ANNOTATION, "abort": ABORT_ANNOTATION}[action]
    value = f"{revision}/{now}"
    return {key: value}, f"{where}: {key}={value}"


def _steps(spec_rollout: Mapping[str, Any]) -> str:
    steps = spec_rollout.get("steps") or []
    return ", ".join(f"{s.get('weight')}% for {s.get('pauseSeconds', 60)}s" for s in steps)


def describe(body: Mapping[str, Any]) -> str:
    """`hedge rollout status`: the rollout in a few lines."""
    meta = body.get("metadata") or {}
    spec_rollout = (body.get("spec") or {}).get("rollout") or {}
    status = read(ModelDeploymentStatus, body.get("status"))
    r = status.rollout or RolloutStatus()
    strategy = r.strategy or spec_rollout.get("strategy") or "RollingUpdate"
    lines = [f"{meta.get('namespace')}/{meta.get('name')}  ({strategy})"]
    revision, stable = status.revision, r.stable_revision
    ready = f"{status.ready_replicas or 0}/{status.replicas or 0} pods ready"
    if r.canary_revision:
        lines.append(f"  rolling out   {r.canary_revision} over {stable}; {ready}")
        if strategy == "Canary":
            steps = spec_rollout.get("steps") or []
            line = f"  step          {r.step or 0} of {len(steps)}: "
            if r.step:
                line += f"{r.canary_weight or 0}% of the traffic to the canary"
            else:
                line += "the canary's pods are starting (no traffic yet)"
            if r.step_start_time:
                line += f" since {r.step_start_time}"
            lines.append(line)
            lines.append(f"  steps         {_steps(spec_rollout)}")
        lines.append(f"  paused        {'yes' if r.paused else 'no'}")
    else:
        lines.append(f"  stable        {stable or revision}; {ready}")
    if r.aborted_revision:
        lines.append(f"  aborted       {r.aborted_revision}: {r.abort_reason or ''}")
    last = r.last_analysis
    if last:
        lines.append(f"  last analysis {last.verdict} at {last.time}: {last.message}")
    for c in status.conditions:
        if c.type in ("Ready", "Progressing", "Degraded"):
            lines.append(f"  {c.type:<13} {c.status} ({c.reason}): {c.message}")
    return "\n".join(lines)
