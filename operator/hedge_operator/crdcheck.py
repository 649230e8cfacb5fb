"""Pure: whether the installed ModelDeployment CRD is the one this binary was built for.

Helm installs CRDs but never upgrades them, so after `helm upgrade` an operator (or gateway)
with a newer API can run against an older schema: the API server then prunes fields it does
not know, silently. `hedge operator` reads the CRD once at start and logs an error (and sets
`hedge_operator_crd_current` to 0) when the schema of its version differs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hedge_core.api import VERSION
from hedge_core.api.definition import crd


def _schema(body: Mapping[str, Any]) -> Any:
    for version in (body.get("spec") or {}).get("versions") or []:
        if version.get("name") == VERSION:
            return (version.get("schema") or {}).get("openAPIV3Schema")
    return None


def skew(installed: Mapping[str, Any] | None) -> str | None:
    """None when the installed CRD serves this binary's schema; else what differs."""
    if installed is None:
        return "the ModelDeployment CRD is not installed"
    have = _schema(installed)
    if have is None:
        return f"the installed ModelDeployment CRD has no version {VERSION}"
    if have != _schema(crd()):
        return (
            f"the installed ModelDeployment CRD ({VERSION}) is not the one this operator was "
            "built for (Helm does not upgrade CRDs): apply this release's crds/ with "
            "`kubectl apply --server-side -f crds/`"
        )
    return None
