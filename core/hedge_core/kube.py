"""Hedge's one Kubernetes client: credentials, requests, and the list+watch loop.

Everything that talks to an API server (the operator, the gateway's discovery, the local
cluster's pod runner and bring-up, the tests) goes through this module, which rests on
`kubernetes_asyncio`:

- **credentials** come from its loaders, so kubeconfigs behave as with kubectl: `exec`
  credential plugins (EKS, GKE, AKS), OIDC refresh, several files in `KUBECONFIG`,
  `proxy-url`, `tls-server-name`, `tokenFile`, and in-cluster ServiceAccount tokens that
  rotate. In-cluster comes first unless a kubeconfig is named. Client keys that the
  library writes to disk (`client-key-data`, exec plugins returning certificates) go to a
  private directory that is removed as soon as the TLS context holds them.
- **requests** go through its `ApiClient.call_api` without model deserialisation
  (`_preload_content=False`; the callers want plain JSON), on one pooled aiohttp session.
  A 401 or an expiring exec-plugin token logs in again, once, without a restart.
- **ListWatch** is the one list+watch loop: paginated list, watch from its
  resourceVersion with bookmarks, resume after a stream ends, a fresh list replacing the
  cache on 410 Gone, exponential backoff with jitter, and lines bounded by aiohttp's reader.
- **BlockingKube** is the same client for blocking callers (cluster bring-up, tests).

This module must not import kopf: the gateway never loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import inspect
import json
import logging
import os
import random
import shutil
import ssl
import tempfile
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp

if TYPE_CHECKING:  # the library costs ~0.5 s to import: only callers that talk to a cluster pay
    from kubernetes_asyncio.client import ApiClient, Configuration

log = logging.getLogger("hedge.kube")

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=10)
#: Seconds before a credential's expiry at which it is refreshed.
EXPIRY_SKEW = 60.0
#: Seconds an old connection pool stays open after a re-login, so requests and watches
#: in flight on it finish instead of failing.
OLD_CLIENT_GRACE = 30.0
WATCH_TIMEOUT_S = 300  # server side; the watch is then resumed from the last resourceVersion
PAGE_SIZE = 500

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


class KubeConfigError(Exception):
    """No usable credentials: no in-cluster account and no usable kubeconfig."""


class ApiError(Exception):
    """The API server answered with an error status (a `Status` object, usually).

    Raised as the subclass its status names (kopf's client errors are the model):

        ApiError
        ├── ClientError         4xx: the request is at fault
        │   ├── Forbidden       403
        │   ├── NotFound        404
        │   ├── Conflict        409 (a stale resourceVersion, or AlreadyExists)
        │   ├── Gone            410
        │   └── Throttled       429
        └── ServerError         5xx

    A status outside 400-599 (or a watch ERROR event without a code: 0) stays a plain
    ApiError. `Expired` (410 on a list or watch, where the caller lists again) is apart.
    """

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"HTTP {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def retryable(self) -> bool:
        """Server-side or throttling trouble: try again later, the request is not at fault."""
        return self.status >= 500 or self.status in (409, 429)

    @staticmethod
    def from_status(status: int, reason: str, message: str) -> ApiError:
        """The error of the class `status` names (`Conflict` for 409, `ServerError` for 503…)."""
        return _class_for(status)(status, reason, message)

    @staticmethod
    def from_body(status: int, text: str) -> ApiError:
        """The error for a response's status and body (a `Status` object, or any text)."""
        try:
            body = json.loads(text)
        except ValueError:
            return ApiError.from_status(status, "", text[:500])
        if not isinstance(body, dict):
            return ApiError.from_status(status, "", text[:500])
        return ApiError.from_status(
            status, str(body.get("reason", "")), str(body.get("message", ""))[:1000]
        )


class ClientError(ApiError):
    """4xx: the request is at fault (retrying the same request fails the same way, except for
    a `Conflict` or `Throttled`)."""


class Forbidden(ClientError):
    """403: RBAC does not allow it."""


class NotFound(ClientError):
    """404: no such object (or collection)."""


class Conflict(ClientError):
    """409: the object changed since the version a write was computed from, or already
    exists."""


class Gone(ClientError):
    """410: the resourceVersion is too old (outside list and watch, which raise Expired)."""


class Throttled(ClientError):
    """429: too many requests (API priority and fairness); try again later."""


class ServerError(ApiError):
    """5xx: the API server (or what is behind it) failed; try again later."""


_BY_STATUS: dict[int, type[ApiError]] = {
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    429: Throttled,
}


def _class_for(status: int) -> type[ApiError]:
    exact = _BY_STATUS.get(status)
    if exact is not None:
        return exact
    if 400 <= status < 500:
        return ClientError
    if 500 <= status < 600:
        return ServerError
    return ApiError


#: What a caller catches to mean "the API could not be reached or answered with an error":
#: every `ApiError`, and what aiohttp, timeouts and sockets raise on the way.
TRANSIENT: tuple[type[ApiError], type[aiohttp.ClientError], type[TimeoutError], type[OSError]] = (
    ApiError,
    aiohttp.ClientError,
    TimeoutError,
    OSError,
)


class Expired(Exception):
    """410 Gone: the resourceVersion (or continue token) is too old; list again."""


def resource_path(
    api_version: str,
    plural: str,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """`/api/v1/namespaces/ns/pods/x/status`, `/apis/apps/v1/deployments`, …"""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


# ------------------------------------------------------------------------- credentials


@dataclass(frozen=True)
class Credentials:
    """What one login produced. The TLS context holds any client key in memory only."""

    server: str
    ssl_context: ssl.SSLContext | None  # None: plain http://
    authorization: str | None  # the Authorization header value, if any
    expiration: datetime.datetime | None = None  # when an exec-plugin token runs out
    namespace: str | None = None  # the kubeconfig context's namespace
    proxy: str | None = None
    tls_server_name: str | None = None
    source: str = ""  # "in-cluster" or the kubeconfig path(s), for messages

    def headers(self) -> dict[str, str]:
        return {"Authorization": self.authorization} if self.authorization else {}

    def expires_soon(self, skew: float = EXPIRY_SKEW) -> bool:
        if self.expiration is None:
            return False
        now = datetime.datetime.now(datetime.UTC)
        return self.expiration - datetime.timedelta(seconds=skew) <= now


def _kubeconfig_paths(kubeconfig: str | None) -> str:
    if kubeconfig:
        return kubeconfig
    env = os.environ.get("KUBECONFIG", "")
    return env or str(Path.home() / ".kube" / "config")


def _in_cluster(kubeconfig: str | None) -> bool:
    return (
        kubeconfig is None
        and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
        and (SERVICE_ACCOUNT_DIR / "token").exists()
    )


async def _load_configuration(kubeconfig: str | None, key_dir: str) -> tuple[Configuration, Any]:
    """The library's Configuration for in-cluster or the (merged) kubeconfig, and the
    loader (None in-cluster). Files the library writes go under `key_dir`."""
    from kubernetes_asyncio.client import Configuration
    from kubernetes_asyncio.config.config_exception import ConfigException
    from kubernetes_asyncio.config.incluster_config import InClusterConfigLoader
    from kubernetes_asyncio.config.kube_config import KubeConfigLoader, KubeConfigMerger

    config = Configuration()
    if _in_cluster(kubeconfig):
        try:
            InClusterConfigLoader(
                token_filename=str(SERVICE_ACCOUNT_DIR / "token"),
                cert_filename=str(SERVICE_ACCOUNT_DIR / "ca.crt"),
            ).load_and_set(config)
        except ConfigException as exc:
            raise KubeConfigError(f"in-cluster credentials: {exc}") from None
        return config, None
    paths = _kubeconfig_paths(kubeconfig)
    try:
        merged = KubeConfigMerger(paths)
        if merged.config is None:
            raise KubeConfigError(f"no in-cluster credentials and no kubeconfig found at {paths}")
        loader = KubeConfigLoader(
            config_dict=merged.config, config_base_path=None, temp_file_path=key_dir
        )
        await loader.load_and_set(config)
    except KubeConfigError:
        raise
    except (ConfigException, OSError, ValueError, KeyError, TypeError) as exc:
        raise KubeConfigError(f"kubeconfig {paths}: {exc}") from None
    except Exception as exc:  # the yaml parser, an exec plugin that cannot start, …
        raise KubeConfigError(f"kubeconfig {paths}: {type(exc).__name__}: {exc}") from None
    return config, loader


def _forget_library_temp_files(key_dir: str) -> None:
    """The library remembers the temp files it wrote (by content) to reuse them; once the
    directory is gone those names must not be handed out again."""
    from kubernetes_asyncio.config import kube_config

    stale = [k for k, v in kube_config._temp_files.items() if v.startswith(key_dir + os.sep)]
    for key in stale:
        del kube_config._temp_files[key]


def _ssl_context(config: Configuration) -> ssl.SSLContext:
    """The TLS context the library's REST client builds from the same Configuration."""
    ctx = ssl.create_default_context(cafile=config.ssl_ca_cert)
    if config.cert_file:
        ctx.load_cert_chain(config.cert_file, keyfile=config.key_file)
    if not config.verify_ssl:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def log_in(
    kubeconfig: str | None, user_agent: str, max_connections: int = 0
) -> tuple[ApiClient, Credentials]:
    """Runs the loaders once: a fresh `ApiClient` and the `Credentials` it uses.

    The TLS contexts are built while the library's key files exist; then the private
    directory holding them is deleted.
    """
    from kubernetes_asyncio.client import ApiClient

    key_dir = tempfile.mkdtemp(prefix="hedge-kube-")  # 0700: only this user
    try:
        config, loader = await _load_configuration(kubeconfig, key_dir)
        host = str(config.host).rstrip("/")
        # The library defaults to 5 per CPU; every open watch holds one. 0: no limit.
        config.connection_pool_maxsize = max_connections
        try:
            # kopf gets its own session on the same credentials (see handlers.login).
            tls = _ssl_context(config) if host.startswith("https://") else None
            client = ApiClient(configuration=config)
        except (ssl.SSLError, OSError) as exc:
            raise KubeConfigError(f"TLS settings of {config.host}: {exc}") from None
    finally:
        shutil.rmtree(key_dir, ignore_errors=True)
        _forget_library_temp_files(key_dir)
    client.user_agent = user_agent
    token = await config.get_api_key_with_prefix("BearerToken")
    expiry = getattr(loader, "exec_plugin_expiry", None) if loader is not None else None
    if isinstance(expiry, datetime.datetime) and expiry.tzinfo is None:
        expiry = expiry.replace(tzinfo=datetime.UTC)
    namespace = None
    if loader is not None and loader.current_context:
        namespace = (loader.current_context.get("context") or {}).get("namespace")
    creds = Credentials(
        server=host,
        ssl_context=tls,
        authorization=str(token) if token else None,
        expiration=expiry if isinstance(expiry, datetime.datetime) else None,
        namespace=str(namespace) if namespace else None,
        proxy=config.proxy or None,
        tls_server_name=config.tls_server_name or None,
        source="in-cluster" if loader is None else _kubeconfig_paths(kubeconfig),
    )
    return client, creds


# ------------------------------------------------------------------------------ client

ResponseHook = Callable[[str, str, int], None]


class Kube:
    """An API client: one pooled session, re-login on 401 and before credentials expire.

    `on_response(method, resource, status)` is called for every response (metrics).
    """

    def __init__(
        self,
        kubeconfig: str | None = None,
        *,
        user_agent: str = "hedge",
        on_response: ResponseHook | None = None,
        max_connections: int = 0,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.max_connections = max_connections
        self.user_agent = user_agent
        self.on_response = on_response
        self._client: ApiClient | None = None
        self._credentials: Credentials | None = None
        self._generation = 0
        self._lock = asyncio.Lock()
        self._retired: set[asyncio.Task[None]] = set()
        self.logins = 0

    @property
    def credentials(self) -> Credentials:
        if self._credentials is None:
            raise RuntimeError("Kube.login() has not run yet")
        return self._credentials

    async def login(self) -> Credentials:
        """Loads credentials afresh (runs exec plugins again) and switches to them."""
        async with self._lock:
            await self._login_locked()
        return self.credentials

    async def _login_locked(self) -> None:
        client, creds = await log_in(self.kubeconfig, self.user_agent, self.max_connections)
        old, self._client, self._credentials = self._client, client, creds
        self._generation += 1
        self.logins += 1
        if old is not None:
            self._retire(old)
        log.debug("logged in to %s (%s)", creds.server, creds.source)

    def _retire(self, old: ApiClient) -> None:
        async def close_later() -> None:
            try:
                await asyncio.sleep(OLD_CLIENT_GRACE)
            finally:
                await old.close()

        task = asyncio.get_running_loop().create_task(close_later())
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def _current(self) -> tuple[ApiClient, int]:
        async with self._lock:
            if self._client is None or self.credentials.expires_soon():
                await self._login_locked()
            assert self._client is not None
            return self._client, self._generation

    async def _relogin_after_401(self, generation: int) -> None:
        async with self._lock:
            if generation == self._generation:  # nobody else has logged in since
                log.info("the API server refused our credentials (401); logging in again")
                await self._login_locked()

    async def close(self) -> None:
        for task in list(self._retired):
            task.cancel()
        await asyncio.gather(*self._retired, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
            self._client = None

    # -- requests ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None,
        body: Any,
        content_type: str,
        timeout: aiohttp.ClientTimeout,
        resource: str,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        for attempt in (1, 2):
            client, generation = await self._current()
            try:
                response: aiohttp.ClientResponse = await client.call_api(
                    path,
                    method,
                    query_params=list((params or {}).items()),
                    header_params={"Accept": JSON, "Content-Type": content_type},
                    body=body,
                    auth_settings=["BearerToken"],
                    _preload_content=False,
                    _request_timeout=timeout,
                )
            except aiohttp.ServerDisconnectedError:
                # A pooled connection the server closed (e.g. it restarted): a read is safe
                # to send again at once; a write is left to the caller.
                if method != "GET" or attempt == 2:
                    raise
                continue
            if self.on_response is not None:
                self.on_response(method, resource, response.status)
            if response.status == 401 and attempt == 1:
                response.release()
                await self._relogin_after_401(generation)
                continue
            try:
                yield response
            finally:
                response.release()
            return

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = JSON,
        missing_ok: bool = False,
        timeout: aiohttp.ClientTimeout = REQUEST_TIMEOUT,
        resource: str = "",
        raw: bool = False,
    ) -> Any:
        """One API call; the decoded JSON body, or the text with `raw` (`/readyz`,
        `/metrics`); None for a tolerated 404. Raises ApiError."""
        async with self._send(
            method,
            path,
            params=params,
            body=body,
            content_type=content_type,
            timeout=timeout,
            resource=resource,
        ) as response:
            if response.status == 404 and missing_ok:
                return None
            text = await response.text()
            if response.status >= 400:
                raise ApiError.from_body(response.status, text)
        if raw:
            return text
        return json.loads(text) if text else {}

    async def get(self, path: str, *, missing_ok: bool = False, resource: str = "") -> Any:
        return await self.request("GET", path, missing_ok=missing_ok, resource=resource)

    async def apply(
        self, path: str, manifest: Mapping[str, Any], *, field_manager: str, resource: str = ""
    ) -> Any:
        """Server-side apply, taking over conflicting fields (the caller owns the object)."""
        return await self.request(
            "PATCH",
            path,
            params={"fieldManager": field_manager, "force": "true"},
            body=manifest,
            content_type=APPLY_PATCH,
            resource=resource,
        )

    async def patch(
        self,
        path: str,
        body: Mapping[str, Any],
        *,
        content_type: str = MERGE_PATCH,
        field_manager: str | None = None,
        missing_ok: bool = False,
        resource: str = "",
    ) -> Any:
        return await self.request(
            "PATCH",
            path,
            params={"fieldManager": field_manager} if field_manager else None,
            body=body,
            content_type=content_type,
            missing_ok=missing_ok,
            resource=resource,
        )

    async def delete(self, path: str, *, resource: str = "") -> Any:
        """Deletes in the background (the garbage collector takes the dependents); a
        missing object is not an error."""
        return await self.request(
            "DELETE",
            path,
            body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
            missing_ok=True,
            resource=resource,
        )

    @contextlib.asynccontextmanager
    async def _get(
        self, path: str, query: Mapping[str, str], timeout: aiohttp.ClientTimeout, resource: str
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A GET whose body the caller reads; 410 Gone raises Expired."""
        async with self._send(
            "GET",
            path,
            params=query,
            body=None,
            content_type=JSON,
            timeout=timeout,
            resource=resource,
        ) as response:
            if response.status == 410:
                raise Expired()
            if response.status >= 400:
                raise ApiError.from_body(response.status, await response.text())
            yield response

    async def list_all(
        self, path: str, params: Mapping[str, str] | None = None, page_size: int = PAGE_SIZE
    ) -> tuple[list[dict[str, Any]], str]:
        """Every item of a collection (paginated) and the list's resourceVersion.
        Raises Expired when a continue token ran out."""
        items: list[dict[str, Any]] = []
        query = dict(params or {})
        query["limit"] = str(page_size)
        while True:
            async with self._get(path, query, REQUEST_TIMEOUT, "list") as response:
                text = await response.text()
            page = json.loads(text)
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            if not meta.get("continue"):
                return items, str(meta.get("resourceVersion", ""))
            query["continue"] = str(meta["continue"])

    async def watch(
        self, path: str, params: Mapping[str, str], version: str, timeout_s: int = WATCH_TIMEOUT_S
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The events of one watch stream from `version`, until the server ends it. Raises
        Expired for 410 Gone. A line longer than aiohttp's buffer limit (4 MiB; etcd caps
        objects at 1.5 MiB) raises an error (LineTooLong) rather than growing the buffer."""
        query = {
            **params,
            "watch": "true",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_s),
        }
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_s + 30)
        async with self._get(path, query, timeout, "watch") as response:
            ended = False
            try:
                while line := await response.content.readline():
                    if line.strip():
                        yield json.loads(line)
                ended = True
            finally:
                if not ended:
                    # An abandoned stream (stopped, cancelled, failed): drop its connection
                    # now. A graceful TLS close would wait on the server, and a loop closed
                    # meanwhile leaves the socket to the garbage collector.
                    conn = response.connection
                    if conn is not None and conn.transport is not None:
                        conn.transport.abort()


# -------------------------------------------------------------------------- list+watch

Key = tuple[str, str]
OnList = Callable[[list[dict[str, Any]]], Awaitable[None] | None]
OnEvent = Callable[[str, dict[str, Any]], Awaitable[None] | None]


def object_key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name", ""))


async def _call(result: Awaitable[None] | None) -> None:
    if inspect.isawaitable(result):
        await result


class ListWatch:
    """Keeps `items` equal to a collection: list, then watch from the list's version.

    `on_list(items)` runs after every (re-)list with the complete new contents (the cache
    is replaced, not merged, so objects deleted while the watch was down disappear);
    `on_event(type, obj)` after each ADDED/MODIFIED/DELETED once `items` reflects it.
    """

    def __init__(
        self,
        kube: Kube,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        name: str | None = None,
        on_list: OnList | None = None,
        on_event: OnEvent | None = None,
        min_backoff_s: float = 0.2,
        max_backoff_s: float = 30.0,
        timeout_s: int = WATCH_TIMEOUT_S,
    ) -> None:
        self.kube = kube
        self.path = path
        self.params = dict(params or {})
        self.name = name or path
        self.on_list = on_list
        self.on_event = on_event
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self.items: dict[Key, dict[str, Any]] = {}
        self.synced = asyncio.Event()
        self.lists = 0
        self.expired = 0  # 410 Gone answers seen
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self.run(), name=f"hedge-watch-{self.name}"
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run(self) -> None:
        backoff = self.min_backoff_s
        version: str | None = None
        while True:
            try:
                if version is None:
                    version = await self._list()
                version = await self._watch(version)
                backoff = self.min_backoff_s
            except Expired:
                self.expired += 1
                log.info("watch of %s expired (410 Gone); listing again", self.name)
                version = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # network, an API server restart, bad data: back off
                log.warning(
                    "watch of %s failed (%s: %s); retrying in ~%.1fs",
                    self.name,
                    type(exc).__name__,
                    exc,
                    backoff,
                )
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self.max_backoff_s)

    async def _list(self) -> str:
        items, version = await self.kube.list_all(self.path, self.params)
        self.items = {object_key(item): item for item in items}
        self.lists += 1
        if self.on_list is not None:
            await _call(self.on_list(items))
        self.synced.set()
        return version

    async def _watch(self, version: str) -> str:
        # aclosing: leaving the loop early (410, an error event, a failed handler, a cancel)
        # closes the stream now, not whenever the generator is garbage-collected.
        events = self.kube.watch(self.path, self.params, version, self.timeout_s)
        async with contextlib.aclosing(events):
            async for event in events:
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Expired()
                    raise ApiError.from_status(
                        int(obj.get("code") or 0),
                        str(obj.get("reason", "")),
                        str(obj.get("message", obj)),
                    )
                if kind in ("ADDED", "MODIFIED"):
                    self.items[object_key(obj)] = obj
                elif kind == "DELETED":
                    self.items.pop(object_key(obj), None)
                if kind != "BOOKMARK" and self.on_event is not None:
                    await _call(self.on_event(str(kind), obj))
                # Only now: an event whose handler failed is delivered again on resume.
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
        return version


# ---------------------------------------------------------------------------- blocking

T = TypeVar("T")


class BlockingKube:
    """The same client for blocking code: its own event loop on a daemon thread."""

    def __init__(self, kubeconfig: str | os.PathLike[str], *, user_agent: str = "hedge") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="hedge-kube", daemon=True
        )
        self._thread.start()
        self.kube = Kube(str(kubeconfig), user_agent=user_agent)

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout + 5)

    @property
    def server(self) -> str:
        if self.kube._credentials is None:
            self._run(self.kube.login(), 30)
        return self.kube.credentials.server

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = JSON,
        timeout: float = 30.0,
    ) -> Any:
        """One blocking API call; the decoded JSON body. Raises ApiError."""
        return self._run(
            self.kube.request(
                method,
                path,
                body=body,
                content_type=content_type,
                timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=10),
            ),
            timeout,
        )

    def request_text(self, method: str, path: str, timeout: float = 30.0) -> str:
        text = self._run(
            self.kube.request(
                method,
                path,
                raw=True,
                timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=10),
            ),
            timeout,
        )
        return str(text or "")

    def close(self) -> None:
        if self._loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self._run(self.kube.close(), 10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> BlockingKube:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
