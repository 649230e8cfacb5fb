"""hedge_core.kube: kubeconfig fidelity, re-login, and no key material left on disk.

Against a fake API server on loopback that checks bearer tokens (and, over TLS, client
certificates) the way the real one does; the kubeconfigs are the shapes kubectl reads.
"""

from __future__ import annotations

import base64
import datetime
import os
import ssl
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.http_exceptions
import pytest
import yaml

from hedge_core import kube as kube_module
from hedge_core.kube import ApiError, BlockingKube, Kube, KubeConfigError, ListWatch
from hedge_dev.pki import ClusterPKI, create_pki
from tests.serving.gateway_stubs.kubeapi import FakeKubeAPI, kubeconfig_for, model_deployment

LIST = "/apis/hedge.dev/v1alpha1/modeldeployments"


@pytest.fixture
async def api() -> AsyncIterator[FakeKubeAPI]:
    server = await FakeKubeAPI(token="token-1").start()
    yield server
    await server.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ClusterPKI:
    return create_pki(tmp_path_factory.mktemp("pki"))


def exec_plugin(directory: Path, token_file: Path, expires_in: float | None = None) -> Path:
    """A credential plugin as `aws eks get-token` is one: prints an ExecCredential with the
    token it reads, counting its runs in `runs`."""
    script = directory / "get-token"
    expiry = ""
    if expires_in is not None:
        at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=expires_in)
        expiry = f', "expirationTimestamp": "{at.strftime("%Y-%m-%dT%H:%M:%SZ")}"'
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, pathlib\n"
        f"runs = pathlib.Path({str(directory / 'runs')!r})\n"
        "runs.write_text(runs.read_text() + 'x' if runs.exists() else 'x')\n"
        f"token = pathlib.Path({str(token_file)!r}).read_text().strip()\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', "
        "'kind': 'ExecCredential', "
        f"'status': json.loads('{{\"token\": \"' + token + '\"{expiry}}}')}}))\n"
    )
    script.chmod(0o755)
    return script


def exec_user(script: Path) -> dict[str, Any]:
    return {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": str(script),
            "interactiveMode": "Never",
        }
    }


def runs(directory: Path) -> int:
    path = directory / "runs"
    return len(path.read_text()) if path.exists() else 0


async def test_bearer_token_and_errors(api: FakeKubeAPI, tmp_path: Path) -> None:
    kube = Kube(str(kubeconfig_for(api, tmp_path, {"token": "token-1"})))
    try:
        creds = await kube.login()
        assert creds.server == api.url and creds.headers() == {"Authorization": "Bearer token-1"}
        assert (await kube.get(LIST))["items"] == []
        with pytest.raises(ApiError) as info:
            await kube.get("/apis/hedge.dev/v1alpha1/nope")
        assert info.value.status == 404
        assert await kube.get("/apis/hedge.dev/v1alpha1/nope", missing_ok=True) is None
    finally:
        await kube.close()
    with pytest.raises(KubeConfigError, match="missing"):
        await Kube(str(tmp_path / "missing")).login()
    broken = tmp_path / "broken"
    broken.write_text(yaml.safe_dump({"current-context": "x", "contexts": [], "clusters": []}))
    with pytest.raises(KubeConfigError, match="broken"):
        await Kube(str(broken)).login()


async def test_exec_plugin_runs_again_before_expiry_and_after_401(
    api: FakeKubeAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kube_module, "OLD_CLIENT_GRACE", 0.05)
    token = tmp_path / "token"
    token.write_text("token-1")
    # Expires within the refresh margin: every request must log in again first.
    script = exec_plugin(tmp_path, token, expires_in=kube_module.EXPIRY_SKEW / 2)
    kube = Kube(str(kubeconfig_for(api, tmp_path, exec_user(script))))
    try:
        creds = await kube.login()
        assert creds.expiration is not None and creds.expires_soon()
        await kube.get(LIST)
        await kube.get(LIST)
        assert runs(tmp_path) == 3

        # A token that lives long is reused until the API server refuses it (rotation).
        script = exec_plugin(tmp_path, token, expires_in=3600)
        await kube.login()
        before = runs(tmp_path)
        await kube.get(LIST)
        assert runs(tmp_path) == before
        token.write_text("token-2")
        api.token = "token-2"
        old = kube._client
        assert old is not None
        assert (await kube.get(LIST))["items"] == []  # 401, the plugin again, then 200
        assert runs(tmp_path) == before + 1
        # The refused credentials' connection pool is closed once requests on it are done.
        await _until(lambda: old.rest_client.pool_manager.closed)
    finally:
        await kube.close()


async def test_failing_exec_plugin_is_a_clear_error(api: FakeKubeAPI, tmp_path: Path) -> None:
    script = tmp_path / "no-login"
    script.write_text("#!/bin/sh\necho 'token expired, run: cloud login' >&2\nexit 1\n")
    script.chmod(0o755)
    with pytest.raises(KubeConfigError, match="cloud login"):
        await Kube(str(kubeconfig_for(api, tmp_path, exec_user(script)))).login()


