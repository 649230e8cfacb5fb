"""Kubernetes discovery: watch ModelDeployments, EndpointSlices and referenced Secrets.

The gateway never calls the API server per request. Three kinds of list+watch loops keep
in-memory caches, and every change rebuilds the routing table from them:

- `modeldeployments.hedge.dev/v1alpha1`: model names (plus adapters), serving options,
  fallback providers and the Secrets their keys live in;
- `endpointslices.discovery.k8s.io/v1` labelled `hedge.dev/model-deployment`: the ready
  endpoints (port `http`) of each ModelDeployment's engine pods;
- each referenced Secret (and the client-keys Secret), watched by name, so a rotated key
  is used on the next request without reading Secrets the gateway has no business with.

Each loop lists (remembering the list's resourceVersion), then watches from it with
bookmarks, resuming from the last resourceVersion seen when a watch ends; a 410 Gone (the
version expired, e.g. after an API server restart or compaction) triggers a fresh list,
and errors back off exponentially with jitter. The caches are replaced, not merged, on a
re-list, so objects deleted while the watch was down disappear.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import random
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import yaml

from hedge_serving.gateway.auth import ClientAuth, split_keys
from hedge_serving.gateway.keys import SecretCache
from hedge_serving.gateway.routing import (
    ProviderSpec,
    ProviderType,
    RouteSpec,
    RoutingTable,
    SecretRef,
    ServingOptions,
)

log = logging.getLogger("hedge.gateway.discovery")

GROUP_VERSION = "hedge.dev/v1alpha1"
MD_PLURAL = "modeldeployments"
MD_LABEL = "hedge.dev/model-deployment"
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
WATCH_TIMEOUT_S = 240  # server-side; the watch is re-opened from the last resourceVersion


class KubeConfigError(Exception):
    pass


class WatchExpired(Exception):
    """410 Gone: the resourceVersion is too old; list again."""


@dataclass
class KubeCredentials:
    server: str
    ssl: ssl.SSLContext | bool
    token: str | None = None
    token_file: str | None = None  # re-read on every (re)connect: projected tokens rotate

    def headers(self) -> dict[str, str]:
        token = self.token
        if self.token_file:
            with contextlib.suppress(OSError):
                token = Path(self.token_file).read_text().strip()
        return {"Authorization": f"Bearer {token}"} if token else {}


def _write_temp(data: bytes) -> str:
    f = tempfile.NamedTemporaryFile(prefix="hedge-kube-", delete=False)  # noqa: SIM115
    with f:
        f.write(data)
    os.chmod(f.name, 0o600)
    return f.name


def load_credentials(kubeconfig: str | None = None) -> KubeCredentials:
    """In-cluster service account first (unless a kubeconfig is named), then KUBECONFIG."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    if kubeconfig is None and host and (SERVICE_ACCOUNT_DIR / "token").exists():
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        ctx = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT_DIR / "ca.crt"))
        if ":" in host:
            host = f"[{host}]"
        return KubeCredentials(
            f"https://{host}:{port}", ctx, token_file=str(SERVICE_ACCOUNT_DIR / "token")
        )
    path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    path = path or str(Path.home() / ".kube" / "config")
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise KubeConfigError(
            f"no in-cluster credentials and no usable kubeconfig at {path}: {exc}"
        ) from None
    return _from_kubeconfig(doc, Path(path).parent)


