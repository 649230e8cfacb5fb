"""Every CEL rule of the CRD, evaluated by the real API server: each case of
tests/core/cel_cases.py is refused with its rule's own message (server-side dry run, so
nothing is stored), and the valid base is accepted.

All cases go out at once on one client, in one namespace, before the per-case tests read
their answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from hedge_core.api import PLURAL
from hedge_core.kube import ApiError, Kube
from tests.core.cel_cases import BASE_SPEC, CASES, CelCase, manifest
from tests.e2e.conftest import API, E2ECluster, fresh_namespace

DRY_RUN = {"dryRun": "All"}
Answer = dict[str, Any] | ApiError


@pytest.fixture(scope="module")
def cel_namespace(cluster: E2ECluster) -> Iterator[str]:
    yield from fresh_namespace(cluster)


async def _send(kube: Kube, namespace: str, case: CelCase | None) -> Answer:
    collection = f"{API}/namespaces/{namespace}/{PLURAL}"
    try:
        if case is None:
            return dict(
                await kube.request("POST", collection, params=DRY_RUN, body=manifest(BASE_SPEC))
            )
        if not case.transition:
            return dict(await kube.request("POST", collection, params=DRY_RUN, body=case.body()))
        # A transition rule compares with oldSelf: store the object, then update it (dry run).
        created = await kube.request("POST", collection, body=case.before_body())
        try:
            updated = case.body()
            updated["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
            return dict(
                await kube.request("PUT", f"{collection}/{case.name}", params=DRY_RUN, body=updated)
            )
        finally:
            await kube.delete(f"{collection}/{case.name}")
    except ApiError as exc:
        return exc


@pytest.fixture(scope="module")
def answers(cluster: E2ECluster, cel_namespace: str, crd: None) -> dict[str, Answer]:
    """The API server's answer to the base (key "base") and to every case (by id)."""

    async def send_all() -> dict[str, Answer]:
        kube = Kube(str(cluster.kubeconfig), user_agent="hedge-e2e-cel")
        try:
            sent = [None, *CASES]
            results = await asyncio.gather(*(_send(kube, cel_namespace, c) for c in sent))
        finally:
            await kube.close()
        return {("base" if c is None else c.id): r for c, r in zip(sent, results, strict=True)}

    return asyncio.run(send_all())


def test_the_base_is_accepted_and_nothing_is_stored(
    cluster: E2ECluster, cel_namespace: str, answers: dict[str, Answer]
) -> None:
    base = answers["base"]
    assert not isinstance(base, ApiError), base
    assert base["spec"]["model"] == BASE_SPEC["model"]
    assert cluster.get(f"{API}/namespaces/{cel_namespace}/{PLURAL}")["items"] == []


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_each_case_is_refused_with_its_rules_message(
    case: CelCase, answers: dict[str, Answer]
) -> None:
    answer = answers[case.id]
    assert isinstance(answer, ApiError), f"accepted: {case.change}"
    assert (answer.status, answer.reason) == (422, "Invalid"), answer
    # At the rule's place (the first item of a list; the object itself is <nil>), and that
    # rule only: several errors would be listed as "[a, b]".
    field = case.path.replace("[]", "[0]") or "<nil>"
    assert f"{field}: Invalid value: " in answer.message, answer.message
    assert answer.message.endswith(f": {case.message}"), answer.message
    assert answer.message.count(": Invalid value: ") == 1, answer.message