async def test_kubeconfig_split_across_files_in_KUBECONFIG(
    api: FakeKubeAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = yaml.safe_load(kubeconfig_for(api, tmp_path).read_text())
    users = {"apiVersion": "v1", "kind": "Config", "users": whole.pop("users")}
    (tmp_path / "clusters").write_text(yaml.safe_dump(whole))
    (tmp_path / "users").write_text(yaml.safe_dump(users))
    api.token = users["users"][0]["user"]["token"]
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'clusters'}{os.pathsep}{tmp_path / 'users'}")
    kube = Kube()
    try:
        await kube.get(LIST)
        assert kube.credentials.authorization == f"Bearer {api.token}"
    finally:
        await kube.close()


def _tls_server(pki: ClusterPKI) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(pki.apiserver_cert), str(pki.apiserver_key))
    ctx.verify_mode = ssl.CERT_REQUIRED  # a client certificate signed by the CA, or no TLS
    return ctx


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


async def test_client_key_data_leaves_nothing_on_disk(
    pki: ClusterPKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = await FakeKubeAPI(token=None).start(tls=_tls_server(pki))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    config = yaml.safe_load(kubeconfig_for(api, tmp_path).read_text())
    config["clusters"][0]["cluster"]["certificate-authority-data"] = _b64(pki.ca_cert)
    config["users"][0]["user"] = {
        "client-certificate-data": _b64(pki.admin_cert),
        "client-key-data": _b64(pki.admin_key),
    }
    path = tmp_path / "embedded"
    path.write_text(yaml.safe_dump(config))
    kube = Kube(str(path))
    try:
        for _ in range(2):  # a second login (re-login) must not trip over deleted files
            await kube.login()
            assert (await kube.get(LIST))["items"] == []
            assert list(scratch.iterdir()) == []
        from kubernetes_asyncio.config import kube_config

        assert not any(v.startswith(str(scratch)) for v in kube_config._temp_files.values())
    finally:
        await kube.close()
        await api.stop()


async def test_in_cluster_token_is_read_again_when_refused(
    pki: ClusterPKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = await FakeKubeAPI(token="sa-1").start(tls=_tls_server_no_client_cert(pki))
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("sa-1")
    (account / "ca.crt").write_bytes(pki.ca_cert.read_bytes())
    monkeypatch.setattr(kube_module, "SERVICE_ACCOUNT_DIR", account)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(api.port))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "ignored"))  # in-cluster comes first
    kube = Kube()
    try:
        assert (await kube.login()).source == "in-cluster"
        await kube.get(LIST)
        (account / "token").write_text("sa-2")  # the kubelet rotated the projected token
        api.token = "sa-2"
        await kube.get(LIST)
        assert kube.credentials.authorization == "Bearer sa-2"
    finally:
        await kube.close()
        await api.stop()


def _tls_server_no_client_cert(pki: ClusterPKI) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pki.apiserver_cert), str(pki.apiserver_key))
    return ctx


async def test_list_watch_relists_on_410_and_replaces_the_cache(
    api: FakeKubeAPI, tmp_path: Path
) -> None:
    await api.put("ModelDeployment", model_deployment("a"))
    kube = Kube(str(kubeconfig_for(api, tmp_path, {"token": "token-1"})))
    events: list[tuple[str, str]] = []
    lists: list[list[str]] = []
    watch = ListWatch(
        kube,
        LIST,
        on_list=lambda items: lists.append(sorted(i["metadata"]["name"] for i in items)),
        on_event=lambda kind, obj: events.append((kind, obj["metadata"]["name"])),
        min_backoff_s=0.01,
        max_backoff_s=0.05,
    )
    watch.start()
    try:
        await watch.synced.wait()
        await api.put("ModelDeployment", model_deployment("b"))
        await _until(lambda: ("ADDED", "b") in events)
        api.drop_watches()
        await api.delete("ModelDeployment", "team-a", "a")
        api.compact()
        await _until(lambda: watch.expired >= 1 and len(lists) >= 2)
        assert lists[-1] == ["b"] and set(watch.items) == {("team-a", "b")}
        assert watch.lists == len(lists)
    finally:
        await watch.stop()
        await kube.close()


