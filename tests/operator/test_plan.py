"""Planning writes: idempotence, drift repair, rolling between revisions."""

from __future__ import annotations

from typing import Any

from hedge_operator.config import OperatorConfig
from hedge_operator.observed import Observed, summarize_deployment
from hedge_operator.plan import (
    APPLIED_HASH,
    Apply,
    Delete,
    Desired,
    Scale,
    contains,
    desired_children,
    old_revision_replicas,
    plan,
    quantity_value,
)
from tests.operator.factories import as_served, deployment_body, model, spec_with

CONFIG = OperatorConfig()


def observe(*objects: dict[str, Any]) -> Observed:
    by_kind: dict[str, dict[str, Any]] = {
        "Deployment": {},
        "Service": {},
        "PodDisruptionBudget": {},
        "PersistentVolumeClaim": {},
    }
    for obj in objects:
        by_kind[obj["kind"]][obj["metadata"]["name"]] = obj
    return Observed(
        deployments=by_kind["Deployment"],
        services=by_kind["Service"],
        pdbs=by_kind["PodDisruptionBudget"],
        pvcs=by_kind["PersistentVolumeClaim"],
    )


def served(desired: Desired, **kwargs: Any) -> list[dict[str, Any]]:
    return [as_served(c, **kwargs) for c in desired.children]


def test_first_plan_creates_every_child() -> None:
    md = model(spec_with(cache={"size": "50Gi"}))
    desired = desired_children(md, CONFIG)
    actions = plan(desired, Observed(), desired_replicas=1)
    assert [(type(a).__name__, a.key, getattr(a, "why", None)) for a in actions] == [
        ("Apply", ("Deployment", f"llama-{desired.revision}"), "create"),
        ("Apply", ("Service", "llama"), "create"),
        ("Apply", ("PodDisruptionBudget", "llama"), "create"),
        ("Apply", ("PersistentVolumeClaim", "llama-cache"), "create"),
    ]
    for a in actions:
        assert isinstance(a, Apply)
        assert len(a.manifest["metadata"]["annotations"][APPLIED_HASH]) == 16


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
        assert plan(desired, observe(*served(desired)), desired_replicas=md.spec.replicas) == []
        # Recomputing from the same spec is deterministic.
        again = desired_children(model(spec), CONFIG)
        assert plan(again, observe(*served(desired)), desired_replicas=md.spec.replicas) == []


def test_canonicalised_quantities_are_not_drift() -> None:
    md = model(spec_with(resources={"cpu": "1000m", "memory": "32768Mi"}))
    desired = desired_children(md, CONFIG)
    live = served(desired)
    resources = live[0]["spec"]["template"]["spec"]["containers"][0]["resources"]
    resources["requests"]["cpu"] = "1"
    resources["requests"]["memory"] = "32Gi"
    assert plan(desired, observe(*live), desired_replicas=1) == []


def test_edited_child_is_repaired() -> None:
    desired = desired_children(model(), CONFIG)
    live = served(desired)
    live[0]["spec"]["template"]["spec"]["containers"][0]["image"] = "evil/image:latest"
    live[1]["spec"]["selector"] = {"app": "other"}
    actions = plan(desired, observe(*live), desired_replicas=1)
    assert [(a.key, getattr(a, "why", None)) for a in actions] == [
        (("Deployment", f"llama-{desired.revision}"), "repair"),
        (("Service", "llama"), "repair"),
    ]


def test_scaled_deployment_is_repaired() -> None:
    desired = desired_children(model(), CONFIG)
    live = served(desired)
    live[0]["spec"]["replicas"] = 5
    (action,) = plan(desired, observe(*live), desired_replicas=1)
    assert isinstance(action, Apply) and action.why == "repair"


def test_deleted_child_is_recreated() -> None:
    desired = desired_children(model(), CONFIG)
    live = [c for c in served(desired) if c["kind"] != "PodDisruptionBudget"]
    (action,) = plan(desired, observe(*live), desired_replicas=1)
    assert isinstance(action, Apply)
    assert (action.key, action.why) == (("PodDisruptionBudget", "llama"), "create")


