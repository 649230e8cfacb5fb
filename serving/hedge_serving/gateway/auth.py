"""Client API keys, looked up by SHA-256 digest, each optionally bound to namespaces.

Keys come from an environment variable or file (comma or newline separated) or from a
Kubernetes Secret, and can be replaced at run time. Auth fails closed: a keys source that
is configured but yields no key (an empty file, an empty or missing Secret, a Secret whose
data keys are all misspelt) locks the API rather than opening it. Only a gateway started
with no keys source at all lets every request through, and says so with a WARNING at
start (the chart refuses to render that unless `gateway.allowUnauthenticated` is set).

A key may be bound to namespaces (its *scope*): it then reaches only the models of those
namespaces, and resolves a bare model name among them alone, so no other namespace can
take its traffic (docs/gateway.md, "Tenants"). Scoped keys are written

- in a keys file, one per line: `KEY team-a` or `KEY team-a,team-b`;
- in the keys Secret, under a data key named `namespace.<namespace>` (every key in that
  value is bound to that namespace). Unbound keys (they reach every namespace: admin keys)
  live under the data key `keys` alone. Any other data key (`namespaces.team-a`,
  `team-a`, `namespace.Team_A`) is ignored with a WARNING naming it: a misspelt binding
  never becomes an admin key.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping

from hedge_serving.gateway.errors import AuthenticationFailed
from hedge_serving.gateway.tenants import ANONYMOUS, Identity, Scope, digest, merge, split_keys

log = logging.getLogger("hedge.gateway.auth")

_BEARER = "bearer "
SCOPED_DATA_KEY_PREFIX = "namespace."
UNSCOPED_DATA_KEY = "keys"
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # a DNS-1123 label


class KeysConfigError(ValueError):
    """A keys source that is configured but unusable (the gateway refuses to start)."""


ClientKey = tuple[str, Scope]


def parse_keys_file(text: str, where: str = "keys file") -> list[ClientKey]:
    """A keys file: plain keys (comma or newline separated), or `KEY ns[,ns…]` lines.

    Raises `KeysConfigError` for a file without a single key (an empty file must not turn
    auth off) and for a namespace that is not a valid namespace name."""
    keys: list[ClientKey] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, namespaces = line.partition(" ")
        if namespaces.strip():
            scope = frozenset(n.strip() for n in namespaces.split(",") if n.strip())
            bad = sorted(n for n in scope if not _NAMESPACE.match(n))
            if bad:
                raise KeysConfigError(
                    f"{where}, line {number}: {', '.join(map(repr, bad))} is not a namespace "
                    "name (a line is `KEY` or `KEY namespace[,namespace…]`)"
                )
            keys.append((key, scope))
        else:
            keys.extend((k, None) for k in split_keys(line))
    if not keys:
        raise KeysConfigError(
            f"{where} holds no client key: refusing to start with authentication off (write "
            "one key per line, or start without a keys file to run unauthenticated)"
        )
    return keys


def keys_from_secret(data: Mapping[str, str]) -> list[ClientKey]:
    """A keys Secret's (decoded) data: `namespace.<ns>` entries are bound to <ns>, `keys`
    holds unbound keys; any other data key is ignored (logged by name, never its value),
    so a misspelt binding locks its keys out instead of making them admin keys."""
    keys: list[ClientKey] = []
    for name, value in data.items():
        scope: Scope
        if name == UNSCOPED_DATA_KEY:
            scope = None
        elif name.startswith(SCOPED_DATA_KEY_PREFIX) and _NAMESPACE.match(
            name[len(SCOPED_DATA_KEY_PREFIX) :]
        ):
            scope = frozenset({name[len(SCOPED_DATA_KEY_PREFIX) :]})
        else:
            log.warning(
                "client keys Secret: data key %r is ignored: keys live under %r (unbound, "
                "every namespace) or %r<namespace> (bound to that namespace)",
                name,
                UNSCOPED_DATA_KEY,
                SCOPED_DATA_KEY_PREFIX,
            )
            continue
        keys.extend((k, scope) for k in split_keys(value))
    return keys


class ClientAuth:
    """`required`: a keys source is configured, so no keys means no access (fail closed);
    without it and without keys every request is let through (a WARNING says so).

    Keys are held as SHA-256 digests (`hedge_serving.gateway.tenants.digest`) mapped to the
    identity they authenticate: those of the keys file or Secret (`set_keys`) and those of
    ClientPolicies (`set_policy_keys`). A key two identities claim authenticates neither."""

    def __init__(self, keys: Iterable[str | ClientKey] = (), *, required: bool = False) -> None:
        self._static: list[tuple[bytes, Identity]] = []
        self._policy: list[tuple[bytes, Identity]] = []
        self._by_digest: dict[bytes, Identity] = {}
        self._problems: list[str] = []
        self.required = required
        self.enabled = required
        self.set_keys(keys)
        self.required = self.enabled  # keys once configured: losing them all locks the API
        if not self.enabled:
            log.warning(
                "client authentication is OFF: no client keys are configured, so anyone who "
                "can reach the API port can use every model and spend the fallback "
                "providers' keys (pass --api-keys-secret or --api-keys-file)"
            )

    def set_keys(self, keys: Iterable[str | ClientKey]) -> None:
        """The keys of the keys file or Secret (the first binding of a key listed twice)."""
        entries: dict[bytes, Identity] = {}
        for item in keys:
            key, scope = (item, None) if isinstance(item, str) else item
            if key.strip():
                entries.setdefault(digest(key), Identity(scope=scope))
        self._static = list(entries.items())
        self._rebuild()

    def set_policy_keys(self, entries: Iterable[tuple[bytes, Identity]]) -> None:
        """The keys of every ClientPolicy (`tenants.policy_keys`), replacing the last set."""
        self._policy = list(entries)
        self._rebuild()

    def _rebuild(self) -> None:
        merged, problems = merge([*self._static, *self._policy])
        for problem in problems:
            if problem not in self._problems:
                log.warning("%s", problem)
        self._problems = problems
        self._by_digest = merged
        self.enabled = self.required or bool(merged) or bool(problems)

    def identify(self, authorization: str | None) -> Identity:
        """Who the header's key is (`ANONYMOUS`, every namespace, when no keys are
        configured); raises `AuthenticationFailed` without a configured key."""
        if not self.enabled:
            return ANONYMOUS
        if not authorization or authorization[:7].lower() != _BEARER:
            raise AuthenticationFailed(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        identity = self._by_digest.get(digest(authorization[7:]))
        if identity is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        return identity

    def check(self, authorization: str | None) -> Scope:
        """The scope of the key the header carries (None: every namespace, also when no keys
        are configured); raises `AuthenticationFailed` without a configured key."""
        return self.identify(authorization).scope
