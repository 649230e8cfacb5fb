"""values.yaml documents every value (helm-docs `# --`), and values.schema.json is strict."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.chart.chart_support import CHART

VALUES_TEXT = (CHART / "values.yaml").read_text()
VALUES = yaml.safe_load(VALUES_TEXT)
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_]+):(?P<rest>.*)$")


def documented_keys(text: str) -> dict[str, bool]:
    """Dotted path of every key in a values file -> whether a `# --` comment sits right above
    it (helm-docs reads the comment block directly above a key, continuation lines included)."""
    result: dict[str, bool] = {}
    stack: list[tuple[int, str]] = []
    comment_block: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment_block.append(stripped)
            continue
        if not stripped:
            comment_block = []
            continue
        match = KEY_LINE.match(line)
        if match is None:  # list items and flow values belong to the key above
            comment_block = []
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        path = ".".join(key for _, key in stack)
        result[path] = any(c.startswith("# --") for c in comment_block[:1])
        comment_block = []
    return result


def leaves_needing_docs(
    values: dict[str, Any], documented: dict[str, bool], prefix: str = ""
) -> list[str]:
    """Keys without a `# --` comment whose value is not a map of documented keys."""
    missing = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if documented.get(path):
            continue
        if isinstance(value, dict) and value:
            missing += leaves_needing_docs(value, documented, f"{path}.")
        else:
            missing.append(path)
    return missing


def test_every_value_has_a_helm_docs_comment() -> None:
    documented = documented_keys(VALUES_TEXT)
    assert documented["image.repository"] and documented["watchNamespaces"]
    assert leaves_needing_docs(VALUES, documented) == []


def test_the_doc_check_catches_an_undocumented_value() -> None:
    text = "a:\n  # -- documented\n  b: 1\n  c: 2\n# plain comment, not helm-docs\nd: 3\n"
    assert leaves_needing_docs(yaml.safe_load(text), documented_keys(text)) == ["a.c", "d"]


def _object_nodes(node: Any, path: str = "$") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(node, dict):
        if node.get("type") == "object":
            found.append((path, node))
        for key, child in node.items():
            if key == "properties":
                for name, prop in child.items():
                    found += _object_nodes(prop, f"{path}.{name}")
            elif isinstance(child, dict | list):
                found += _object_nodes(child, f"{path}/{key}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            found += _object_nodes(child, f"{path}[{i}]")
    return found


def test_schema_closes_every_object_or_says_why_not() -> None:
    """Objects with named fields reject unknown keys; free-form maps type their values; the
    only open objects are Kubernetes types that the API server validates, marked so."""
    nodes = _object_nodes(SCHEMA)
    assert len(nodes) > 40
    for path, node in nodes:
        if path == "$.global":
            continue  # Helm's own key: an umbrella chart passes its globals down, whatever they are
        if "properties" in node:
            assert node.get("additionalProperties") is False, path
        elif isinstance(node.get("additionalProperties"), dict):
            assert node["additionalProperties"], path  # a map of typed values
        else:
            assert "validated by the API server" in node.get("$comment", ""), path


def _schema_paths(node: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for name, prop in node.get("properties", {}).items():
        paths.add(prefix + name)
        kubernetes_type = prop.get("description", "").startswith("Kubernetes ")
        if "properties" in prop and prop.get("type") == "object" and not kubernetes_type:
            paths |= _schema_paths(prop, f"{prefix}{name}.")
    return paths


def _values_paths(values: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for key, value in values.items():
        paths.add(prefix + key)
        sub = schema.get("properties", {}).get(key, {})
        kubernetes_type = sub.get("description", "").startswith("Kubernetes ")
        if isinstance(value, dict) and "properties" in sub and not kubernetes_type:
            paths |= _values_paths(value, sub, f"{prefix}{key}.")
    return paths


def test_schema_and_values_list_the_same_keys() -> None:
    """Every value is in the schema (else helm would reject the defaults) and every Hedge key of
    the schema has a default in values.yaml (else it would be undocumented). The optional fields
    of Kubernetes types (securityContext, resources…) need no default."""
    schema_paths = _schema_paths(SCHEMA) - {"global"}  # Helm's own key, shared with subcharts
    values_paths = _values_paths(VALUES, SCHEMA)
    assert schema_paths == values_paths


@pytest.mark.parametrize("section", ["operator", "gateway"])
def test_operator_and_gateway_share_their_pod_settings(section: str) -> None:
    common = {
        "replicaCount", "extraArgs", "extraEnv", "serviceAccount", "resources",
        "podSecurityContext", "securityContext", "livenessProbe", "readinessProbe",
        "podAnnotations", "podLabels", "nodeSelector", "tolerations", "affinity",
        "priorityClassName",
    }  # fmt: skip
    assert common <= set(VALUES[section])
