"""Planning writes: idempotence, drift repair, pods per revision as the rollout decided."""

from __future__ import annotations

from typing import Any

from hedge_operator.config import OperatorConfig
from hedge_operator.provisioning.observed import Observed
from hedge_operator.provisioning.plan import (
    APPLIED_HASH,
    Apply,
    Delete,
    Desired,
    Scale,
    contains,
    desired_children,
    plan,
    quantity_value,
)
from tests.operator.factories import as_served, model, spec_with

CONFIG = OperatorConfig()


def observe(*objects: dict[str, Any]) -> Observed:
    by_kind: dict[str, dict[str, Any]] = {
        "Deployment": {},
        "Service": {},
        "PodDisruptionBudget": {},
        "PersistentVolumeClaim": {},
        "NetworkPolicy": {},
    }
    for obj in objects:
        by_kind[obj["kind"]][obj["metadata"]["name"]] = obj
    return Observed(
        deployments=by_kind["Deployment"],
        services=by_kind["Service"],
        pdbs=by_kind["PodDisruptionBudget"],
        pvcs=by_kind["PersistentVolumeClaim"],
        netpols=by_kind["NetworkPolicy"],
    )


def served(desired: Desired, **kwargs: Any) -> list[dict[str, Any]]:
    return [as_served(c, **kwargs) for c in desired.children]


def test_first_plan_creates_every_child() -> None:
    md = model(spec_with(cache={"size": "50Gi"}))
    desired = desired_children(md, CONFIG)
    actions = plan(desired, Observed())
    assert [(type(a).__name__, a.key, getattr(a, "why", None)) for a in actions] == [
        ("Apply", ("Deployment", f"llama-{desired.revision}"), "create"),
        ("Apply", ("Service", "llama"), "create"),
        ("Apply", ("PodDisruptionBudget", "llama"), "create"),
        ("Apply", ("NetworkPolicy", "llama"), "create"),
        ("Apply", ("PersistentVolumeClaim", "llama-cache"), "create"),
        ("Apply", ("Service", f"llama-{desired.revision}"), "create"),
    ]
    for a in actions:
        assert isinstance(a, Apply)
        assert len(a.manifest["metadata"]["annotations"][APPLIED_HASH]) == 16
    # The revision's Service is headless, selects only its pods and carries the revision
    # label the EndpointSlice controller copies onto its slices (the gateway reads it there).
    revision_svc = actions[-1].manifest  # type: ignore[union-attr]
    assert revision_svc["spec"]["clusterIP"] == "None"
    assert revision_svc["spec"]["selector"]["hedge.dev/revision"] == desired.revision
    assert revision_svc["metadata"]["labels"]["hedge.dev/revision"] == desired.revision
    assert revision_svc["metadata"]["labels"]["hedge.dev/model-deployment"] == "llama"


def test_unchanged_observed_state_plans_no_write() -> None:
    for spec in (
        spec_with(),
        spec_with(cache={"size": "50Gi"}, replicas=3, resources={"cpu": "500m"}),
        spec_with(
            adapters=[{"name": "a", "source": "s3://bkt/a"}],
            engine={"env": [{"name": "X", "value": "1"}]},
        ),
    ):
        md = model(spec)
        desired = desired_children(md, CONFIG)
        assert plan(desired, observe(*served(desired))) == []
        # Recomputing from the same spec is deterministic.
        again = desired_children(model(spec), CONFIG)
        assert plan(again, observe(*served(desired))) == []


def test_canonicalised_quantities_are_not_drift() -> None:
    md = model(spec_with(resources={"cpu": "1000m", "memory": "32768Mi"}))
    desired = desired_children(md, CONFIG)
    live = served(desired)
    resources = live[0]["spec"]["template"]["spec"]["containers"][0]["resources"]
    resources["requests"]["cpu"] = "1"
    resources["requests"]["memory"] = "32Gi"
    assert plan(desired, observe(*live)) == []


def test_edited_child_is_repaired() -> None:
    desired = desired_children(model(), CONFIG)
    live = served(desired)
    live[0]["spec"]["template"]["spec"]["containers"][0]["image"] = "evil/image:latest"
    live[1]["spec"]["selector"] = {"app": "other"}
    actions = plan(desired, observe(*live))
    assert [(a.key, getattr(a, "why", None)) for a in actions] == [
        (("Deployment", f"llama-{desired.revision}"), "repair"),
        (("Service", "llama"), "repair"),
    ]


def test_scaled_deployment_is_repaired() -> None:
    desired = desired_children(model(), CONFIG)
    live = served(desired)
    live[0]["spec"]["replicas"] = 5
    (action,) = plan(desired, observe(*live))
    assert isinstance(action, Apply) and action.why == "repair"


def test_deleted_child_is_recreated() -> None:
    desired = desired_children(model(), CONFIG)
    live = [c for c in served(desired) if c["kind"] != "PodDisruptionBudget"]
    (action,) = plan(desired, observe(*live))
    assert isinstance(action, Apply)
    assert (action.key, action.why) == (("PodDisruptionBudget", "llama"), "create")


