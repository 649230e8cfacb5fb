"""Pure planning: desired children + observed children -> the writes to make.

How many pods each revision gets is the rollout state machine's answer
(`hedge_operator.rollout.decide`); this module turns it into writes: the spec's revision is
applied whole, older revisions are scaled (or deleted once at zero), and each revision with
pods has its headless Service so the gateway can tell the revisions apart.

A second reconcile with nothing changed plans nothing: each applied child carries a hash of
what was applied (`hedge.dev/applied-hash`), and a child is re-applied only when that hash
differs (the spec changed) or when the live object no longer contains what was applied
(someone edited or deleted it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from hedge_core.api import REVISION_LABEL, ModelDeployment, ModelDeploymentStatus
from hedge_core.statuses import read
from hedge_operator.config import OperatorConfig
from hedge_operator.events import Event
from hedge_operator.provisioning.builders import (
    build_cache_pvc,
    build_engine_deployment,
    build_network_policy,
    build_pdb,
    build_revision_service,
    build_service,
    content_hash,
    pvc_claims,
)
from hedge_operator.provisioning.observed import Observed

APPLIED_HASH = "hedge.dev/applied-hash"


@dataclass(frozen=True)
class Apply:
    """Server-side apply of a whole child. `why` is create, update or repair."""

    manifest: Mapping[str, Any]
    why: str

    @property
    def key(self) -> tuple[str, str]:
        return (str(self.manifest["kind"]), str(self.manifest["metadata"]["name"]))


@dataclass(frozen=True)
class Scale:
    """Set spec.replicas of an old revision's Deployment (its template is not re-applied)."""

    name: str
    replicas: int

    @property
    def key(self) -> tuple[str, str]:
        return ("Deployment", self.name)


@dataclass(frozen=True)
class Delete:
    api_version: str
    kind: str
    name: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.name)


Action = Apply | Scale | Delete


@dataclass(frozen=True)
class Desired:
    revision: str
    #: The spec's Deployment, the Service, the PDB[, the PVC], then each revision's Service.
    children: Sequence[Mapping[str, Any]]
    #: Pods per revision (the spec's revision included); a revision not listed has none.
    replicas: Mapping[str, int]
    #: Claims the spec mounts (cache.existingClaim, pvc:// sources): never deleted, even
    #: when an earlier `cache: {size}` created (and owns) one of them.
    named_claims: frozenset[str] = frozenset()


def desired_children(
    md: ModelDeployment, config: OperatorConfig, replicas: Mapping[str, int] | None = None
) -> Desired:
    """The children for `replicas` pods per revision, as the rollout decided (default: every
    pod at the spec's revision, spec.replicas of them)."""
    deployment = build_engine_deployment(md, config)
    revision = str(deployment["metadata"]["labels"][REVISION_LABEL])
    wanted = dict(replicas) if replicas is not None else {revision: md.spec.replicas}
    wanted.setdefault(revision, 0)
    deployment["spec"]["replicas"] = wanted[revision]
    children = [deployment, build_service(md), build_pdb(md)]
    if config.network_policy is not None:
        children.append(build_network_policy(md, config.network_policy))
    pvc = build_cache_pvc(md)
    if pvc is not None:
        children.append(pvc)
    for name in sorted(wanted, key=lambda r: (r != revision, r)):
        if name == revision or wanted[name] > 0:
            children.append(build_revision_service(md, name))
    named = set(pvc_claims(md))
    if md.spec.cache is not None and md.spec.cache.existing_claim:
        named.add(md.spec.cache.existing_claim)
    return Desired(
        revision=revision,
        children=[with_applied_hash(c) for c in children],
        replicas=wanted,
        named_claims=frozenset(named),
    )


