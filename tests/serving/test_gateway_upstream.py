"""The lean upstream HTTP/1.1 client against scripted raw-socket servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hedge_serving.gateway.upstream import UpstreamPool, UpstreamProtocolError
from tests.serving.gateway_stubs.harness import wait_for


class ScriptedServer:
    """Answers each request on a connection with the next response from `responses`."""

    def __init__(self, responses: list[list[bytes]], close_after: bool = False) -> None:
        self.responses = responses
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> ScriptedServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.responses:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                self.requests.append(head + await reader.readexactly(length))
                for piece in self.responses.pop(0):
                    writer.write(piece)
                    await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    p = UpstreamPool(connect_timeout_s=1.0, keepalive_s=4.0)
    yield p
    p.close()


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
        % (
            len(body),
            extra,
            body,
        )
    )


def chunked(pieces: list[bytes]) -> bytes:
    out = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    for p in pieces:
        out += b"%x\r\n%s\r\n" % (len(p), p)
    return out + b"0\r\n\r\n"


async def test_content_length_and_keep_alive_reuse(pool: UpstreamPool) -> None:
    srv = await ScriptedServer([[ok(b'{"a": 1}')], [ok(b"[]")]]).start()
    try:
        r = await pool.post(srv.url, "/v1/x", b'{"q": 1}')
        assert (r.status, r.content_type, await r.read()) == (200, "application/json", b'{"a": 1}')
        r.release()
        r = await pool.post(srv.url, "/v1/y", b"{}")
        assert await r.read() == b"[]"
        r.release()
        assert srv.connections == 1  # the connection was reused
        assert srv.requests[0].startswith(b"POST /v1/x HTTP/1.1\r\nHost: 127.0.0.1:")
        assert srv.requests[0].endswith(b'Content-Length: 8\r\n\r\n{"q": 1}')
    finally:
        await srv.stop()


@given(
    st.lists(st.binary(min_size=1, max_size=50), max_size=6),
    st.lists(st.integers(1, 400), max_size=6),
)
@settings(max_examples=60, deadline=None)
def test_chunked_bodies_split_anywhere(pieces: list[bytes], cuts: list[int]) -> None:
    data = chunked(pieces)
    points = sorted({c % len(data) for c in cuts} - {0})
    writes = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]

    async def run() -> None:
        srv = await ScriptedServer([writes]).start()
        p = UpstreamPool()
        try:
            r = await p.post(srv.url, "/", b"")
            assert await r.read() == b"".join(pieces)
            r.release()
        finally:
            p.close()
            await srv.stop()

    asyncio.run(run())


async def test_streamed_pieces_arrive_as_they_are_sent(pool: UpstreamPool) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    srv = await ScriptedServer(
        [[head, b"5\r\nhello\r\n", b"6\r\n world\r\n", b"0\r\n\r\n"]]
    ).start()
    try:
        r = await pool.post(srv.url, "/", b"")
        got = []
        while chunk := await r.readany():
            got.append(chunk)
        assert b"".join(got) == b"hello world"
        r.release()
    finally:
        await srv.stop()


async def test_body_until_close_and_connection_close(pool: UpstreamPool) -> None:
    srv = await ScriptedServer([[b"HTTP/1.0 200 OK\r\n\r\nall of it"]], close_after=True).start()
    try:
        r = await pool.post(srv.url, "/", b"")
        assert await r.read() == b"all of it"
        r.release()
        assert pool.connections() == 0  # not kept for reuse
    finally:
        await srv.stop()


@pytest.mark.parametrize(
    "answer",
    [
        [b"garbage\r\n\r\n"],
        [b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"],
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
    ],
)
async def test_malformed_answers_are_protocol_errors(
    pool: UpstreamPool, answer: list[bytes]
) -> None:
    srv = await ScriptedServer([answer]).start()
    try:
        with pytest.raises(UpstreamProtocolError):
            r = await pool.post(srv.url, "/", b"")
            await r.read()
    finally:
        await srv.stop()


async def test_cut_body_raises_and_refused_connection_is_oserror(pool: UpstreamPool) -> None:
    srv = await ScriptedServer(
        [[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"]], close_after=True
    ).start()
    try:
        r = await pool.post(srv.url, "/", b"")
        with pytest.raises(ConnectionError):
            await r.read()
        r.release()
    finally:
        await srv.stop()
    with pytest.raises(OSError):
        await pool.post(srv.url, "/", b"")  # nothing listens any more


async def test_pooled_connection_closed_by_the_backend_is_skipped(pool: UpstreamPool) -> None:
    """A keep-alive connection the backend closed while idle is dropped from the pool, and
    the next request opens a fresh one without anything failing."""
    srv = await ScriptedServer([[ok(b"1")]], close_after=True).start()
    try:
        r = await pool.post(srv.url, "/", b"")
        assert await r.read() == b"1"
        r.release()
        await wait_for(lambda: pool.connections() == 0, what="the closed connection to go")
        srv.responses.append([ok(b"2")])
        r = await pool.post(srv.url, "/", b"")
        assert await r.read() == b"2"
        r.release()
        assert srv.connections == 2
    finally:
        await srv.stop()


async def test_a_written_request_is_never_sent_twice(pool: UpstreamPool) -> None:
    """The backend takes the request on a reused connection and dies without answering:
    the client reports the failure instead of re-sending the POST (a duplicate generation)."""
    srv = await ScriptedServer([[ok(b"1")], []]).start()  # the 2nd request: no answer, close
    try:
        r = await pool.post(srv.url, "/", b"")
        assert await r.read() == b"1"
        r.release()
        with pytest.raises(ConnectionError):
            await pool.post(srv.url, "/", b'{"prompt": "once"}')
        assert [q for q in srv.requests if q.endswith(b'"once"}')] == [srv.requests[-1]]
        assert srv.connections == 1  # no second connection carried the request again
    finally:
        await srv.stop()


async def test_unread_body_is_not_pooled(pool: UpstreamPool) -> None:
    srv = await ScriptedServer([[ok(b"x" * 100)], [ok(b"y")]]).start()
    try:
        r = await pool.post(srv.url, "/", b"")
        r.release()  # body never read: the connection cannot be reused safely
        r = await pool.post(srv.url, "/", b"")
        assert await r.read() == b"y"
        r.release()
        assert srv.connections == 2
    finally:
        await srv.stop()
