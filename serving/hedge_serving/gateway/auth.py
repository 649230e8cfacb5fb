"""Optional client API keys, checked in constant time.

Keys come from an environment variable or file (comma or newline separated) or from a
Kubernetes Secret (every value in it is a key), and can be replaced at run time. With no
keys configured every request is let through, unless keys are `required` (they come from
a Secret): then a missing or empty Secret locks the API rather than opening it.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from hedge_serving.gateway.errors import AuthenticationFailed

_BEARER = "bearer "


def split_keys(text: str) -> list[str]:
    return [k.strip() for k in text.replace(",", "\n").splitlines() if k.strip()]


class ClientAuth:
    def __init__(self, keys: Iterable[str] = (), *, required: bool = False) -> None:
        self._keys: tuple[bytes, ...] = ()
        self.required = required
        self.enabled = required
        self.set_keys(keys)

    def set_keys(self, keys: Iterable[str]) -> None:
        self._keys = tuple(k.strip().encode() for k in keys if k.strip())
        self.enabled = self.required or bool(self._keys)

    def check(self, authorization: str | None) -> None:
        """Raises `AuthenticationFailed` unless the header carries a configured key."""
        if not self.enabled:
            return
        if not authorization or authorization[:7].lower() != _BEARER:
            raise AuthenticationFailed(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        presented = authorization[7:].strip().encode("utf-8", "surrogateescape")
        ok = False
        for key in self._keys:  # compare with every key: timing says nothing about which
            ok |= hmac.compare_digest(presented, key)
        if not ok:
            raise AuthenticationFailed("Incorrect API key provided.")
