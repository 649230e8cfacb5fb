"""The ClientPolicy API (hedge.dev/v1alpha1): a tenant's client keys and limits, declared in
its namespace. The gateway reads it (through `ClientPolicy.from_body`) to bind each client
key to the namespace and to admit its requests; the operator checks the keys' Secrets and
writes the status. The CRD's schema and CEL rules are generated from the dataclasses here,
and `parse` applies the same rules in Python (docs/tenants.md, "The ClientPolicy object").

Two layers: the wire spec (`ClientPolicySpec`, `ClientKeySpec`, `ClientSecretRef`, shaped
as the YAML is) and what readers use (`ClientPolicy`, `ClientKeyRef`: flat, snake_case,
tuples). `Limits`, `ModelLimits` and `FallbackAllowance` serve both.
"""

# ruff: noqa: RUF009

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Literal

from hedge_core.api.constants import DNS_LABEL, DNS_SUBDOMAIN, SECRET_KEY, SERVED_NAME
from hedge_core.api.schema import Rule, SpecError, parse, prop
from hedge_core.api.status import Condition

CLIENT_POLICY_KIND = "ClientPolicy"
CLIENT_POLICY_PLURAL = "clientpolicies"
CLIENT_POLICY_SINGULAR = "clientpolicy"
CLIENT_POLICY_SHORT_NAMES = ("cpol",)

#: Most keys entries of one ClientPolicy, and most per-model entries.
MAX_KEYS = 64
MAX_MODELS = 128


class Priority(StrEnum):
    """Which tenant's requests wait and which are shed first when capacity is short."""

    CRITICAL = "critical"
    STANDARD = "standard"
    SHEDDABLE = "sheddable"


PriorityName = Literal["critical", "standard", "sheddable"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Ceilings over a rolling window; each unset one is no ceiling."""

    requests_per_minute: int | None = prop(
        "Most requests in one minute.", default=None, minimum=1, format="int64"
    )
    tokens_per_minute: int | None = prop(
        "Most tokens (prompt + completion) in one minute.", default=None, minimum=1, format="int64"
    )
    tokens_per_day: int | None = prop(
        "Most tokens (prompt + completion) in one UTC day.", default=None, minimum=1, format="int64"
    )
    concurrent_requests: int | None = prop(
        "Most requests in flight at once.", default=None, minimum=1, format="int64"
    )


#: Limits' kinds: (Python field, JSON name), in declaration order.
LIMIT_KINDS = (
    ("requests_per_minute", "requestsPerMinute"),
    ("tokens_per_minute", "tokensPerMinute"),
    ("tokens_per_day", "tokensPerDay"),
    ("concurrent_requests", "concurrentRequests"),
)


@dataclass(frozen=True, slots=True)
class ClientKeyRef:
    """One client-key binding as readers use it: the Secret (and its data key, None for
    every data key) in the policy's namespace, the name usage is reported under, and the
    key's own limits."""

    secret_name: str
    key: str | None = None
    name: str | None = None
    limits: Limits = Limits()


def key_name(ref: ClientKeyRef, data_key: str) -> str:
    """What usage and metrics call the keys of one Secret data key: the ref's name, or
    `<secret>.<data key>`."""
    return ref.name or f"{ref.secret_name}.{data_key}"


@dataclass(frozen=True, slots=True)
class ModelLimits:
    """This tenant's limits on one model."""

    model: str = prop(
        "Served model name, as clients send it in `model`.", maxLength=128, pattern=SERVED_NAME
    )
    limits: Limits = prop("The tenant's ceilings on this model (all its keys together).")


@dataclass(frozen=True, slots=True)
class FallbackAllowance:
    """Whether this tenant may spill to the paid fallback providers, and how much."""

    allowed: bool = prop(
        "May this tenant's requests be served by fallback providers.", default=True
    )
    tokens_per_minute: int | None = prop(
        "Most fallback tokens in one minute (this tenant's share).",
        default=None,
        minimum=1,
        format="int64",
    )
    tokens_per_day: int | None = prop(
        "Most fallback tokens in one UTC day (this tenant's share).",
        default=None,
        minimum=1,
        format="int64",
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.allowed || (!has(self.tokensPerMinute) && !has(self.tokensPerDay))",
            "fallback.tokensPerMinute and fallback.tokensPerDay apply only when "
            "fallback.allowed is true",
            lambda f: f.allowed or (f.tokens_per_minute is None and f.tokens_per_day is None),
        ),
    )


