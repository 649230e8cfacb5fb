"""Malformed input over raw sockets: always a well-formed 4xx/5xx, never a traceback."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hedge_serving.gateway.app import RunningGateway
from hedge_serving.gateway.routing import RouteSpec
from tests.serving.gateway_stubs.harness import start_test_gateway

PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]


class GatewayThread:
    """A gateway on its own event loop in a thread, so sync hypothesis tests can hit it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        # "m" has no backend and no fallback: a valid request gets 503, never reaches anything.
        self.gw: RunningGateway = self._run(
            start_test_gateway([RouteSpec("m", ())], max_body_bytes=64 * 1024, admin_port=None)
        )

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def close(self) -> None:
        self._run(self.gw.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayThread]:
    g = GatewayThread()
    yield g
    g.close()


def exchange(port: int, data: bytes, *, shut_write: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        if shut_write:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if _complete(b"".join(chunks)):
                break
        return b"".join(chunks)


def _complete(resp: bytes) -> bool:
    head, sep, body = resp.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def assert_openai_error(resp: bytes, allowed: set[int]) -> dict[str, Any]:
    head, _, body = resp.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n")[0].decode()
    status = int(status_line.split()[1])
    assert status in allowed, status_line
    doc = json.loads(body)
    assert set(doc) == {"error"}
    assert set(doc["error"]) == {"message", "type", "param", "code"}
    assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
    assert "Traceback" not in doc["error"]["message"]
    assert b"Traceback" not in resp
    return doc


def request(path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n"
    ).encode() + body


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["model", "stream", "messages", "prompt", "x"]) | st.text(max_size=5),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@given(st.sampled_from(PATHS), json_values)
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_random_json_gets_a_precise_error(gateway: GatewayThread, path: str, value: Any) -> None:
    body = json.dumps(value).encode()
    resp = exchange(gateway.gw.port, request(path, body))
    doc = assert_openai_error(resp, {400, 404, 503})
    if not isinstance(value, dict):
        assert "JSON object" in doc["error"]["message"]


@given(st.sampled_from(PATHS), st.binary(max_size=300))
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_random_bytes_get_a_precise_error(gateway: GatewayThread, path: str, body: bytes) -> None:
    resp = exchange(gateway.gw.port, request(path, body))
    assert_openai_error(resp, {400, 404, 503})


@given(st.integers(1, 200), st.sampled_from(PATHS))
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_truncated_bodies(gateway: GatewayThread, keep: int, path: str) -> None:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 100}]}).encode()
    data = request(path, body)
    head_len = data.index(b"\r\n\r\n") + 4
    resp = exchange(gateway.gw.port, data[: head_len + keep % len(body)], shut_write=True)
    doc = assert_openai_error(resp, {400})  # the client said it was done sending
    assert "cut short" in doc["error"]["message"]


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-%d: y\r\n" % i for i in range(500))
        + b"\r\n",
        b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["huge-header", "many-headers", "huge-url", "tls-hello", "negative-length", "bad-chunk"],
)
def test_broken_http_gets_openai_error(gateway: GatewayThread, raw: bytes) -> None:
    resp = exchange(gateway.gw.port, raw)
    assert_openai_error(resp, {400, 404, 413, 431})


def test_body_over_limit(gateway: GatewayThread) -> None:
    body = json.dumps({"model": "m", "prompt": "x" * 70_000}).encode()
    resp = exchange(gateway.gw.port, request("/v1/completions", body))
    doc = assert_openai_error(resp, {413})
    assert "65536" in doc["error"]["message"]


def test_gateway_still_serves_after_abuse(gateway: GatewayThread) -> None:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}).encode()
    resp = exchange(gateway.gw.port, request("/v1/chat/completions", body))
    doc = assert_openai_error(resp, {503})
    assert "no ready self-hosted backend" in doc["error"]["message"]
    assert b"Retry-After" in resp