def _named(doc: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    for entry in doc.get(kind + "s") or []:
        if entry.get("name") == name:
            return dict(entry.get(kind) or {})
    raise KubeConfigError(f"kubeconfig has no {kind} named {name!r}")


def _from_kubeconfig(doc: Any, base: Path) -> KubeCredentials:
    if not isinstance(doc, dict):
        raise KubeConfigError("kubeconfig is not a mapping")
    context = _named(doc, "context", str(doc.get("current-context", "")))
    cluster = _named(doc, "cluster", str(context.get("cluster", "")))
    user = _named(doc, "user", str(context.get("user", ""))) if context.get("user") else {}
    server = str(cluster.get("server", "")).rstrip("/")
    if not server:
        raise KubeConfigError("kubeconfig cluster has no server")

    def path_of(value: str) -> str:
        return value if os.path.isabs(value) else str(base / value)

    ssl_ctx: ssl.SSLContext | bool = True
    if server.startswith("https://"):
        if cluster.get("insecure-skip-tls-verify"):
            ssl_ctx = False
        else:
            ca = cluster.get("certificate-authority-data")
            ca_file = cluster.get("certificate-authority")
            ctx = ssl.create_default_context(
                cadata=base64.b64decode(ca).decode() if ca else None,
                cafile=path_of(ca_file) if ca_file and not ca else None,
            )
            ssl_ctx = ctx
        cert_data, key_data = user.get("client-certificate-data"), user.get("client-key-data")
        cert_file, key_file = user.get("client-certificate"), user.get("client-key")
        if cert_data and key_data:
            cert_file = _write_temp(base64.b64decode(cert_data))
            key_file = _write_temp(base64.b64decode(key_data))
        elif cert_file and key_file:
            cert_file, key_file = path_of(cert_file), path_of(key_file)
        if cert_file and key_file:
            if ssl_ctx is False:
                ssl_ctx = ssl.create_default_context()
                ssl_ctx.check_hostname = False
                ssl_ctx.verify_mode = ssl.CERT_NONE
            assert isinstance(ssl_ctx, ssl.SSLContext)
            ssl_ctx.load_cert_chain(cert_file, key_file)
    if user.get("exec") or user.get("auth-provider"):
        raise KubeConfigError("kubeconfig exec/auth-provider plugins are not supported")
    token_file = user.get("tokenFile")
    return KubeCredentials(
        server,
        ssl_ctx,
        token=user.get("token"),
        token_file=path_of(token_file) if token_file else None,
    )


# --------------------------------------------------------------------- spec -> routes


def _created(meta: dict[str, Any]) -> int:
    ts = meta.get("creationTimestamp")
    if isinstance(ts, str):
        with contextlib.suppress(ValueError):
            return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp())
    return 0


def provider_from_spec(namespace: str, doc: dict[str, Any]) -> ProviderSpec:
    ptype = ProviderType.parse(str(doc.get("type", "")))
    ref = doc.get("apiKeySecretRef")
    key = None
    if isinstance(ref, dict) and ref.get("name"):
        key = SecretRef(
            namespace=namespace, name=str(ref["name"]), key=str(ref.get("key") or "api-key")
        )
    return ProviderSpec(
        type=ptype,
        model=str(doc.get("model", "")),
        base_url=doc.get("baseURL") or None,
        api_key=key,
        api_version=doc.get("apiVersion") or None,
        deployment=doc.get("deployment") or None,
    )


def routes_for(md: dict[str, Any], backends: Iterable[str]) -> list[RouteSpec]:
    """The RouteSpecs one ModelDeployment contributes (its model and each adapter)."""
    meta = md.get("metadata") or {}
    spec = md.get("spec") or {}
    namespace = str(meta.get("namespace", ""))
    model = spec.get("model") or {}
    names = [str(model.get("name") or meta.get("name"))]
    names += [
        str(a["name"]) for a in spec.get("adapters") or [] if isinstance(a, dict) and a.get("name")
    ]
    serving = spec.get("serving") or {}
    fallback = spec.get("fallback") or {}
    providers = []
    for p in fallback.get("providers") or []:
        try:
            providers.append(provider_from_spec(namespace, p))
        except (ValueError, TypeError) as exc:
            log.warning("%s/%s: skipping fallback provider: %s", namespace, meta.get("name"), exc)
    options = ServingOptions(
        request_timeout_s=float(serving.get("requestTimeoutSeconds") or 300),
        max_queue_depth=int(serving.get("maxQueueDepth", 16)),
        fallback_on_unavailable=fallback.get("onUnavailable", True) is not False,
        fallback_on_overload=fallback.get("onOverload", True) is not False,
        fallback_on_error=fallback.get("onError", True) is not False,
    )
    urls = tuple(sorted(set(backends)))
    return [
        RouteSpec(n, urls, tuple(providers), options, owner=namespace, created=_created(meta))
        for n in names
    ]


def ready_endpoints(slice_: dict[str, Any]) -> list[str]:
    """`http://addr:port` of the ready endpoints of an EndpointSlice (port named `http`)."""
    ports = slice_.get("ports") or []
    port = next((p.get("port") for p in ports if p.get("name") == "http"), None)
    if port is None and ports:
        port = ports[0].get("port")
    if not port:
        return []
    v6 = slice_.get("addressType") == "IPv6"
    urls = []
    for ep in slice_.get("endpoints") or []:
        if (ep.get("conditions") or {}).get("ready") is False:
            continue
        for addr in (ep.get("addresses") or [])[:1]:
            urls.append(f"http://[{addr}]:{port}" if v6 else f"http://{addr}:{port}")
    return urls


# -------------------------------------------------------------------------- watching


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


