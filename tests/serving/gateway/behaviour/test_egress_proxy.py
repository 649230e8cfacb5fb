"""Provider calls go through the egress proxy named by HTTPS_PROXY (and not for NO_PROXY
hosts); engine pods are always reached directly. The gateway runs as a process with those
environment variables; the provider is a TLS stub with a locally made CA, reached through a
local CONNECT proxy, so the tunnel and the certificate check are both real."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.serving.gateway.behaviour.test_cli import start_cli
from tests.serving.gateway_stubs.egress import ConnectProxy, make_tls
from tests.serving.gateway_stubs.engines import Engine
from tests.serving.gateway_stubs.providers import OpenAIStub
from tests.serving.gateway_stubs.replies import reply_text

MODEL = "llama-3-8b"


@pytest.mark.parametrize("no_proxy", [False, True], ids=["via-proxy", "no-proxy"])
async def test_providers_go_through_the_egress_proxy(tmp_path: Path, no_proxy: bool) -> None:
    tls = make_tls(tmp_path / "tls")
    provider = await OpenAIStub(api_key="sk-egress").start(tls.server_context())
    engine = await Engine("e0", MODEL).start()
    proxy = await ConnectProxy().start()
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "models:\n"
        f"  - name: {MODEL}\n"
        f"    backends: [{engine.url}]\n"
        "  - name: cloud\n"
        "    fallback:\n"
        "      - {type: openai, model: gpt-4o-mini, apiKeyEnv: EGRESS_KEY,\n"
        f"         baseURL: {provider.url}/v1}}\n"
    )
    env = {
        "EGRESS_KEY": "sk-egress",
        "HTTPS_PROXY": proxy.url,
        "HTTP_PROXY": proxy.url,  # engines are plain http: this must not catch them either
        "NO_PROXY": "localhost" if no_proxy else "",
        "SSL_CERT_FILE": str(tls.ca),  # the CA a corporate image would add to its trust store
    }
    proc, url = await start_cli(
        "--routes", str(routes), "--port", "0", "--admin-port", "-1", "--drain-delay", "0",
        # the TLS stub is https://localhost: loopback, which the tests' admin allows
        "--egress-allow-host", "localhost", "--egress-allow-cidr", "127.0.0.0/8",
        "--egress-allow-cidr", "::1/128",
        env=env,
    )  # fmt: skip
    try:
        c = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=20)
        try:
            raw = await c.chat.completions.with_raw_response.create(
                model="cloud", messages=[{"role": "user", "content": "out"}]
            )
            assert raw.headers["x-hedge-served-by"] == "openai"
            assert raw.parse().choices[0].message.content == reply_text("out")
            done = await c.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "in"}]
            )
            assert done.choices[0].message.content == reply_text("in")
        finally:
            await c.close()
        assert provider.received[-1].headers["Authorization"] == "Bearer sk-egress"
        port = provider.url.rsplit(":", 1)[1]
        assert proxy.targets == ([] if no_proxy else [f"CONNECT localhost:{port}"])
    finally:
        proc.terminate()
        await proc.wait()
        await proxy.stop()
        await engine.stop()
        await provider.stop()
