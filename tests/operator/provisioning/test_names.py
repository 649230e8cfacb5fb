"""Model-name conflicts between ModelDeployments: the older claim owns a bare name; the
newer one runs, is told why (Ready=False, ModelNameConflict, an Event) and is served as
`<namespace>/<name>`."""

from __future__ import annotations

from typing import Any

from hedge_operator.config import OperatorConfig
from hedge_operator.provisioning.names import MODEL_NAME_CONFLICT, claim_of, conflict, owners
from hedge_operator.reconcile.reconciler import Reconciler
from tests.operator.factories import body, spec_with
from tests.operator.reconcile.test_reconciler import Clock, FakeKube, ready, settle


def obj(namespace: str, created: str, served: str = "llama", **kw: Any) -> dict[str, Any]:
    out = body(spec_with(model={"name": served}), namespace=namespace, **kw)
    out["metadata"]["creationTimestamp"] = created
    return out


OLD = obj("team-a", "2026-01-01T00:00:00Z")
NEW = obj("team-b", "2026-02-01T00:00:00Z", uid="uid-2")


def test_the_oldest_claim_owns_a_name() -> None:
    old, new = claim_of(OLD), claim_of(NEW)
    assert old is not None and new is not None
    assert owners([new, old])["llama"] == old
    assert conflict(old, [new]) is None
    problem = conflict(new, [old])
    assert problem is not None and problem.reason == MODEL_NAME_CONFLICT
    assert "model name 'llama' is already served by team-a/llama" in problem.message
    assert "serves it only as team-b/llama" in problem.message


def test_adapters_claim_names_too_and_ties_go_by_namespace() -> None:
    adapter = obj("team-c", "2026-01-01T00:00:00Z", served="other")
    adapter["spec"]["adapters"] = [{"name": "llama", "source": "hf://org/lora"}]
    claim = claim_of(adapter)
    assert claim is not None and claim.names == {"other", "llama"}
    old = claim_of(OLD)
    assert old is not None
    # Same second: team-a < team-c.
    problem = conflict(claim, [old])
    assert problem is not None and "'llama'" in problem.message and "'other'" not in problem.message


def test_deleted_and_invalid_objects_claim_nothing() -> None:
    deleting = obj("team-a", "2026-01-01T00:00:00Z")
    deleting["metadata"]["deletionTimestamp"] = "2026-03-01T00:00:00Z"
    assert claim_of(deleting) is None
    assert claim_of(deleting, deleting=True) is not None
    invalid = obj("team-a", "2026-01-01T00:00:00Z")
    invalid["spec"]["model"]["source"] = "ftp://x/y"
    assert claim_of(invalid) is None


async def test_the_newer_claimant_runs_but_is_not_ready_and_says_why() -> None:
    kube = FakeKube()
    reconciler = Reconciler(
        kube, OperatorConfig(), clock=Clock(), now=lambda: "2026-05-01T12:00:00Z"
    )
    old = claim_of(OLD)
    assert old is not None
    reconciler.claims = lambda: [old]
    new = dict(NEW)
    outcome = await settle(reconciler, kube, new)
    assert outcome.problem is None  # nothing blocks the pods: they serve the qualified name
    assert any(k == "Deployment" for _, k, _ in kube.writes())
    assert ready(outcome) == ("False", MODEL_NAME_CONFLICT)
    # Only a person can settle it: kstatus (Flux) reads Stalled, not Reconciling.
    stalled = next(c for c in outcome.status["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", MODEL_NAME_CONFLICT)
    warnings = [e for e in kube.events if e[1] == MODEL_NAME_CONFLICT]
    assert warnings and warnings[0][0] == "Warning" and "team-a/llama" in warnings[0][2]

    # The older one goes: the name is free, the condition follows.
    reconciler.claims = lambda: []
    outcome = await settle(reconciler, kube, new)
    assert ready(outcome)[1] != MODEL_NAME_CONFLICT
    stalled = next(c for c in outcome.status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "False"


def test_the_operator_index_parses_each_object_once_per_version() -> None:
    from hedge_operator.handlers import Indexes

    a, b = dict(OLD), dict(NEW)
    a["metadata"] = {**a["metadata"], "resourceVersion": "1"}
    b["metadata"] = {**b["metadata"], "resourceVersion": "1"}
    models = {("team-a", "llama"): [a], ("team-b", "llama"): [b]}
    indexes = Indexes(models, {}, {}, {}, {}, {})
    first = indexes.claims()
    assert {(c.namespace, c.names) for c in first} == {
        ("team-a", frozenset({"llama"})),
        ("team-b", frozenset({"llama"})),
    }
    assert indexes.claims()[0] is first[0]  # cached: same version, same claim
    assert indexes.sharing_names(("team-a", "llama"), a) == [("team-b", "llama")]
    # A deleted owner still tells who shares its names (they may take the name now).
    gone = {**a, "metadata": {**a["metadata"], "deletionTimestamp": "2026-03-01T00:00:00Z"}}
    del models[("team-a", "llama")]
    assert indexes.sharing_names(("team-a", "llama"), gone) == [("team-b", "llama")]
    assert len(indexes.claims()) == 1