# ------------------------------------------------------------------------ the wire spec


@dataclass(frozen=True, kw_only=True)
class ClientSecretRef:
    """A Secret in the ClientPolicy's namespace holding client keys. It must carry the
    label hedge.dev/client-key=true: the gateway never reads any other Secret."""

    name: str = prop(
        "Name of the Secret, in the ClientPolicy's namespace.",
        maxLength=253,
        pattern=DNS_SUBDOMAIN,
    )
    key: str | None = prop(
        "The data key holding the client keys (several per value, separated by newlines or "
        "commas). Unset: every data key of the Secret.",
        default=None,
        maxLength=253,
        pattern=SECRET_KEY,
    )


@dataclass(frozen=True, kw_only=True)
class ClientKeySpec:
    """Client keys bound to this namespace."""

    secret_ref: ClientSecretRef = prop("Where the keys are.")
    name: str | None = prop(
        "What usage and metrics call these keys. Unset: <secret>.<data key>.",
        default=None,
        maxLength=63,
        pattern=DNS_LABEL,
    )
    limits: Limits = prop(
        "Ceilings on these keys alone (each at most the tenant-wide one of its kind).",
        default_factory=Limits,
    )


def _key_limit_rule(field: str, json: str) -> Rule:
    return Rule(
        f"!has(self.limits.{json}) || self.keys.all(k, !has(k.limits) || "
        f"!has(k.limits.{json}) || k.limits.{json} <= self.limits.{json})",
        f"keys[].limits.{json} must not exceed limits.{json}",
        _not_above(field, lambda s: [k.limits for k in s.keys]),
    )


def _model_limit_rule(field: str, json: str) -> Rule:
    return Rule(
        f"!has(self.limits.{json}) || !has(self.models) || self.models.all(m, "
        f"!has(m.limits.{json}) || m.limits.{json} <= self.limits.{json})",
        f"models[].limits.{json} must not exceed limits.{json}",
        _not_above(field, lambda s: [m.limits for m in s.models]),
    )


def _not_above(field: str, parts: Callable[[Any], list[Limits]]) -> Callable[[Any], bool]:
    def check(spec: Any) -> bool:
        ceiling = getattr(spec.limits, field)
        if ceiling is None:
            return True
        return all(getattr(p, field) is None or getattr(p, field) <= ceiling for p in parts(spec))

    return check


def _same_secret_key(a: ClientKeySpec, b: ClientKeySpec) -> bool:
    """Whether two entries bind a data key in common (no key: every key of the Secret)."""
    x, y = a.secret_ref, b.secret_ref
    return x.name == y.name and (x.key is None or y.key is None or x.key == y.key)


def _unique(values: list[Any]) -> bool:
    return len(values) == len(set(values))


@dataclass(frozen=True, kw_only=True)
class ClientPolicySpec:
    """A tenant: the client keys that act for this namespace and the limits on them."""

    keys: list[ClientKeySpec] = prop(
        "Client keys bound to this namespace, from Secrets in it.", minItems=1, maxItems=MAX_KEYS
    )
    limits: Limits = prop(
        "Tenant-wide ceilings: all keys together, every model.", default_factory=Limits
    )
    models: list[ModelLimits] = prop(
        "Ceilings on single models (all keys together).", default_factory=list, maxItems=MAX_MODELS
    )
    priority: PriorityName = prop(
        "critical, standard or sheddable: whose requests wait and whose are shed first "
        "when capacity is short.",
        default="standard",
    )
    weight: int = prop(
        "Fair-share weight against the other tenants of the same priority.",
        default=1,
        minimum=1,
        maximum=1000,
    )
    default_max_tokens: int = prop(
        "Completion tokens a request that names no max_tokens reserves against the limits.",
        default=512,
        minimum=1,
        maximum=1_000_000,
    )
    fallback: FallbackAllowance = prop(
        "Whether (and how much) this tenant may use the paid fallback providers.",
        default_factory=FallbackAllowance,
    )

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.keys.all(a, !has(a.name) || self.keys.exists_one(b, has(b.name) && "
            "b.name == a.name))",
            "keys[].name must be unique",
            lambda s: _unique([k.name for k in s.keys if k.name is not None]),
        ),
        Rule(
            "self.keys.all(a, self.keys.exists_one(b, b.secretRef.name == a.secretRef.name && "
            "(!has(a.secretRef.key) || !has(b.secretRef.key) || "
            "a.secretRef.key == b.secretRef.key)))",
            "keys[].secretRef: each Secret data key is bound once (a secretRef without key "
            "binds every data key of its Secret)",
            lambda s: all(sum(_same_secret_key(a, b) for b in s.keys) == 1 for a in s.keys),
        ),
        Rule(
            "!has(self.models) || self.models.all(a, self.models.exists_one(b, "
            "b.model == a.model))",
            "models[].model must be unique",
            lambda s: _unique([m.model for m in s.models]),
        ),
        *(_key_limit_rule(f, j) for f, j in LIMIT_KINDS),
        *(_model_limit_rule(f, j) for f, j in LIMIT_KINDS),
    )


