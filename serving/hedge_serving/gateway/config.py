"""The static routes file of `hedge gateway --routes`: the routing table without Kubernetes.

```yaml
models:
  - name: llama-3-8b                       # what clients send as `model`
    backends: [http://127.0.0.1:8001, http://127.0.0.1:8002]
    modelDeployment: team-a/llama-3-8b     # optional: whose demand this is (NAMESPACE/NAME)
    requestTimeoutSeconds: 300             # optional (also accepted under `serving:`)
    maxQueueDepth: 16                      # optional (also accepted under `serving:`)
    fallback:                              # a list of providers, tried in order ...
      - {type: openai, model: gpt-4o-mini, apiKeyEnv: OPENAI_API_KEY}
    # ... or the ModelDeployment's shape:
    # fallback: {onUnavailable: true, onOverload: true, onError: true, providers: [...]}
```

Provider keys: `type` (`openai`, `azure-openai`, `anthropic`, `openai-compatible`, or the
CRD's CamelCase spellings), `model`, `baseURL`, `apiKeyEnv` or `apiKeyFile`, `apiVersion`
and `deployment` (Azure), `maxTokens` (Anthropic default), `name` (the
`x-hedge-served-by` value; defaults to the type). Unknown keys are errors.

`modelDeployment` names the ModelDeployment the entry stands for, so the demand series the
operator's autoscaler reads (`hedge_gateway_demand_*`) carry its namespace and name; without
it they carry an empty namespace and the entry's `name` (aliases share the entry's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hedge_serving.gateway.routing import (
    ProviderSpec,
    ProviderType,
    RouteSpec,
    SecretRef,
    ServingOptions,
    normalize_backend_url,
)


class RoutesFileError(ValueError):
    pass


_MODEL_KEYS = {
    "name", "backends", "fallback", "serving", "requestTimeoutSeconds", "maxQueueDepth",
    "aliases", "modelDeployment",
}  # fmt: skip
_SERVING_KEYS = {"requestTimeoutSeconds", "maxQueueDepth"}
_FALLBACK_KEYS = {"onUnavailable", "onOverload", "onError", "providers"}
_PROVIDER_KEYS = {
    "type", "model", "baseURL", "baseUrl", "apiKeyEnv", "apiKeyFile", "apiVersion",
    "deployment", "maxTokens", "name",
}  # fmt: skip


def _check_keys(where: str, doc: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise RoutesFileError(
            f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )


def _mapping(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RoutesFileError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _str(where: str, value: Any, *, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise RoutesFileError(f"{where}: expected a non-empty string")
    return value


def _bool(where: str, value: Any, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RoutesFileError(f"{where}: expected true or false")
    return value


def _number(where: str, value: Any, default: float, *, integer: bool = False) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise RoutesFileError(f"{where}: expected a positive number")
    if integer and not isinstance(value, int):
        raise RoutesFileError(f"{where}: expected a positive integer")
    return value


def parse_provider(where: str, doc: Any) -> ProviderSpec:
    doc = _mapping(where, doc)
    _check_keys(where, doc, _PROVIDER_KEYS)
    try:
        ptype = ProviderType.parse(str(_str(f"{where}.type", doc.get("type"))))
    except ValueError as exc:
        raise RoutesFileError(f"{where}.type: {exc}") from None
    model = _str(f"{where}.model", doc.get("model"))
    base_url = _str(f"{where}.baseURL", doc.get("baseURL", doc.get("baseUrl")), required=False)
    if ptype in (ProviderType.OPENAI_COMPATIBLE, ProviderType.AZURE_OPENAI) and not base_url:
        raise RoutesFileError(f"{where}.baseURL: required for type {ptype.value}")
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        raise RoutesFileError(f"{where}.baseURL: must start with http:// or https://")
    env = _str(f"{where}.apiKeyEnv", doc.get("apiKeyEnv"), required=False)
    file = _str(f"{where}.apiKeyFile", doc.get("apiKeyFile"), required=False)
    if env and file:
        raise RoutesFileError(f"{where}: give apiKeyEnv or apiKeyFile, not both")
    key = SecretRef(env=env) if env else SecretRef(file=file) if file else None
    return ProviderSpec(
        type=ptype,
        model=str(model),
        base_url=base_url,
        api_key=key,
        api_version=_str(f"{where}.apiVersion", doc.get("apiVersion"), required=False),
        deployment=_str(f"{where}.deployment", doc.get("deployment"), required=False),
        max_tokens=int(_number(f"{where}.maxTokens", doc.get("maxTokens"), 4096, integer=True)),
        name=_str(f"{where}.name", doc.get("name"), required=False) or "",
    )


def parse_model(where: str, doc: Any) -> list[RouteSpec]:
    doc = _mapping(where, doc)
    _check_keys(where, doc, _MODEL_KEYS)
    name = str(_str(f"{where}.name", doc.get("name")))
    raw_backends = doc.get("backends") or []
    if not isinstance(raw_backends, list):
        raise RoutesFileError(f"{where}.backends: expected a list of URLs")
    backends = []
    for i, url in enumerate(raw_backends):
        try:
            backends.append(normalize_backend_url(str(_str(f"{where}.backends[{i}]", url))))
        except ValueError as exc:
            raise RoutesFileError(f"{where}.backends[{i}]: {exc}") from None
    serving = _mapping(f"{where}.serving", doc.get("serving") or {})
    _check_keys(f"{where}.serving", serving, _SERVING_KEYS)
    timeout = doc.get("requestTimeoutSeconds", serving.get("requestTimeoutSeconds"))
    depth = doc.get("maxQueueDepth", serving.get("maxQueueDepth"))
    fallback = doc.get("fallback") or []
    flags: dict[str, Any] = {}
    if isinstance(fallback, dict):
        _check_keys(f"{where}.fallback", fallback, _FALLBACK_KEYS)
        flags = fallback
        fallback = fallback.get("providers") or []
    if not isinstance(fallback, list):
        raise RoutesFileError(f"{where}.fallback: expected a list of providers")
    providers = tuple(parse_provider(f"{where}.fallback[{i}]", p) for i, p in enumerate(fallback))
    options = ServingOptions(
        request_timeout_s=_number(f"{where}.requestTimeoutSeconds", timeout, 300.0),
        max_queue_depth=int(_number(f"{where}.maxQueueDepth", depth, 16, integer=True)),
        fallback_on_unavailable=_bool(
            f"{where}.fallback.onUnavailable", flags.get("onUnavailable"), True
        ),
        fallback_on_overload=_bool(f"{where}.fallback.onOverload", flags.get("onOverload"), True),
        fallback_on_error=_bool(f"{where}.fallback.onError", flags.get("onError"), True),
    )
    aliases = doc.get("aliases") or []
    if not isinstance(aliases, list):
        raise RoutesFileError(f"{where}.aliases: expected a list of model names")
    names = [name] + [str(_str(f"{where}.aliases[{i}]", a)) for i, a in enumerate(aliases)]
    deployment: tuple[str, str] = ("", name)
    owner = _str(f"{where}.modelDeployment", doc.get("modelDeployment"), required=False)
    if owner is not None:
        ns, slash, md_name = owner.partition("/")
        if not slash or not ns or not md_name or "/" in md_name:
            raise RoutesFileError(
                f"{where}.modelDeployment: expected NAMESPACE/NAME, got {owner!r}"
            )
        deployment = (ns, md_name)
    return [
        RouteSpec(
            model=n,
            backends=tuple(backends),
            fallback=providers,
            options=options,
            deployment=deployment,
        )
        for n in names
    ]


def parse_routes(doc: Any) -> list[RouteSpec]:
    doc = _mapping("routes file", doc)
    _check_keys("routes file", doc, {"models"})
    models = doc.get("models")
    if not isinstance(models, list) or not models:
        raise RoutesFileError("routes file: `models` must be a non-empty list")
    specs: list[RouteSpec] = []
    seen: set[str] = set()
    for i, entry in enumerate(models):
        for spec in parse_model(f"models[{i}]", entry):
            if spec.model in seen:
                raise RoutesFileError(f"models[{i}]: model name {spec.model!r} is listed twice")
            seen.add(spec.model)
            specs.append(spec)
    return specs


def load_routes(path: str | Path) -> list[RouteSpec]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RoutesFileError(f"cannot read routes file {path}: {exc.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RoutesFileError(f"routes file {path} is not valid YAML: {exc}") from None
    return parse_routes(doc)
