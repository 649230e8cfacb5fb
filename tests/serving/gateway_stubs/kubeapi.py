"""A fake Kubernetes API server: list and watch with resourceVersions, 410 Gone, restarts.

Just enough of the real semantics for the gateway's discovery: collections at cluster and
namespace scope, `labelSelector` (comma-separated `key` existence and `key=value`
requirements) and `fieldSelector=metadata.name=<n>`,
list `metadata.resourceVersion`, `watch=1&resourceVersion=N` streaming every later event
(ADDED/MODIFIED/DELETED, BOOKMARK when asked), an ERROR event with code 410 for a
compacted version, bearer-token auth, and `drop_watches()` / restarts that cut streams.
"""

from __future__ import annotations

import asyncio
import copy
import json
import ssl
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

RESOURCES = {
    ("apis/hedge.dev/v1alpha1", "modeldeployments"): "ModelDeployment",
    ("apis/discovery.k8s.io/v1", "endpointslices"): "EndpointSlice",
    ("api/v1", "secrets"): "Secret",
    ("apis/hedge.dev/v1alpha1", "clientpolicies"): "ClientPolicy",
}


class FakeKubeAPI:
    def __init__(self, token: str | None = "test-token") -> None:
        self.token = token
        self.version = 100
        self.compacted = 0
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
            k: {} for k in RESOURCES.values()
        }
        self.events: list[tuple[int, str, str, dict[str, Any]]] = []  # rv, type, kind, obj
        self._changed = asyncio.Condition()
        self._watch_tasks: set[asyncio.Task[Any]] = set()
        self.requests: list[str] = []
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.port = 0
        self.kubeconfig: Path | None = None

    def app(self) -> web.Application:
        app = web.Application()
        for (prefix, plural), _ in RESOURCES.items():
            app.router.add_get(f"/{prefix}/{plural}", self._handle)
            app.router.add_get(f"/{prefix}/namespaces/{{ns}}/{plural}", self._handle)
        return app

    async def start(self, port: int = 0, tls: ssl.SSLContext | None = None) -> FakeKubeAPI:
        """Serves on 127.0.0.1 (https:// with `tls`, e.g. one requiring client certs)."""
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True, ssl_context=tls)
        await site.start()
        self.runner = runner
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        return self

    async def stop(self) -> None:
        self.drop_watches()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    # -- mutations --------------------------------------------------------------------

    async def put(self, kind: str, obj: dict[str, Any]) -> None:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        key = (meta.get("namespace", ""), meta["name"])
        self.version += 1
        meta["resourceVersion"] = str(self.version)
        meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        kind_type = "MODIFIED" if key in self.objects[kind] else "ADDED"
        self.objects[kind][key] = obj
        await self._emit(kind_type, kind, obj)

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        obj = self.objects[kind].pop((namespace, name))
        self.version += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.version)
        await self._emit("DELETED", kind, obj)

    def compact(self) -> None:
        """Forget history: watches from any older resourceVersion get 410 Gone."""
        self.compacted = self.version
        self.events.clear()

    def drop_watches(self) -> None:
        for t in list(self._watch_tasks):
            t.cancel()

    async def _emit(self, type_: str, kind: str, obj: dict[str, Any]) -> None:
        self.events.append((self.version, type_, kind, obj))
        async with self._changed:
            self._changed.notify_all()

    # -- serving ----------------------------------------------------------------------

    @staticmethod
    def _matches(obj: dict[str, Any], ns: str | None, query: Any) -> bool:
        meta = obj.get("metadata") or {}
        if ns is not None and meta.get("namespace") != ns:
            return False
        labels = meta.get("labels") or {}
        for requirement in filter(None, (query.get("labelSelector") or "").split(",")):
            key, eq, value = requirement.partition("=")
            if key not in labels or (eq and labels[key] != value):
                return False
        field = query.get("fieldSelector")
        if field:
            name = field.removeprefix("metadata.name=")
            if meta.get("name") != name:
                return False
        return True

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.token is not None and request.headers.get("Authorization") != (
            f"Bearer {self.token}"
        ):
            return web.json_response({"kind": "Status", "code": 401}, status=401)
        self.requests.append(request.path_qs)
        plural = request.path.rstrip("/").rsplit("/", 1)[1]
        kind = next(k for (_, p), k in RESOURCES.items() if p == plural)
        ns = request.match_info.get("ns")
        if request.query.get("watch") not in ("1", "true"):
            items = [o for o in self.objects[kind].values() if self._matches(o, ns, request.query)]
            return web.json_response(
                {
                    "kind": kind + "List",
                    "metadata": {"resourceVersion": str(self.version)},
                    "items": items,
                }
            )
        return await self._watch(request, kind, ns)

    async def _watch(self, request: web.Request, kind: str, ns: str | None) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or self.version)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        if since < self.compacted:
            status = {
                "kind": "Status",
                "code": 410,
                "reason": "Expired",
                "message": f"too old resource version: {since} ({self.compacted})",
            }
            await resp.write(json.dumps({"type": "ERROR", "object": status}).encode() + b"\n")
            return resp
        task = asyncio.current_task()
        assert task is not None
        self._watch_tasks.add(task)
        timeout = float(request.query.get("timeoutSeconds") or 300)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for rv, type_, k, obj in list(self.events):
                        if rv > since and k == kind and self._matches(obj, ns, request.query):
                            line = json.dumps({"type": type_, "object": obj}).encode() + b"\n"
                            await resp.write(line)
                        since = max(since, rv)
                    async with self._changed:
                        await self._changed.wait()
        except (TimeoutError, asyncio.CancelledError, ConnectionError):
            pass
        finally:
            self._watch_tasks.discard(task)
        if request.transport is not None:
            request.transport.close()  # end the stream abruptly, as a restarting server does
        return resp