def with_applied_hash(manifest: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(manifest)
    meta = dict(out["metadata"])
    meta["annotations"] = {
        **(meta.get("annotations") or {}),
        APPLIED_HASH: content_hash(manifest, 16),
    }
    out["metadata"] = meta
    return out


# ------------------------------------------------------------------------ drift detection

_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")
_SUFFIX: dict[str, Decimal | int] = {
    "": 1,
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def quantity_value(value: Any) -> Decimal | None:
    """A Kubernetes quantity as a number (the API server canonicalises `1000m` to `1`)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    m = _QUANTITY.match(str(value))
    if m is None or m.group(2) not in _SUFFIX:
        return None
    try:
        return Decimal(m.group(1)) * Decimal(_SUFFIX[m.group(2)])
    except InvalidOperation:
        return None


def _same_scalar(want: Any, have: Any) -> bool:
    if want == have:
        return True
    if isinstance(want, int | str) and isinstance(have, int | str):
        a, b = quantity_value(want), quantity_value(have)
        return a is not None and a == b
    return False


def contains(want: Any, have: Any) -> bool:
    """Whether the live object `have` still holds everything applied in `want` (the API
    server adds defaults, so extra fields in `have` are fine; lists must match item by item)."""
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(
            k in have and contains(v, have[k]) for k, v in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(want) == len(have)
            and all(contains(w, h) for w, h in zip(want, have, strict=True))
        )
    return _same_scalar(want, have)


def why_apply(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> str | None:
    if live is None:
        return "create"
    live_hash = ((live.get("metadata") or {}).get("annotations") or {}).get(APPLIED_HASH)
    if live_hash != desired["metadata"]["annotations"][APPLIED_HASH]:
        return "update"
    if not contains(_applied_part(desired), live):
        return "repair"
    return None


def _applied_part(manifest: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in manifest.items() if k not in ("apiVersion", "kind")}


# ---------------------------------------------------------------------------- the planner


def plan(
    desired: Desired,
    observed: Observed,
    *,
    in_flight: Mapping[tuple[str, str], str] | None = None,
) -> list[Action]:
    """The writes that take `observed` to `desired`.

    `in_flight` maps (kind, name) to the applied hash (or "delete") of writes made so
    recently that the watch may not show them yet; they are not repeated.
    """
    in_flight = in_flight or {}
    actions: list[Action] = []
    for child in desired.children:
        kind, name = str(child["kind"]), str(child["metadata"]["name"])
        live = observed.by_kind(kind).get(name)
        why = why_apply(child, live)
        if why is None:
            continue
        if in_flight.get((kind, name)) == child["metadata"]["annotations"][APPLIED_HASH]:
            continue
        actions.append(Apply(child, why))

    # Other revisions: scaled as the rollout decided, deleted at zero (their pods may still be
    # terminating; the garbage collector removes them, and they keep counting as GPUs held).
    olds = [d for d in observed.deployment_summaries() if d.revision != desired.revision]
    for old in olds:
        target = desired.replicas.get(old.revision, 0)
        if target == 0:
            if in_flight.get(("Deployment", old.name)) != "delete":
                actions.append(Delete("apps/v1", "Deployment", old.name))
        elif target != old.spec_replicas and (
            in_flight.get(("Deployment", old.name)) != f"scale:{target}"
        ):
            actions.append(Scale(old.name, target))

    # Services of revisions that have no pods to serve any more.
    wanted_services = {
        str(c["metadata"]["name"]) for c in desired.children if c["kind"] == "Service"
    }
    for name, svc in observed.services.items():
        labels = (svc.get("metadata") or {}).get("labels") or {}
        if (
            REVISION_LABEL in labels
            and name not in wanted_services
            and in_flight.get(("Service", name)) != "delete"
        ):
            actions.append(Delete("v1", "Service", name))

    actions += _unwanted(desired, observed, in_flight)
    return actions


def _unwanted(
    desired: Desired, observed: Observed, in_flight: Mapping[tuple[str, str], str]
) -> list[Action]:
    """NetworkPolicies the operator no longer writes (--no-network-policy) and cache claims
    the spec no longer asks for (nor mounts under another role)."""

    def wanted(kind: str) -> set[str]:
        return {str(c["metadata"]["name"]) for c in desired.children if c["kind"] == kind}

    out: list[Action] = []
    for name in observed.netpols:
        if name not in wanted("NetworkPolicy") and in_flight.get(("NetworkPolicy", name)) != (
            "delete"
        ):
            out.append(Delete("networking.k8s.io/v1", "NetworkPolicy", name))
    claims = desired.named_claims | wanted("PersistentVolumeClaim")
    for name in observed.pvcs:
        if name not in claims and in_flight.get(("PersistentVolumeClaim", name)) != "delete":
            out.append(Delete("v1", "PersistentVolumeClaim", name))
    return out


def in_flight_token(action: Action) -> str:
    """What `plan` compares against `in_flight` for this action."""
    if isinstance(action, Apply):
        return str(action.manifest["metadata"]["annotations"][APPLIED_HASH])
    if isinstance(action, Scale):
        return f"scale:{action.replicas}"
    return "delete"


def drift_events(
    actions: Sequence[Action], previous: Mapping[str, Any], generation: int
) -> list[Event]:
    """Repairs of children changed or deleted by someone else, once this generation had been
    reconciled (creating children for a new spec is not drift)."""
    was = read(ModelDeploymentStatus, previous)
    settled = was.observed_generation == generation
    events: list[Event] = []
    for action in actions:
        if not isinstance(action, Apply):
            continue
        kind, name = action.key
        if action.why == "repair":
            events.append(
                Event(
                    "Normal",
                    "DriftRepaired",
                    f"restored {kind} {name} (changed outside the operator)",
                )
            )
        elif (
            action.why == "create"
            and settled
            and (
                kind != "Deployment"
                or was.revision == action.manifest["metadata"]["labels"].get("hedge.dev/revision")
            )
        ):
            # A new revision's Deployment is not drift; the current one missing is.
            events.append(
                Event(
                    "Normal",
                    "DriftRepaired",
                    f"recreated {kind} {name} (deleted outside the operator)",
                )
            )
    return events