class _Watch:
    """One list+watch loop over a collection, feeding a cache dict."""

    def __init__(
        self,
        discovery: KubernetesDiscovery,
        path: str,
        params: dict[str, str],
        cache: dict[tuple[str, str], dict[str, Any]],
        what: str,
    ) -> None:
        self._d = discovery
        self.path = path
        self.params = params
        self.cache = cache
        self.what = what
        self.synced = asyncio.Event()
        self.relists = 0
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"hedge-watch-{self.what}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        backoff = self._d.min_backoff_s
        version: str | None = None
        while True:
            try:
                if version is None:
                    version = await self._list()
                    self.relists += 1
                version = await self._watch(version)
                backoff = self._d.min_backoff_s
            except WatchExpired:
                log.info("watch of %s expired (410 Gone); listing again", self.what)
                version = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # network, API server restart, bad data: back off
                log.warning("watch of %s failed (%s); retrying in %.1fs", self.what, exc, backoff)
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self._d.max_backoff_s)

    async def _list(self) -> str:
        doc = await self._d.get_json(self.path, self.params)
        items = doc.get("items") or []
        self.cache.clear()
        for item in items:
            self.cache[_key(item)] = item
        self.synced.set()
        self._d.changed()
        return str((doc.get("metadata") or {}).get("resourceVersion", ""))

    async def _watch(self, version: str) -> str:
        params = dict(self.params)
        params.update(
            watch="1",
            resourceVersion=version,
            allowWatchBookmarks="true",
            timeoutSeconds=str(WATCH_TIMEOUT_S),
        )
        async for event in self._d.stream_lines(self.path, params):
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise WatchExpired()
                raise RuntimeError(f"watch error: {obj.get('message', obj)}")
            new_version = (obj.get("metadata") or {}).get("resourceVersion")
            if new_version:
                version = str(new_version)
            if kind in ("ADDED", "MODIFIED"):
                self.cache[_key(obj)] = obj
                self._d.changed()
            elif kind == "DELETED":
                self.cache.pop(_key(obj), None)
                self._d.changed()
        return version


