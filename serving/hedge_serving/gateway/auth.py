"""Optional client API keys, checked in constant time, each optionally bound to namespaces.

Keys come from an environment variable or file (comma or newline separated) or from a
Kubernetes Secret (every value in it is a key), and can be replaced at run time. With no
keys configured every request is let through, unless keys are `required` (they come from
a Secret): then a missing or empty Secret locks the API rather than opening it.

A key may be bound to namespaces (its *scope*): it then reaches only the models of those
namespaces, and resolves a bare model name among them alone, so no other namespace can
take its traffic (docs/gateway.md, "Tenants"). Scoped keys are written

- in a keys file, one per line: `KEY team-a` or `KEY team-a,team-b`;
- in the keys Secret, under a data key named `namespace.<namespace>` (every key in that
  value is bound to that namespace); keys under any other data key are unscoped.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping

from hedge_serving.gateway.errors import AuthenticationFailed

_BEARER = "bearer "
SCOPED_DATA_KEY_PREFIX = "namespace."

Scope = frozenset[str] | None
"""The namespaces a request may reach; None: every namespace."""

ClientKey = tuple[str, Scope]


def split_keys(text: str) -> list[str]:
    return [k.strip() for k in text.replace(",", "\n").splitlines() if k.strip()]


def parse_keys_file(text: str) -> list[ClientKey]:
    """A keys file: plain keys (comma or newline separated), or `KEY ns[,ns…]` lines."""
    keys: list[ClientKey] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, namespaces = line.partition(" ")
        if namespaces.strip():
            scope = frozenset(n.strip() for n in namespaces.split(",") if n.strip())
            keys.append((key, scope))
        else:
            keys.extend((k, None) for k in split_keys(line))
    return keys


def keys_from_secret(data: Mapping[str, str]) -> list[ClientKey]:
    """A keys Secret's (decoded) data: `namespace.<ns>` entries are bound to <ns>."""
    keys: list[ClientKey] = []
    for name, value in data.items():
        scope: Scope = None
        if name.startswith(SCOPED_DATA_KEY_PREFIX) and name != SCOPED_DATA_KEY_PREFIX:
            scope = frozenset({name[len(SCOPED_DATA_KEY_PREFIX) :]})
        keys.extend((k, scope) for k in split_keys(value))
    return keys


class ClientAuth:
    def __init__(self, keys: Iterable[str | ClientKey] = (), *, required: bool = False) -> None:
        self._keys: tuple[tuple[bytes, Scope], ...] = ()
        self.required = required
        self.enabled = required
        self.set_keys(keys)

    def set_keys(self, keys: Iterable[str | ClientKey]) -> None:
        entries: list[tuple[bytes, Scope]] = []
        for item in keys:
            key, scope = (item, None) if isinstance(item, str) else item
            if key.strip():
                entries.append((key.strip().encode(), scope))
        self._keys = tuple(entries)
        self.enabled = self.required or bool(self._keys)

    def check(self, authorization: str | None) -> Scope:
        """The scope of the key the header carries (None: every namespace, also when no keys
        are configured); raises `AuthenticationFailed` without a configured key."""
        if not self.enabled:
            return None
        if not authorization or authorization[:7].lower() != _BEARER:
            raise AuthenticationFailed(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        presented = authorization[7:].strip().encode("utf-8", "surrogateescape")
        found = False
        scope: Scope = None
        for key, key_scope in self._keys:  # compare with every key: timing says nothing
            if hmac.compare_digest(presented, key) and not found:
                found, scope = True, key_scope
        if not found:
            raise AuthenticationFailed("Incorrect API key provided.")
        return scope
