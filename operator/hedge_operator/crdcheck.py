"""Pure: whether the installed ModelDeployment CRD is the one this binary was built for.

Helm installs CRDs but never upgrades them, so after `helm upgrade` an operator (or gateway)
with a newer API can run against an older schema: the API server then prunes fields it does
not know, silently. `hedge operator` reads the CRD once at start and logs an error (and sets
`hedge_operator_crd_current` to 0) when the installed schema lacks a field of its own.
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


def field_paths(schema: Any, prefix: str = "") -> frozenset[str]:
    """Every field path of a structural schema (`spec.serving.allowFrom[].podLabels`): what
    the API server prunes by. Descriptions, defaults and rules are left out: the API server
    may normalise those, and a missing field is what loses data."""
    if not isinstance(schema, dict):
        return frozenset()
    out: set[str] = set()
    for name, sub in (schema.get("properties") or {}).items():
        path = f"{prefix}.{name}" if prefix else str(name)
        out.add(path)
        out |= field_paths(sub, path)
    items = schema.get("items")
    if isinstance(items, dict):
        out |= field_paths(items, f"{prefix}[]")
    return frozenset(out)


def skew(installed: Mapping[str, Any] | None) -> str | None:
    """None when the installed CRD serves this binary's schema; else what differs."""
    if installed is None:
        return "the ModelDeployment CRD is not installed"
    have = _schema(installed)
    if have is None:
        return f"the installed ModelDeployment CRD has no version {VERSION}"
    missing = sorted(field_paths(_schema(crd())) - field_paths(have))
    if missing:
        shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
        return (
            f"the installed ModelDeployment CRD ({VERSION}) is older than this operator: it "
            f"lacks {shown}, which the API server would drop (Helm does not upgrade CRDs): "
            "apply this release's crds/ with `kubectl apply --server-side -f crds/`"
        )
    return None
