"""Pure: who owns a served model name when several ModelDeployments claim it.

A bare model name (the served name or an adapter's) belongs to the oldest ModelDeployment
that claims it — by creation time, then namespace and name, the order the gateway settles
names in. A newer claimant keeps running and is served as `<namespace>/<name>` (and to client
keys bound to its namespace), but not under the bare name: the operator says so with
Ready=False, reason ModelNameConflict, and an Event. No namespace can take another's traffic
by claiming a name first: client keys bound to a namespace resolve names in it alone
(docs/gateway.md, "Tenants").

Re-created objects get no claim back: a delete-and-recreate (Helm reinstall, Argo CD
`Replace=true`, a Velero restore) is a new object, newer than any other claim, so an older
claim in another namespace owns the bare name from then on. Nothing a tenant writes can prove
an earlier claim (an annotation could be forged; the gateways keep no memory that survives a
restart), so the fair rule is the bound key: a key bound to the namespace is served by its
own model before, during and after the re-creation, and never by another namespace's. Served
names that take another namespace's qualified form `<ns>/<name>` are refused outright
(validation, `ReservedModelName`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hedge_core.api import ModelDeployment, SpecError
from hedge_core.contracts import OwnershipKey, created_seconds, ownership_key
from hedge_operator.provisioning.validation import Problem

MODEL_NAME_CONFLICT = "ModelNameConflict"


@dataclass(frozen=True)
class Claim:
    namespace: str
    name: str
    created: float  # unix seconds of metadata.creationTimestamp
    names: frozenset[str]

    @property
    def order(self) -> OwnershipKey:
        return ownership_key(self.created, self.namespace, self.name)


def claim_of(body: Mapping[str, Any], *, deleting: bool = False) -> Claim | None:
    """The names an object claims; None when its spec is invalid (it is routed under no
    name), or when it is being deleted, unless `deleting` asks for what it claimed."""
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp") and not deleting:
        return None
    try:
        md = ModelDeployment.from_body(body)
    except SpecError:
        return None
    names = frozenset({md.served_model, *(a.name for a in md.spec.adapters)})
    created = float(created_seconds(meta.get("creationTimestamp")))
    return Claim(md.namespace, md.name, created, names)


def owners(claims: Iterable[Claim]) -> dict[str, Claim]:
    """Each claimed name's owner."""
    out: dict[str, Claim] = {}
    for claim in sorted(claims, key=lambda c: c.order):
        for name in claim.names:
            out.setdefault(name, claim)
    return out


def conflict(mine: Claim, others: Iterable[Claim]) -> Problem | None:
    """The names `mine` claims that an older ModelDeployment owns, as a Problem."""
    owner_of = owners(
        [mine, *(c for c in others if (c.namespace, c.name) != (mine.namespace, mine.name))]
    )
    lost = sorted(n for n in mine.names if owner_of[n] != mine)
    if not lost:
        return None
    parts = [
        f"model name {n!r} is already served by {owner_of[n].namespace}/{owner_of[n].name}"
        for n in lost
    ]
    qualified = ", ".join(f"{mine.namespace}/{n}" for n in lost)
    return Problem(
        MODEL_NAME_CONFLICT,
        "; ".join(parts) + f": this ModelDeployment serves it only as {qualified} (and to "
        f"client keys bound to namespace {mine.namespace}); rename it to serve the bare name",
    )