class KubernetesDiscovery:
    def __init__(
        self,
        table: RoutingTable,
        secrets: SecretCache,
        credentials: KubeCredentials,
        *,
        namespaces: list[str] | None = None,
        client_keys_secret: str | None = None,
        auth: ClientAuth | None = None,
        min_backoff_s: float = 0.2,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.table = table
        self.secrets = secrets
        self.creds = credentials
        self.namespaces = namespaces or [""]
        self.auth = auth
        self.client_keys_secret: tuple[str, str] | None = None
        if client_keys_secret:
            ns, _, name = client_keys_secret.partition("/")
            if not name:
                raise KubeConfigError("--api-keys-secret must be NAMESPACE/NAME")
            self.client_keys_secret = (ns, name)
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.model_deployments: dict[tuple[str, str], dict[str, Any]] = {}
        self.slices: dict[tuple[str, str], dict[str, Any]] = {}
        self._secret_caches: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = {}
        self._watches: list[_Watch] = []
        self._secret_watches: dict[tuple[str, str], _Watch] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self.on_change: Callable[[], Awaitable[None]] | None = None

    @classmethod
    def from_environment(
        cls,
        table: RoutingTable,
        secrets: SecretCache,
        *,
        kubeconfig: str | None = None,
        namespaces: list[str] | None = None,
        client_keys_secret: str | None = None,
        auth: ClientAuth | None = None,
    ) -> KubernetesDiscovery:
        return cls(
            table,
            secrets,
            load_credentials(kubeconfig),
            namespaces=namespaces,
            client_keys_secret=client_keys_secret,
            auth=auth,
        )

    # -- HTTP ---------------------------------------------------------------------------

    async def get_json(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        assert self._session is not None
        async with self._session.get(
            self.creds.server + path,
            params=params,
            headers=self.creds.headers(),
            timeout=aiohttp.ClientTimeout(total=30),
        ) as r:
            if r.status == 410:
                raise WatchExpired()
            if r.status != 200:
                raise RuntimeError(f"GET {path}: HTTP {r.status}")
            doc = await r.json(content_type=None)
        if not isinstance(doc, dict):
            raise RuntimeError(f"GET {path}: not a JSON object")
        return doc

    async def stream_lines(self, path: str, params: dict[str, str]) -> Any:
        assert self._session is not None
        async with self._session.get(
            self.creds.server + path,
            params=params,
            headers=self.creds.headers(),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=10, sock_read=WATCH_TIMEOUT_S + 30
            ),
        ) as r:
            if r.status == 410:
                raise WatchExpired()
            if r.status != 200:
                raise RuntimeError(f"watch {path}: HTTP {r.status}")
            buffer = b""
            async for chunk in r.content.iter_any():
                buffer += chunk
                while True:
                    end = buffer.find(b"\n")
                    if end < 0:
                        break
                    line, buffer = buffer[:end], buffer[end + 1 :]
                    if line.strip():
                        yield json.loads(line)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.creds.ssl, limit=0)
        )
        for ns in self.namespaces:
            prefix = f"/namespaces/{quote(ns)}" if ns else ""
            self._watches.append(
                _Watch(
                    self,
                    f"/apis/{GROUP_VERSION}{prefix}/{MD_PLURAL}",
                    {},
                    self.model_deployments,
                    f"modeldeployments{'@' + ns if ns else ''}",
                )
            )
            self._watches.append(
                _Watch(
                    self,
                    f"/apis/discovery.k8s.io/v1{prefix}/endpointslices",
                    {"labelSelector": MD_LABEL},
                    self.slices,
                    f"endpointslices{'@' + ns if ns else ''}",
                )
            )
        for w in self._watches:
            w.start()
        if self.client_keys_secret is not None:
            self._watch_secret(self.client_keys_secret)

    async def stop(self) -> None:
        for w in [*self._watches, *self._secret_watches.values()]:
            await w.stop()
        self._watches.clear()
        self._secret_watches.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
            # TLS transports finish closing asynchronously; aiohttp's documented graceful
            # shutdown gives them a moment, so the sockets are closed when stop() returns.
            if self.creds.server.startswith("https://"):
                await asyncio.sleep(0.25)

    def synced(self) -> bool:
        """Whether every watched collection has been listed at least once."""
        return all(w.synced.is_set() for w in self._watches)

    async def wait_synced(self, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            for w in self._watches:
                await w.synced.wait()

    # -- caches -> table ----------------------------------------------------------------

    def _watch_secret(self, ref: tuple[str, str]) -> None:
        if ref in self._secret_watches:
            return
        ns, name = ref
        cache: dict[tuple[str, str], dict[str, Any]] = {}
        self._secret_caches[ref] = cache
        w = _Watch(
            self,
            f"/api/v1/namespaces/{quote(ns)}/secrets",
            {"fieldSelector": f"metadata.name={name}"},
            cache,
            f"secret {ns}/{name}",
        )
        self._secret_watches[ref] = w
        w.start()

    def changed(self) -> None:
        """Rebuild the routing table and the secret caches from what the watches hold."""
        backends: dict[tuple[str, str], list[str]] = {}
        for (ns, _), s in self.slices.items():
            md_name = ((s.get("metadata") or {}).get("labels") or {}).get(MD_LABEL)
            if md_name:
                backends.setdefault((ns, md_name), []).extend(ready_endpoints(s))
        # Oldest ModelDeployment first: it keeps a model name that a newer one also claims.
        mds = sorted(
            self.model_deployments.values(),
            key=lambda m: (_created(m.get("metadata") or {}), _key(m)),
        )
        specs: list[RouteSpec] = []
        wanted: set[tuple[str, str]] = set()
        for md in mds:
            specs.extend(routes_for(md, backends.get(_key(md), ())))
            for spec in specs[-1:]:
                for p in spec.fallback:
                    if p.api_key is not None and p.api_key.namespace and p.api_key.name:
                        wanted.add((p.api_key.namespace, p.api_key.name))
        self.table.replace(specs)
        for ref in wanted:
            self._watch_secret(ref)
        if self.client_keys_secret is not None:
            wanted.add(self.client_keys_secret)
        for ref in [r for r in self._secret_watches if r not in wanted]:
            # No ModelDeployment references this Secret any more: stop watching it.
            task = asyncio.get_running_loop().create_task(self._secret_watches.pop(ref).stop())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            self._secret_caches.pop(ref, None)
            self.secrets.set_secret(ref[0], ref[1], None)
        for ref, cache in self._secret_caches.items():
            secret = cache.get(ref)
            data = _decode(secret) if secret is not None else None
            self.secrets.set_secret(ref[0], ref[1], data)
            if ref == self.client_keys_secret and self.auth is not None:
                keys: list[str] = []
                for value in (data or {}).values():
                    keys.extend(split_keys(value))
                self.auth.set_keys(keys)


def _decode(secret: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in (secret.get("data") or {}).items():
        with contextlib.suppress(ValueError, TypeError):
            out[str(k)] = base64.b64decode(v).decode("utf-8")
    for k, v in (secret.get("stringData") or {}).items():
        out[str(k)] = str(v)
    return out