def test_spec_change_updates_children_in_place_when_the_name_stays() -> None:
    before = desired_children(model(spec_with(replicas=1)), CONFIG)
    after = desired_children(model(spec_with(replicas=3)), CONFIG)
    assert before.revision == after.revision  # replicas are not in the template
    (action,) = plan(after, observe(*served(before)))
    assert isinstance(action, Apply) and action.why == "update"
    assert action.manifest["spec"]["replicas"] == 3


def test_in_flight_writes_are_not_repeated() -> None:
    desired = desired_children(model(), CONFIG)
    in_flight = {
        (str(c["kind"]), str(c["metadata"]["name"])): c["metadata"]["annotations"][APPLIED_HASH]
        for c in desired.children
    }
    assert plan(desired, Observed(), in_flight=in_flight) == []


def test_pods_per_revision_follow_the_rollout() -> None:
    old_spec = spec_with(replicas=4)
    new_spec = spec_with(replicas=4, engine={"maxModelLen": 4096})
    old = desired_children(model(old_spec), CONFIG)
    old_live = served(old)  # 4 ready pods at the old revision, with its Service
    old_name = f"llama-{old.revision}"
    revision = desired_children(model(new_spec), CONFIG).revision
    new_name = f"llama-{revision}"

    # The rollout gives the new revision 1 pod and leaves the old one 3: the new Deployment
    # and its Service are created, the old revision is scaled (its template untouched).
    new = desired_children(model(new_spec), CONFIG, {old.revision: 3, revision: 1})
    actions = plan(new, observe(*old_live))
    assert [(a.key, getattr(a, "why", None)) for a in actions] == [
        (("Deployment", new_name), "create"),
        (("Service", new_name), "create"),
        (("Deployment", old_name), None),
    ]
    assert actions[0].manifest["spec"]["replicas"] == 1  # type: ignore[union-attr]
    assert actions[2] == Scale(old_name, 3)

    # Every pod at the new revision: the old Deployment and its Service go.
    new = desired_children(model(new_spec), CONFIG, {revision: 4})
    new_live = [as_served(c) for c in new.children]
    actions = plan(new, observe(*new_live, old_live[0], old_live[-1]))
    assert actions == [
        Delete("apps/v1", "Deployment", old_name),
        Delete("v1", "Service", old_name),
    ]

    # An aborted spec revision keeps its Deployment, at zero pods.
    new = desired_children(model(new_spec), CONFIG, {old.revision: 4, revision: 0})
    actions = plan(new, observe(*old_live))
    assert [(a.key, getattr(a, "why", None)) for a in actions] == [
        (("Deployment", new_name), "create"),
        (("Service", new_name), "create"),
    ]
    assert actions[0].manifest["spec"]["replicas"] == 0  # type: ignore[union-attr]


def test_cache_claim_no_longer_wanted_is_deleted() -> None:
    with_cache = desired_children(model(spec_with(cache={"size": "50Gi"})), CONFIG)
    without = desired_children(model(), CONFIG)
    assert with_cache.revision != without.revision
    live = served(with_cache)
    actions = plan(without, observe(*live))
    assert Delete("v1", "PersistentVolumeClaim", "llama-cache") in actions


def test_contains_and_quantities() -> None:
    assert contains({"a": {"b": [1, {"c": "x"}]}}, {"a": {"b": [1, {"c": "x", "d": 2}]}, "e": 1})
    assert not contains({"a": [1, 2]}, {"a": [1, 2, 3]})
    assert not contains({"a": "x"}, {})
    assert contains({"cpu": "1000m"}, {"cpu": "1"})
    assert contains({"n": "1"}, {"n": 1})
    assert not contains({"memory": "1Gi"}, {"memory": "1G"})
    assert quantity_value("1.5Gi") == quantity_value("1536Mi")
    assert quantity_value("lots") is None


def test_a_claim_the_spec_now_names_is_never_deleted() -> None:
    """`cache: {size}` made `llama-cache`; the spec then says `existingClaim: llama-cache`
    (or mounts it as a pvc:// source): that claim holds the weights the spec asks for."""
    before = desired_children(model(spec_with(cache={"size": "50Gi"})), CONFIG)
    live = served(before)
    for spec in (
        spec_with(cache={"existingClaim": "llama-cache"}),
        spec_with(model={"source": "pvc://llama-cache/weights", "name": "llama"}),
    ):
        after = desired_children(model(spec), CONFIG)
        actions = plan(after, observe(*live))
        deleted = [a.key for a in actions if isinstance(a, Delete)]
        assert ("PersistentVolumeClaim", "llama-cache") not in deleted, (spec, deleted)
    # a claim nothing names any more still goes
    after = desired_children(model(spec_with(cache=None)), CONFIG)
    actions = plan(after, observe(*live))
    assert ("PersistentVolumeClaim", "llama-cache") in [
        a.key for a in actions if isinstance(a, Delete)
    ]
