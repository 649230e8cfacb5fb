"""Does I/O: which keys the Secrets a ModelDeployment names hold, cached per object.

The operator checks that every Secret key a spec references exists (a missing key would
leave the engine pods failing at start) without ever keeping or returning a value, and that
each fallback provider key's Secret opted in (the reader returns `ProviderKeys` for a Secret
labelled `hedge.dev/provider-key: "true"`). A found set is trusted for `FOUND_TTL` seconds,
one with anything missing or not opted in for `MISSING_TTL` (so a Secret created or labelled
after the ModelDeployment is noticed soon), and a new generation looks again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from hedge_core.api import ModelDeployment
from hedge_core.kube import TRANSIENT, Forbidden
from hedge_operator.errors import RetryableError
from hedge_operator.provisioning.validation import (
    ProviderKeys,
    opted_in,
    pull_secret_names,
    secret_uses,
)

log = logging.getLogger(__name__)

#: Per Secret name: its keys, or None when the Secret does not exist.
Found = dict[str, frozenset[str] | None]


class SecretReader(Protocol):
    async def secret_keys(self, namespace: str, name: str) -> frozenset[str] | None:
        """The Secret's data keys (a `ProviderKeys` when it carries the provider-key
        label), or None when it does not exist."""
        ...


class _AnyKeys(ProviderKeys):
    """The keys of a Secret the operator may not read: any key is taken to be there, and
    the label too (the gateway, which watches only labelled Secrets, still checks it)."""

    def __contains__(self, key: object) -> bool:
        return True


UNCHECKED: frozenset[str] = _AnyKeys()


@dataclass(frozen=True)
class _Entry:
    generation: int
    found: Found
    at: float


class SecretKeys:
    """The key look-ups of every ModelDeployment, by uid."""

    FOUND_TTL = 300.0
    MISSING_TTL = 5.0

    def __init__(self, kube: SecretReader, clock: Callable[[], float] = time.monotonic) -> None:
        self._kube = kube
        self._clock = clock
        self._cache: dict[str, _Entry] = {}

    def forget(self, uid: str) -> None:
        self._cache.pop(uid, None)

    async def lookup(self, md: ModelDeployment) -> tuple[Found, int]:
        """The keys of each Secret `md` names, and the API requests it took (0: cached).
        Raises RetryableError when the API server had trouble."""
        uses = secret_uses(md)
        # Pull secrets are looked up only to say a missing one (never a reason to hold
        # the spec back: a public image needs none).
        names = sorted({use.name for use in uses} | set(pull_secret_names(md)))
        if not names:
            return {}, 0
        provider = {use.name for use in uses if use.provider_key}
        now = self._clock()
        entry = self._cache.get(md.uid)
        if entry is not None:
            cached = entry.found
            complete = (
                all(cached.get(n) is not None for n in names)
                and set(names) <= set(cached)
                and all(opted_in(cached.get(n)) for n in provider)
            )
            ttl = self.FOUND_TTL if complete else self.MISSING_TTL
            if entry.generation == md.generation and now - entry.at < ttl:
                return cached, 0
        results = await asyncio.gather(
            *(self._kube.secret_keys(md.namespace, n) for n in names), return_exceptions=True
        )
        found: Found = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, Forbidden):
                # Secret reads are granted only where keys are expected (the chart's
                # rbac.secretNamespaces): elsewhere the reference is passed on unchecked.
                log.warning(
                    "%s/%s: may not read Secret %r (forbidden), so it is not checked",
                    md.namespace,
                    md.name,
                    name,
                )
                found[name] = UNCHECKED
            elif isinstance(result, TRANSIENT):
                raise RetryableError(f"looking up Secrets: {result}") from result
            elif isinstance(result, BaseException):
                raise result
            else:
                found[name] = result
        self._cache[md.uid] = _Entry(md.generation, found, now)
        return found, len(names)