def kubeconfig_for(api: FakeKubeAPI, directory: Path, user: dict[str, Any] | None = None) -> Path:
    """A kubeconfig for the fake server (plain http://); by default its bearer token."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "fake",
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        "clusters": [{"name": "fake", "cluster": {"server": api.url}}],
        "users": [{"name": "fake", "user": user if user is not None else {"token": api.token}}],
    }
    path = directory / "fake-kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return path


def model_deployment(
    name: str,
    namespace: str = "team-a",
    *,
    model_name: str | None = None,
    adapters: tuple[str, ...] = (),
    fallback: list[dict[str, Any]] | None = None,
    serving: dict[str, Any] | None = None,
    created: str = "2026-01-01T00:00:00Z",
) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"source": f"hf://org/{name}"}}
    if model_name:
        spec["model"]["name"] = model_name
    if adapters:
        spec["adapters"] = [{"name": a, "source": f"hf://org/{a}"} for a in adapters]
    if fallback:
        spec["fallback"] = {"providers": fallback}
    if serving:
        spec["serving"] = serving
    return {
        "apiVersion": "hedge.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created},
        "spec": spec,
    }


PROVIDER_KEY = {"hedge.dev/provider-key": "true"}  # the opt-in label of provider-key Secrets


def provider_key_secret(name: str, namespace: str, data: dict[str, str]) -> dict[str, Any]:
    """A Secret that opted in to be read as a fallback provider key."""
    return secret(name, namespace, data, PROVIDER_KEY)


def endpoint_slice(
    md: str,
    namespace: str,
    endpoints: list[tuple[str, int, bool]],
    suffix: str = "abc",
    service: str | None = None,
    revision: str | None = None,
) -> dict[str, Any]:
    """endpoints: (ip, port, ready). All endpoints of one slice share a port, as in k8s.
    `service`: the Service it is for (default: the ModelDeployment's shared one, `md`, or
    with `revision` the revision's `<md>-<revision>`)."""
    labels = {"hedge.dev/model-deployment": md}
    if revision:
        labels["hedge.dev/revision"] = revision
    labels["kubernetes.io/service-name"] = service or (f"{md}-{revision}" if revision else md)
    port = endpoints[0][1] if endpoints else 8000
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{md}-{suffix}",
            "namespace": namespace,
            "labels": labels,
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": ready, "serving": ready}}
            for ip, _, ready in endpoints
        ],
    }


def secret(
    name: str, namespace: str, data: dict[str, str], labels: dict[str, str] | None = None
) -> dict[str, Any]:
    import base64

    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        meta["labels"] = labels
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }
