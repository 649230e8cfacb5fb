"""The only module of the operator that talks to the Kubernetes API (kopf's watches aside).

Plain aiohttp against the API server with the credentials kopf logged in with: server-side
apply with the `hedge-operator` field manager, deletes, status patches, Events, and Secret
key look-ups that never keep or return a value.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import kopf

from hedge_core.api import API_VERSION, FIELD_MANAGER, KIND, PLURAL
from hedge_operator import metrics

# (apiVersion, kind) -> plural
RESOURCES: dict[tuple[str, str], str] = {
    ("apps/v1", "Deployment"): "deployments",
    ("v1", "Service"): "services",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaims",
    ("v1", "Secret"): "secrets",
    ("v1", "Event"): "events",
    (API_VERSION, KIND): PLURAL,
}

REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)


class ApiError(Exception):
    """The API server refused a request."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"HTTP {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def retryable(self) -> bool:
        """Server-side or throttling trouble: try again later, the spec is not at fault."""
        return self.status >= 500 or self.status in (409, 429)


def object_path(
    api_version: str,
    kind: str,
    namespace: str | None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    plural = RESOURCES[(api_version, kind)]
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


class Kube:
    """An API client holding one pooled aiohttp session.

    `login` returns fresh credentials (kopf's own login functions); it is called again once
    when the API server answers 401, as kopf does for its watches.
    """

    def __init__(self, login: Callable[[], kopf.ConnectionInfo | None]) -> None:
        self._login = login
        self._info: kopf.ConnectionInfo | None = None
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()
        self.instance = os.environ.get("POD_NAME") or socket.gethostname()

    def use(self, info: kopf.ConnectionInfo) -> None:
        """Switch to these credentials (the next request opens a new session)."""
        self._info = info
        if self._session is not None:
            old, self._session = self._session, None
            asyncio.get_running_loop().create_task(old.close())

    async def _session_and_server(self) -> tuple[aiohttp.ClientSession, str]:
        async with self._lock:
            if self._info is None:
                info = self._login()
                if info is None:
                    raise RuntimeError("no Kubernetes credentials (kubeconfig or in-cluster)")
                self._info = info
            if self._session is None:
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=self._info.as_ssl_context(), limit=32),
                    headers={**self._info.as_http_headers(), "User-Agent": "hedge-operator"},
                    timeout=REQUEST_TIMEOUT,
                )
            return self._session, self._info.server.rstrip("/")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        resource: str,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        missing_ok: bool = False,
    ) -> dict[str, Any] | None:
        """One API call; returns the decoded body (None for a tolerated 404)."""
        data = None if body is None else json.dumps(body)
        for attempt in (1, 2):
            session, server = await self._session_and_server()
            headers = {"Content-Type": content_type} if data is not None else {}
            async with session.request(
                method, server + path, params=params, data=data, headers=headers
            ) as response:
                metrics.API_REQUESTS.labels(method, resource, str(response.status)).inc()
                if response.status == 401 and attempt == 1:
                    fresh = self._login()
                    if fresh is not None:
                        self.use(fresh)
                    continue
                if response.status == 404 and missing_ok:
                    return None
                text = await response.text()
                if response.status >= 400:
                    raise _api_error(response.status, text)
                return json.loads(text) if text else {}
        raise ApiError(401, "Unauthorized", "credentials refused twice")

    # ---------------------------------------------------------------------- children

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply, taking over conflicting fields (we own these objects)."""
        meta = manifest["metadata"]
        path = object_path(
            manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"]
        )
        result = await self.request(
            "PATCH",
            path,
            resource=RESOURCES[(manifest["apiVersion"], manifest["kind"])],
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=manifest,
            content_type="application/apply-patch+yaml",
        )
        return result or {}

    async def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        await self.request(
            "PATCH",
            object_path("apps/v1", "Deployment", namespace, name),
            resource="deployments",
            params={"fieldManager": FIELD_MANAGER},
            body={"spec": {"replicas": replicas}},
            content_type="application/merge-patch+json",
            missing_ok=True,
        )

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        await self.request(
            "DELETE",
            object_path(api_version, kind, namespace, name),
            resource=RESOURCES[(api_version, kind)],
            body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
            missing_ok=True,
        )

    async def secret_keys(self, namespace: str, name: str) -> frozenset[str] | None:
        """The keys of a Secret, or None if it does not exist. Values are dropped at once."""
        body = await self.request(
            "GET",
            object_path("v1", "Secret", namespace, name),
            resource="secrets",
            missing_ok=True,
        )
        if body is None:
            return None
        keys = frozenset((body.get("data") or {}).keys()) | frozenset(
            (body.get("stringData") or {}).keys()
        )
        body.clear()
        return keys

    # ------------------------------------------------------------------ the resource

    async def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        await self.request(
            "PATCH",
            object_path(API_VERSION, KIND, namespace, name, "status"),
            resource=f"{PLURAL}/status",
            body={"status": patch},
            content_type="application/merge-patch+json",
            missing_ok=True,
        )

    async def post_event(
        self, involved: Mapping[str, Any], type_: str, reason: str, message: str
    ) -> None:
        """A core/v1 Event about a ModelDeployment (`involved` is its metadata)."""
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        namespace = str(involved["namespace"])
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{involved['name']}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": involved["name"],
                "namespace": namespace,
                "uid": involved.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": self.instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self.request(
            "POST", object_path("v1", "Event", namespace), resource="events", body=event
        )


def _api_error(status: int, text: str) -> ApiError:
    try:
        body = json.loads(text)
    except ValueError:
        return ApiError(status, "", text[:500])
    if not isinstance(body, dict):
        return ApiError(status, "", text[:500])
    return ApiError(status, str(body.get("reason", "")), str(body.get("message", ""))[:1000])
