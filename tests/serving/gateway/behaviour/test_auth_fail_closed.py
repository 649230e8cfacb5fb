"""Client auth fails closed (issue 16, High-5).

A keys source that is configured but yields no key never turns auth off: an empty keys file
stops the gateway at start with a clear error; a keys Secret whose data keys are misspelt
(`namespaces.team-a`, `team-a`) gives no key, so every request is refused, and never an
admin key that reaches every namespace. A gateway with no keys source at all serves
unauthenticated, and says so with a WARNING at start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from hedge_serving.gateway.auth import ClientAuth, keys_from_secret, parse_keys_file
from hedge_serving.gateway.routing import RouteSpec
from tests.serving.gateway_stubs.engines import Engine
from tests.serving.gateway_stubs.harness import Clients, start_test_gateway

MODEL = "llama"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    made = Clients()
    yield made
    await made.close()


@pytest.mark.parametrize("text", ["", "\n\n", "# keys go here\n", "  \n# none\n"])
def test_a_keys_file_without_keys_is_an_error(text: str) -> None:
    with pytest.raises(ValueError, match="holds no client key"):
        parse_keys_file(text, "/etc/hedge/keys")


def test_a_keys_file_line_with_a_bad_namespace_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"line 2: 'Team_A' is not a namespace name"):
        parse_keys_file("admin\nkey-a Team_A\n")


@pytest.mark.parametrize(
    "data_key", ["namespaces.team-a", "namespace-team-a", "team-a", "namespace.", "ns.team-a"]
)
def test_a_misspelt_secret_data_key_gives_no_key(
    data_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "hedge.gateway.auth"):
        assert keys_from_secret({data_key: "key-a"}) == []
    assert f"data key {data_key!r} is ignored" in caplog.text
    assert "key-a" not in caplog.text  # the value is never logged


def test_the_secret_format() -> None:
    keys = keys_from_secret({"keys": "admin", "namespace.team-a": "a1,a2"})
    assert sorted(keys, key=str) == [
        ("a1", frozenset({"team-a"})),
        ("a2", frozenset({"team-a"})),
        ("admin", None),
    ]


def test_keys_once_configured_never_go_back_to_open() -> None:
    auth = ClientAuth(["k1"])
    auth.set_keys([])
    assert auth.enabled
    with pytest.raises(Exception, match="Incorrect API key"):
        auth.check("Bearer anything")


def test_no_keys_source_warns_at_start(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "hedge.gateway.auth"):
        ClientAuth()
    assert "client authentication is OFF" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, "hedge.gateway.auth"):
        ClientAuth(required=True)
        ClientAuth(["k"])
    assert "OFF" not in caplog.text


async def test_a_misspelt_keys_secret_refuses_every_request(clients: Clients) -> None:
    """What discovery does with the keys Secret: `set_keys(keys_from_secret(data))`."""
    engine = await Engine("e", MODEL).start()
    auth = ClientAuth(required=True)
    auth.set_keys(keys_from_secret({"namespaces.team-a": "key-a", "admin": "root"}))
    gw = await start_test_gateway(
        [RouteSpec(MODEL, (engine.url,), owner="team-b", deployment=("team-b", MODEL))],
        auth=auth,
    )
    try:
        for key in ("key-a", "root", "anything"):
            with pytest.raises(openai.AuthenticationError):
                await clients(gw, key).chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
        assert not engine.received
    finally:
        await gw.stop()
        await engine.stop()


async def test_the_gateway_refuses_to_start_with_an_empty_keys_file(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(f"models:\n  - name: {MODEL}\n    backends: [http://127.0.0.1:9]\n")
    keys = tmp_path / "keys"
    keys.write_text("# rotated by the pipeline; empty by mistake\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hedge_core.cli", "gateway", "--routes", str(routes),
        "--api-keys-file", str(keys), "--port", "0", "--admin-port", "-1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=dict(os.environ),
    )  # fmt: skip
    async with asyncio.timeout(30):
        out, _ = await proc.communicate()
    assert proc.returncode != 0
    text = out.decode()
    assert f"hedge gateway: {keys} holds no client key" in text
    assert "Traceback" not in text
    assert "listening" not in text
