"""Where the gateway gets secrets from: API keys of fallback providers and of clients.

`KeyStore.get(ref)` is called when a key is needed, never cached beyond the source's own
cache, so a rotated key (changed env file, updated Kubernetes Secret) is used on the next
request. Keys never leave this module except into an outgoing request header.
"""

from __future__ import annotations

import os
from typing import Protocol

from hedge_serving.gateway.routing import SecretRef


class KeyStore(Protocol):
    def get(self, ref: SecretRef) -> str | None: ...


class LocalKeyStore:
    """Environment variables and files (re-read when their modification time changes)."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        self._environ = environ
        self._files: dict[str, tuple[float, str]] = {}

    def get(self, ref: SecretRef) -> str | None:
        if ref.env:
            env = self._environ if self._environ is not None else os.environ
            value = env.get(ref.env)
            return value.strip() if value else None
        if ref.file:
            return self._read_file(ref.file)
        return None

    def _read_file(self, path: str) -> str | None:
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            return None
        cached = self._files.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read().strip()
        except OSError:
            return None
        self._files[path] = (mtime, value)
        return value or None


class SecretCache:
    """Kubernetes Secret data, fed by the watcher; falls back to a local store for env/file."""

    def __init__(self, local: KeyStore | None = None) -> None:
        self._data: dict[tuple[str, str], dict[str, str]] = {}
        self._local = local or LocalKeyStore()

    def set_secret(self, namespace: str, name: str, data: dict[str, str] | None) -> None:
        if data is None:
            self._data.pop((namespace, name), None)
        else:
            self._data[(namespace, name)] = data

    def clear(self) -> None:
        self._data.clear()

    def get(self, ref: SecretRef) -> str | None:
        if ref.name is not None and ref.namespace is not None:
            secret = self._data.get((ref.namespace, ref.name))
            if secret is None:
                return None
            value = secret.get(ref.key or "api-key")
            return value.strip() if value else None
        return self._local.get(ref)
