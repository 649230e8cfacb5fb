"""A minimal Kubernetes API client for the dev tooling (cluster bring-up and the pod runner).

It reads the kubeconfig that ``hedge dev cluster up`` writes (client certificate or bearer
token, CA file) and offers a blocking ``request`` for bring-up plus an aiohttp session factory
for the pod runner. Production code paths (operator, gateway) have their own API modules.
"""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml


class KubeAPIError(RuntimeError):
    """The API server answered with an error status."""

    def __init__(self, status: int, body: str, what: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class KubeConfig:
    server: str
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    token: str | None = None

    @classmethod
    def load(cls, path: Path) -> KubeConfig:
        """Reads the current context of a kubeconfig that uses file references."""
        doc = yaml.safe_load(path.read_text())
        current = doc.get("current-context")
        ctx = next(c["context"] for c in doc["contexts"] if c["name"] == current)
        cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in doc["users"] if u["name"] == ctx["user"])

        def as_path(value: str | None) -> Path | None:
            return Path(value) if value else None

        return cls(
            server=cluster["server"],
            ca_file=as_path(cluster.get("certificate-authority")),
            cert_file=as_path(user.get("client-certificate")),
            key_file=as_path(user.get("client-key")),
            token=user.get("token"),
        )

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.cert_file and self.key_file:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        return ctx

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 10.0,
    ) -> Any:
        """One blocking API call; returns the decoded JSON body or raises KubeAPIError."""
        url = urlsplit(self.server)
        conn = http.client.HTTPSConnection(
            url.hostname or "127.0.0.1",
            url.port or 443,
            context=self.ssl_context(),
            timeout=timeout,
        )
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Accept": "application/json", **self.headers()}
            if payload is not None:
                headers["Content-Type"] = content_type
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode()
        finally:
            conn.close()
        if resp.status >= 400:
            raise KubeAPIError(resp.status, text, f"{method} {path}")
        return json.loads(text) if text else None


def write_kubeconfig(
    path: Path,
    name: str,
    server: str,
    ca_file: Path,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    token: str | None = None,
    namespace: str | None = None,
) -> None:
    """Writes a one-context kubeconfig that references (never embeds) key material."""
    user: dict[str, str] = {}
    if cert_file and key_file:
        user = {"client-certificate": str(cert_file), "client-key": str(key_file)}
    if token:
        user["token"] = token
    context: dict[str, str] = {"cluster": name, "user": name}
    if namespace:
        context["namespace"] = namespace
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": name, "cluster": {"server": server, "certificate-authority": str(ca_file)}}
        ],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": context}],
        "current-context": name,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o600)