# --------------------------------------------------------------------------- the status


@dataclass(frozen=True, kw_only=True)
class ClientPolicyUsage:
    """What this tenant used in the current windows, summed over the gateways."""

    time: str | None = prop("When it was measured.", default=None, format="date-time", maxLength=64)
    minute_start: str | None = prop(
        "Start of the current minute window.", default=None, format="date-time", maxLength=64
    )
    minute_requests: int | None = prop("Requests in it.", default=None, minimum=0, format="int64")
    minute_tokens: int | None = prop("Tokens in it.", default=None, minimum=0, format="int64")
    day_start: str | None = prop(
        "Start of the current UTC day.", default=None, format="date-time", maxLength=64
    )
    day_tokens: int | None = prop("Tokens in it.", default=None, minimum=0, format="int64")


@dataclass(frozen=True, kw_only=True)
class ClientPolicyStatus:
    """Observed state: whether the keys were found, and the tenant's usage."""

    observed_generation: int | None = prop(
        "metadata.generation the status describes.", default=None, format="int64"
    )
    keys: int | None = prop(
        "Client-key entries found: Secret data keys bound by spec.keys.",
        default=None,
        minimum=0,
    )
    usage: ClientPolicyUsage | None = prop(
        "Usage in the current windows (written once the gateways report it).", default=None
    )
    conditions: list[Condition] = prop(
        "Ready: the spec is valid and every referenced Secret is there, labelled, with its "
        "keys (reasons KeysFound, InvalidSpec, SecretNotFound, SecretNotReadable, "
        "SecretNotLabelled, KeyNotFound, NoKeys).",
        default_factory=list,
        maxItems=8,
        list_map_keys=("type",),
    )


# ------------------------------------------------------------------------ the resource


@dataclass(frozen=True, slots=True)
class ClientPolicy:
    """A ClientPolicy as readers use it: identity plus the parsed, defaulted spec."""

    namespace: str
    name: str
    generation: int
    keys: tuple[ClientKeyRef, ...]
    limits: Limits
    models: tuple[ModelLimits, ...]
    priority: Priority
    weight: int
    default_max_tokens: int
    fallback: FallbackAllowance

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ClientPolicy:
        """Parses an object as the API server returns it; raises SpecError naming the
        field path (`spec.keys[0].secretRef.name: …`)."""
        meta = body.get("metadata") or {}
        try:
            generation = int(meta.get("generation") or 0)
        except (TypeError, ValueError):
            raise SpecError([("metadata.generation", "must be an integer")]) from None
        spec = parse(ClientPolicySpec, body.get("spec") or {}, "spec")
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            generation=generation,
            keys=tuple(
                ClientKeyRef(
                    secret_name=k.secret_ref.name,
                    key=k.secret_ref.key,
                    name=k.name,
                    limits=k.limits,
                )
                for k in spec.keys
            ),
            limits=spec.limits,
            models=tuple(spec.models),
            priority=Priority(spec.priority),
            weight=spec.weight,
            default_max_tokens=spec.default_max_tokens,
            fallback=spec.fallback,
        )

    @property
    def secret_names(self) -> tuple[str, ...]:
        """The Secrets the keys come from, each once, in spec order."""
        return tuple(dict.fromkeys(k.secret_name for k in self.keys))
