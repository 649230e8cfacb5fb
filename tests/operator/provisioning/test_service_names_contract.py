"""The engine Services the operator builds carry the names the gateway trusts EndpointSlices
by (`hedge_core.contracts`): a slice counts only when its `kubernetes.io/service-name` is
one of them (issue 16, Low: EndpointSlices trusted by label alone)."""

from __future__ import annotations

from hedge_core.contracts import revision_service_name, shared_service_name
from hedge_operator.provisioning.builders import build_revision_service, build_service
from tests.operator.factories import model, spec_with


def test_the_operators_service_names_are_the_contracts() -> None:
    md = model(spec_with())
    assert build_service(md)["metadata"]["name"] == shared_service_name(md.name)
    assert build_revision_service(md, "abc123")["metadata"]["name"] == revision_service_name(
        md.name, "abc123"
    )