def test_blocking_facade(tmp_path: Path) -> None:
    import asyncio
    import threading

    ready = threading.Event()
    state: dict[str, Any] = {}

    def serve() -> None:
        loop = asyncio.new_event_loop()
        state["loop"] = loop
        state["api"] = loop.run_until_complete(FakeKubeAPI(token="t").start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(state["api"].stop())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(10)
    api: FakeKubeAPI = state["api"]
    try:
        with BlockingKube(kubeconfig_for(api, tmp_path, {"token": "t"})) as kube:
            assert kube.server == api.url
            assert kube.request("GET", LIST)["items"] == []
            with pytest.raises(ApiError):
                kube.request("GET", "/apis/hedge.dev/v1alpha1/nope")
    finally:
        state["loop"].call_soon_threadsafe(state["loop"].stop)
        thread.join(10)


async def _until(check: Any, timeout: float = 5.0) -> None:
    import asyncio

    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def test_watch_lines_are_bounded(api: FakeKubeAPI, tmp_path: Path) -> None:
    """A watch line past aiohttp's buffer bound (4 MiB; etcd caps objects at 1.5 MiB) is an
    error, not an ever-growing buffer."""
    kube = Kube(str(kubeconfig_for(api, tmp_path, {"token": "token-1"})))
    try:
        huge = model_deployment("huge")
        huge["metadata"]["annotations"] = {"filler": "x" * (5 * 1024 * 1024)}
        await api.put("ModelDeployment", huge)
        with pytest.raises((ValueError, aiohttp.http_exceptions.LineTooLong)):
            async for _ in kube.watch(LIST, {}, "0", timeout_s=5):
                pass
    finally:
        await kube.close()


# ------------------------------------------------------------------- the error classes

STATUS_CLASSES: list[tuple[int, type[ApiError]]] = [
    (400, kube_module.ClientError),
    (403, kube_module.Forbidden),
    (404, kube_module.NotFound),
    (409, kube_module.Conflict),
    (410, kube_module.Gone),
    (422, kube_module.ClientError),
    (429, kube_module.Throttled),
    (500, kube_module.ServerError),
    (503, kube_module.ServerError),
]


@pytest.fixture
async def status_server() -> AsyncIterator[str]:
    """A server on loopback answering `/status/<code>` with that status and a Status body
    (`/text/<code>`: a plain-text body)."""
    from aiohttp import web

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.json_response(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "reason": f"Reason{code}",
                "message": f"message {code}",
                "code": code,
            },
            status=code,
        )

    async def text(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="not json")

    app = web.Application()
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_get("/text/{code}", text)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


def _plain_kubeconfig(server: str, directory: Path) -> Path:
    path = directory / "status-kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
            }
        )
    )
    return path


async def test_each_error_status_raises_its_class(status_server: str, tmp_path: Path) -> None:
    kube = Kube(str(_plain_kubeconfig(status_server, tmp_path)))
    try:
        for code, cls in STATUS_CLASSES:
            for method in ("GET", "PATCH"):
                with pytest.raises(ApiError) as info:
                    await kube.request(
                        method, f"/status/{code}", body={} if method != "GET" else None
                    )
                err = info.value
                assert type(err) is cls, (code, method, type(err))
                assert (err.status, err.reason, err.message) == (
                    code,
                    f"Reason{code}",
                    f"message {code}",
                )
                assert str(err) == f"HTTP {code} Reason{code}: message {code}"
                assert err.retryable == (code >= 500 or code in (409, 429))
        with pytest.raises(kube_module.Conflict) as conflict:
            await kube.request("GET", "/text/409")
        assert (conflict.value.reason, conflict.value.message) == ("", "not json")
        # A tolerated 404 is still None; list and watch keep raising Expired for 410.
        assert await kube.request("GET", "/status/404", missing_ok=True) is None
        with pytest.raises(kube_module.Expired):
            await kube.list_all("/status/410")
        with pytest.raises(kube_module.Forbidden):
            await kube.list_all("/status/403")
    finally:
        await kube.close()


def test_the_tree_and_the_factory() -> None:
    k = kube_module
    for sub in (k.Forbidden, k.NotFound, k.Conflict, k.Gone, k.Throttled):
        assert issubclass(sub, k.ClientError) and issubclass(sub, ApiError)
    assert issubclass(k.ServerError, ApiError) and not issubclass(k.ServerError, k.ClientError)
    assert not issubclass(k.Expired, ApiError)  # callers that catch ApiError never caught it
    for code, cls in STATUS_CLASSES:
        assert type(ApiError.from_status(code, "R", "m")) is cls
    for code in (0, 200, 302, 600):
        assert type(ApiError.from_status(code, "R", "m")) is ApiError
    err = ApiError.from_body(409, '{"reason": "AlreadyExists", "message": "exists"}')
    assert isinstance(err, k.Conflict) and (err.reason, err.message) == ("AlreadyExists", "exists")
    assert type(ApiError.from_body(502, "[1]")) is k.ServerError


def test_transient_is_what_the_operator_catches() -> None:
    assert (ApiError, aiohttp.ClientError, TimeoutError, OSError) == kube_module.TRANSIENT
    with pytest.raises(kube_module.TRANSIENT):
        raise kube_module.Throttled(429, "TooManyRequests", "slow down")
