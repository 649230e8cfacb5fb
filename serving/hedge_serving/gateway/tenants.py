"""Tenants (pure): ClientPolicies and their key Secrets become who a client key is, and the
limits a request counts against.

A ClientPolicy in a team's namespace binds the keys of the Secrets it names (labelled
`hedge.dev/client-key=true`, in the same namespace) to that namespace and sets the team's
limits (docs/tenants.md). Each key becomes an `Identity`: the namespaces it reaches (the
policy's own), its tenant and the name usage is reported under (the policy names its keys;
a raw key never reaches a metric or a log). A request for a model counts against the
tenant's limits, the key's and the tenant's limits for that model (`Identity.limits_for`),
each a `LimitSet` the quota store enforces across gateway replicas.

Keys are kept as SHA-256 digests (`digest`), never as text: a lookup by digest says nothing
about a key that a timing measurement could use, and no copy of a key stays in memory beyond
the watch event it arrived in. A key value that two different identities claim (two
policies, or a policy and the keys file) is refused for both, with a WARNING naming the
policies, so no team can take another's traffic by copying its key into its own Secret.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from hedge_core.api import ClientPolicy, Limits, Priority, key_name
from hedge_serving.gateway.quota.limits import LimitSet

Scope = frozenset[str] | None
"""The namespaces a request may reach; None: every namespace."""


def digest(key: str | bytes) -> bytes:
    raw = key.encode("utf-8", "surrogateescape") if isinstance(key, str) else key
    return hashlib.sha256(raw.strip()).digest()


def _limit_set(scope: str, limits: Limits) -> LimitSet | None:
    if (
        limits.requests_per_minute is None
        and limits.tokens_per_minute is None
        and limits.tokens_per_day is None
        and limits.concurrent_requests is None
    ):
        return None
    return LimitSet(
        scope,
        requests_per_minute=limits.requests_per_minute,
        tokens_per_minute=limits.tokens_per_minute,
        tokens_per_day=limits.tokens_per_day,
        concurrent_requests=limits.concurrent_requests,
    )


@dataclass(frozen=True, slots=True)
class Tenant:
    """One ClientPolicy as the gateway applies it."""

    namespace: str
    policy: str
    priority: Priority = Priority.STANDARD
    weight: int = 1
    default_max_tokens: int = 512
    limits: LimitSet | None = None
    models: tuple[tuple[str, LimitSet], ...] = ()
    fallback_allowed: bool = True
    fallback: LimitSet | None = None  # its own ceiling on fallback tokens

    @property
    def label(self) -> str:
        """How metrics name the tenant: `<namespace>/<policy>`."""
        return f"{self.namespace}/{self.policy}"

    def model_limits(self, model: str) -> LimitSet | None:
        return next((s for m, s in self.models if m == model), None)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request is: the namespaces its key reaches, and (a ClientPolicy's key) its
    tenant, key name and per-key limits."""

    scope: Scope = None
    tenant: Tenant | None = None
    key: str | None = None
    key_limits: LimitSet | None = None
    source: str = field(default="", compare=False)  # where the key was declared, for logs

    def limits_for(self, model: str) -> list[LimitSet]:
        """The limit sets a request for `model` (its served name) counts against."""
        if self.tenant is None:
            return []
        found = [self.tenant.limits, self.key_limits, self.tenant.model_limits(model)]
        return [s for s in found if s is not None]


ANONYMOUS = Identity()


def tenant_of(policy: ClientPolicy) -> Tenant:
    base = f"{policy.namespace}/{policy.name}"
    fallback = policy.fallback
    return Tenant(
        namespace=policy.namespace,
        policy=policy.name,
        priority=policy.priority,
        weight=policy.weight,
        default_max_tokens=policy.default_max_tokens,
        limits=_limit_set(f"tenant/{base}", policy.limits),
        models=tuple(
            (m.model, s)
            for m in policy.models
            if (s := _limit_set(f"model/{base}/{m.model}", m.limits)) is not None
        ),
        fallback_allowed=fallback.allowed,
        fallback=_limit_set(
            f"fallback/{base}",
            Limits(
                tokens_per_minute=fallback.tokens_per_minute,
                tokens_per_day=fallback.tokens_per_day,
            ),
        ),
    )


def secret_digests(data: Mapping[str, str]) -> dict[str, tuple[bytes, ...]]:
    """A client-key Secret's decoded data as the gateway keeps it: data key -> the digests
    of the keys its value lists (comma or newline separated)."""
    return {name: tuple(digest(k) for k in split_keys(value)) for name, value in data.items()}


def policy_keys(
    policy: ClientPolicy, secrets: Mapping[str, Mapping[str, Sequence[bytes]]]
) -> list[tuple[bytes, Identity]]:
    """(digest, identity) of every key of a policy found in its namespace's client-key
    Secrets (`secrets`: name -> `secret_digests`, labelled Secrets only); references to a
    missing Secret or data key yield nothing (the operator reports them on the policy)."""
    tenant = tenant_of(policy)
    base = f"{policy.namespace}/{policy.name}"
    out: list[tuple[bytes, Identity]] = []
    for ref in policy.keys:
        data = secrets.get(ref.secret_name)
        if data is None:
            continue
        for data_key in [ref.key] if ref.key is not None else sorted(data):
            digests = data.get(data_key)
            if digests is None:
                continue
            name = key_name(ref, data_key)
            identity = Identity(
                scope=frozenset({policy.namespace}),
                tenant=tenant,
                key=name,
                key_limits=_limit_set(f"key/{base}/{name}", ref.limits),
                source=f"ClientPolicy {base}",
            )
            out.extend((d, identity) for d in digests)
    return out


def split_keys(text: str) -> list[str]:
    return [k.strip() for k in text.replace(",", "\n").splitlines() if k.strip()]


def merge(entries: Iterable[tuple[bytes, Identity]]) -> tuple[dict[bytes, Identity], list[str]]:
    """digest -> identity; a digest claimed by two different identities is dropped, and
    each such conflict is described (by where the keys were declared, never the key)."""
    found: dict[bytes, Identity] = {}
    conflicting: dict[bytes, set[str]] = {}
    for key, identity in entries:
        where = identity.source or "the keys file/Secret"
        if key in conflicting:
            conflicting[key].add(where)
            continue
        known = found.get(key)
        if known is None:
            found[key] = identity
        elif known != identity:
            conflicting[key] = {known.source or "the keys file/Secret", where}
            del found[key]
    problems = [
        "a client key is declared by "
        + " and ".join(sorted(sources))
        + ": it authenticates neither until one of them drops it"
        for sources in conflicting.values()
    ]
    return found, problems


__all__ = [
    "ANONYMOUS",
    "Identity",
    "Scope",
    "Tenant",
    "digest",
    "merge",
    "policy_keys",
    "secret_digests",
    "split_keys",
    "tenant_of",
]
