"""Provider egress (issue 16, High-1), on real loopback sockets: a provider's redirect is a
provider failure and is never followed (no key header reaches the redirect's target, no GET
body comes back as a 200), base URLs the admin does not allow are refused with a clear error,
and the address check runs on the address actually connected to (a name that resolves to
loopback is refused unless loopback is allowed, also when it rebinds)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from hedge_serving.gateway.egress import EgressPolicy, provider_session
from hedge_serving.gateway.keys import LocalKeyStore
from hedge_serving.gateway.routing import ProviderSpec, ProviderType, RouteSpec, SecretRef
from tests.serving.gateway_stubs.harness import Clients, start_test_gateway
from tests.serving.gateway_stubs.providers import OpenAIStub
from tests.serving.gateway_stubs.replies import reply_text

MODEL = "cloud"
SECRET = "sk-provider-key-never-to-leave"
COMPLETION = {
    "id": "meta", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "METADATA"},
                 "finish_reason": "stop", "logprobs": None}],
}  # fmt: skip


@dataclass
class Listener:
    """A loopback HTTP server that records every request (method, path, headers)."""

    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    url: str = ""

    async def start(self, handler: Any, host: str = "127.0.0.1", port: int = 0) -> Listener:
        async def record(request: web.Request) -> web.StreamResponse:
            self.seen.append((request.method, request.path, dict(request.headers)))
            await request.read()
            return await handler(request)  # type: ignore[no-any-return]

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://{host}:{bound}"
        return self

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def metadata_server() -> Listener:
    """GET-only, like a cloud metadata service; its body looks like a chat completion."""

    async def answer(request: web.Request) -> web.Response:
        if request.method != "GET":
            return web.Response(status=405)
        return web.json_response(COMPLETION)

    return await Listener().start(answer)


async def redirector(to: str, status: int) -> Listener:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": to + "/latest/meta-data"})

    return await Listener().start(answer)


def provider(ptype: ProviderType, url: str, name: str) -> ProviderSpec:
    return ProviderSpec(
        type=ptype,
        model="gpt-4o-mini",
        base_url=url,
        api_key=SecretRef(env="PROVIDER_KEY"),
        name=name,
        api_version="2024-10-21" if ptype is ProviderType.AZURE_OPENAI else None,
    )


@pytest.mark.parametrize("status", [302, 307, 308])
@pytest.mark.parametrize(
    "ptype", [ProviderType.OPENAI_COMPATIBLE, ProviderType.AZURE_OPENAI, ProviderType.ANTHROPIC]
)
async def test_a_redirect_is_a_provider_failure_and_is_never_followed(
    client: Clients, status: int, ptype: ProviderType
) -> None:
    metadata = await metadata_server()
    redirect = await redirector(metadata.url, status)
    backup = await OpenAIStub(api_key=SECRET).start()
    keys = LocalKeyStore({"PROVIDER_KEY": SECRET})
    suffix = "" if ptype is ProviderType.AZURE_OPENAI else "/v1"
    chain = (
        provider(ptype, redirect.url + suffix, "redirector"),
        provider(ProviderType.OPENAI_COMPATIBLE, backup.url + "/v1", "backup"),
    )
    gw = await start_test_gateway(
        [RouteSpec(MODEL, (), chain), RouteSpec("only-redirect", (), chain[:1])], keys=keys
    )
    try:
        c = client(gw)
        raw = await c.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.headers["x-hedge-served-by"] == "backup"
        assert raw.parse().choices[0].message.content == reply_text("hi")
        with pytest.raises(openai.APIStatusError) as info:
            await c.chat.completions.create(
                model="only-redirect", messages=[{"role": "user", "content": "hi"}]
            )
        assert info.value.status_code == 503
        assert "METADATA" not in info.value.response.text
        assert len(redirect.seen) == 2  # the base URL's origin was asked, once per request
        assert metadata.seen == []  # the redirect's target never heard of the key or us
    finally:
        await gw.stop()
        for server in (metadata, redirect, backup):
            await server.stop()


async def test_the_default_policy_refuses_a_loopback_provider_with_a_clear_error(
    client: Clients,
) -> None:
    stub = await OpenAIStub(api_key=SECRET).start()
    keys = LocalKeyStore({"PROVIDER_KEY": SECRET})
    spec = provider(ProviderType.OPENAI_COMPATIBLE, stub.url + "/v1", "internal")
    gw = await start_test_gateway([RouteSpec(MODEL, (), (spec,))], keys=keys, egress=EgressPolicy())
    try:
        with pytest.raises(openai.APIStatusError) as info:
            await client(gw).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}]
            )
        assert info.value.status_code == 503
        body = info.value.body
        assert isinstance(body, dict)
        assert "egress policy" in body["message"]
        assert "internal: http:// is not allowed for 127.0.0.1" in body["message"]
        assert stub.received == []
    finally:
        await gw.stop()
        await stub.stop()


class MappedResolver(AbstractResolver):
    """A hostname mapping, as a DNS server would answer (changeable, to rebind)."""

    def __init__(self, mapping: dict[str, str]) -> None:
        self.mapping = mapping
        self.asked = 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked += 1
        if host not in self.mapping:
            raise OSError(f"no such host {host}")
        return [
            ResolveResult(
                hostname=host,
                host=self.mapping[host],
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        pass


async def test_a_name_that_resolves_to_loopback_is_refused_unless_loopback_is_allowed() -> None:
    stub = await OpenAIStub(api_key=SECRET).start()
    port = int(stub.url.rsplit(":", 1)[1])
    url = f"http://provider.example.test:{port}/v1/embeddings"
    body = {"model": "text-embedding-3-small", "input": "x"}
    headers = {"Authorization": "Bearer " + SECRET}
    resolver = MappedResolver({"provider.example.test": "127.0.0.1"})
    refusing = provider_session(EgressPolicy.parse(hosts=["*"]), 4.0, resolver)
    loopback_ok = EgressPolicy.parse(hosts=["*"], allow_cidrs=["127.0.0.0/8"])
    allowing = provider_session(loopback_ok, 4.0, resolver)
    try:
        with pytest.raises(aiohttp.ClientConnectorError, match=r"address 127\.0\.0\.1 is loopback"):
            await refusing.post(url, json=body, headers=headers)
        assert stub.received == []
        async with allowing.post(url, json=body, headers=headers) as r:
            assert r.status == 200
        assert len(stub.received) == 1
    finally:
        await refusing.close()
        await allowing.close()
        await stub.stop()


async def test_a_rebinding_name_is_checked_on_the_address_it_connects_to() -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    public = await Listener().start(ok, host="127.0.0.2")  # stands in for a public address
    internal = await Listener().start(ok, host="127.0.0.1", port=public.port)
    resolver = MappedResolver({"rebind.example.test": "127.0.0.2"})
    only_public = EgressPolicy.parse(hosts=["*"], allow_cidrs=["127.0.0.2/32"])
    session = provider_session(only_public, 4.0, resolver)
    url = f"http://rebind.example.test:{public.port}/v1/embeddings"
    close = {"Connection": "close"}  # no pooled connection: each request connects anew
    try:
        async with session.post(url, json={"input": "x"}, headers=close) as r:
            assert r.status == 200
        assert len(public.seen) == 1
        resolver.mapping["rebind.example.test"] = "127.0.0.1"  # the name now points inside
        session.connector.clear_dns_cache()  # type: ignore[union-attr]  # its TTL ran out
        with pytest.raises(aiohttp.ClientConnectorError, match="refused"):
            async with session.post(url, json={"input": "x"}, headers=close):
                pass
        assert internal.seen == []
        assert resolver.asked == 2
    finally:
        await session.close()
        await public.stop()
        await internal.stop()