def test_spec_change_updates_children_in_place_when_the_name_stays() -> None:
    before = desired_children(model(spec_with(replicas=1)), CONFIG)
    after = desired_children(model(spec_with(replicas=3)), CONFIG)
    assert before.revision == after.revision  # replicas are not in the template
    (action,) = plan(after, observe(*served(before)), desired_replicas=3)
    assert isinstance(action, Apply) and action.why == "update"
    assert action.manifest["spec"]["replicas"] == 3


def test_in_flight_writes_are_not_repeated() -> None:
    desired = desired_children(model(), CONFIG)
    in_flight = {
        (str(c["kind"]), str(c["metadata"]["name"])): c["metadata"]["annotations"][APPLIED_HASH]
        for c in desired.children
    }
    assert plan(desired, Observed(), desired_replicas=1, in_flight=in_flight) == []


def test_rollout_to_a_new_revision() -> None:
    old_spec = spec_with(replicas=4)
    new_spec = spec_with(replicas=4, engine={"maxModelLen": 4096})
    old = desired_children(model(old_spec), CONFIG)
    new = desired_children(model(new_spec), CONFIG)
    assert old.revision != new.revision
    old_live = served(old)  # 4 ready pods at the old revision
    old_name = f"llama-{old.revision}"
    new_name = f"llama-{new.revision}"

    # The new Deployment is created at full size; the old one keeps serving with
    # maxUnavailable (25%, so one pod here) let go, which frees GPUs for the new pods.
    actions = plan(new, observe(*old_live), desired_replicas=4)
    assert [(a.key, getattr(a, "why", None)) for a in actions] == [
        (("Deployment", new_name), "create"),
        (("Deployment", old_name), None),
    ]
    assert actions[1] == Scale(old_name, 3)

    # Two new pods ready: old keeps 4 - 2 - 1 (maxUnavailable 25%) = 1.
    new_live = as_served(new.children[0], ready=2)
    actions = plan(new, observe(new_live, *old_live[1:], old_live[0]), desired_replicas=4)
    assert actions == [Scale(old_name, 1)]

    # All new pods ready: the old revision goes.
    new_live = as_served(new.children[0], ready=4)
    actions = plan(new, observe(new_live, *old_live[1:], old_live[0]), desired_replicas=4)
    assert actions == [Delete("apps/v1", "Deployment", old_name)]


def test_old_revision_arithmetic() -> None:
    def old(name: str, replicas: int, ready: int, created: str) -> Any:
        return summarize_deployment(
            deployment_body(name, name, spec_replicas=replicas, ready=ready, created=created)
        )

    a = old("a", 4, 4, "2026-01-01T00:00:00Z")
    b = old("b", 2, 2, "2026-01-02T00:00:00Z")
    # Nothing new ready yet: keep availability (4 - 1 = 3), newest old revision first.
    assert old_revision_replicas(4, 0, [a, b]) == {"b": 2, "a": 1}
    assert old_revision_replicas(4, 3, [a, b]) == {"b": 0, "a": 0}
    assert old_revision_replicas(1, 0, [old("c", 1, 1, "x")]) == {"c": 1}
    assert old_revision_replicas(1, 1, [old("c", 1, 1, "x")]) == {"c": 0}
    # A broken old revision (pods not ready) lets go of its pods (and GPUs) at once.
    assert old_revision_replicas(2, 0, [old("d", 2, 0, "x")]) == {"d": 0}
    # Scaling to zero ends every old revision.
    assert old_revision_replicas(0, 0, [old("e", 3, 3, "x")]) == {"e": 0}


def test_cache_claim_no_longer_wanted_is_deleted() -> None:
    with_cache = desired_children(model(spec_with(cache={"size": "50Gi"})), CONFIG)
    without = desired_children(model(), CONFIG)
    assert with_cache.revision != without.revision
    live = served(with_cache)
    actions = plan(without, observe(*live), desired_replicas=1)
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
