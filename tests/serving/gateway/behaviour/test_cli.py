"""`hedge gateway --routes FILE` as a process: serves, reports bad files, drains on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp

from tests.serving.gateway_stubs.engines import Engine
from tests.serving.gateway_stubs.harness import LOOPBACK_EGRESS_FLAGS, Clients
from tests.serving.gateway_stubs.providers import OpenAIStub
from tests.serving.gateway_stubs.replies import reply_text

MODEL = "llama-3-8b"


async def start_cli(
    *args: str, env: dict[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hedge_core.cli",
        "gateway",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                raise AssertionError("gateway exited before listening")
            m = re.search(r"listening on (http://\S+?),? \(", line) or re.search(
                r"listening on (http://[\d.:]+)", line
            )
            if m:
                return proc, m.group(1)


async def test_routes_file_serves_and_sigterm_drains(tmp_path: Path, client: Clients) -> None:
    engine = await Engine("e0", MODEL).start()
    provider = await OpenAIStub(api_key="sk-cli").start()
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "models:\n"
        f"  - name: {MODEL}\n"
        f"    backends: [{engine.url}]\n"
        "  - name: cloud\n"
        "    fallback:\n"
        "      - {type: openai, model: gpt-4o-mini, apiKeyEnv: TEST_OPENAI_KEY,\n"
        f"         baseURL: {provider.url}/v1}}\n"
    )
    proc, url = await start_cli(
        "--routes",
        str(routes),
        "--port",
        "0",
        "--admin-port",
        "-1",
        "--drain-delay",
        "1",
        *LOOPBACK_EGRESS_FLAGS,  # the provider stub is on loopback, over http
        env={"TEST_OPENAI_KEY": "sk-cli"},
    )
    try:
        from openai import AsyncOpenAI

        c = AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        try:
            done = await c.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "a"}]
            )
            assert done.choices[0].message.content == reply_text("a")
            raw = await c.chat.completions.with_raw_response.create(
                model="cloud", messages=[{"role": "user", "content": "b"}]
            )
            assert raw.headers["x-hedge-served-by"] == "openai"
            engine.faults.chunk_delay_s = 0.05
            stream = await c.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "drain"}], stream=True
            )
            first = await stream.__anext__()
            proc.send_signal(signal.SIGTERM)
            # During the drain delay a new client is still served (told to reconnect
            # elsewhere next time), and the stream in flight runs to its end.
            async with aiohttp.ClientSession() as s:
                body = {"model": MODEL, "messages": [{"role": "user", "content": "late"}]}
                async with s.post(url + "/v1/chat/completions", json=body) as r:
                    assert r.status == 200
                    assert r.headers["Connection"] == "close"
            rest = [x async for x in stream]
            text = "".join(x.choices[0].delta.content or "" for x in [first, *rest])
            assert text == reply_text("drain")
        finally:
            await c.close()
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await engine.stop()
        await provider.stop()


async def test_bad_routes_file_exits_2(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text("models:\n  - name: m\n    backends: [localhost:8000]\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hedge_core.cli",
        "gateway",
        "--routes",
        str(routes),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    assert b"models[0].backends[0]" in err
