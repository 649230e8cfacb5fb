"""A lean HTTP/1.1 client for the self-hosted hot path: pooled keep-alive connections.

The gateway spends most of its time talking to vLLM pods over plain HTTP on the cluster
network, so that path skips a general-purpose client's per-request machinery: a request
is one pre-built byte string and one socket write, the response head is parsed once, and
the body is handed over as it arrives (Content-Length, chunked, or until close). Fallback
providers (TLS, redirects, proxies) keep using aiohttp's client.

Contract: `post()` returns once the response head is in (or raises `OSError` /
`TimeoutError`); the caller reads with `read()` or `readany()` (`b""` at the end) and must
call `release()`, which returns the connection to the pool only if the response was read
to its end and the server allows keep-alive. Every failure to reach or understand the
backend is an `OSError` (`UpstreamProtocolError` for a malformed answer).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from urllib.parse import urlsplit

_MAX_HEAD = 64 * 1024
_PAUSE_AT = 512 * 1024  # buffered, unread body bytes before reading from the socket pauses


class UpstreamProtocolError(ConnectionError):
    """The backend answered something that is not valid HTTP/1.1."""


class _Conn(asyncio.Protocol):
    __slots__ = (
        "_buf",
        "_chunk_left",
        "_chunk_state",
        "_data",
        "_done",
        "_exc",
        "_got_bytes",
        "_head",
        "_head_waiter",
        "_length",
        "_mode",
        "_paused",
        "_waiter",
        "content_type",
        "idle_since",
        "keep_alive",
        "status",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self._buf = bytearray()
        self._head = False
        self._head_waiter: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._data = bytearray()
        self._done = False  # the whole response body has been received
        self._exc: BaseException | None = None
        self._mode = 0  # 1 content-length, 2 chunked, 3 until close
        self._length = 0
        self._chunk_state = 0  # 0 size line, 1 data, 2 CRLF after data, 3 trailers
        self._chunk_left = 0
        self._got_bytes = False
        self._paused = False
        self.status = 0
        self.content_type = "application/json"
        self.keep_alive = True

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.keep_alive = False
        if self._head and self._mode == 3 and exc is None:
            self._done = True
        elif not self._done and self._exc is None:
            self._exc = exc or ConnectionResetError("the backend closed the connection")
        self._wake()

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        if not self._head:
            self._buf += data
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > _MAX_HEAD:
                    self._fail(UpstreamProtocolError("response head too large"))
                return
            head = bytes(self._buf[:end])
            rest = bytes(self._buf[end + 4 :])
            self._buf = bytearray()
            try:
                self._parse_head(head)
            except (ValueError, IndexError):
                self._fail(UpstreamProtocolError("malformed response head"))
                return
            self._head = True
            if self._head_waiter is not None and not self._head_waiter.done():
                self._head_waiter.set_result(None)
            if rest:
                self._feed(rest)
            elif self._mode == 1 and self._length == 0:
                self._done = True
        else:
            self._feed(data)
        self._wake()

    def eof_received(self) -> bool:
        return False

    # -- parsing ------------------------------------------------------------------------

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if not parts[0].startswith(b"HTTP/1."):
            raise ValueError("not HTTP/1.x")
        self.status = int(parts[1])
        if parts[0] == b"HTTP/1.0":
            self.keep_alive = False
        length = -1
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
                if length < 0:
                    raise ValueError("negative length")
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"content-type":
                self.content_type = value.strip().decode("latin-1")
            elif name == b"connection":
                v = value.strip().lower()
                if v == b"close":
                    self.keep_alive = False
                elif v == b"keep-alive":
                    self.keep_alive = True
        if chunked:
            self._mode = 2
        elif length >= 0:
            self._mode, self._length = 1, length
        elif self.status in (204, 304) or 100 <= self.status < 200:
            self._mode, self._length = 1, 0
        else:
            self._mode = 3
            self.keep_alive = False

    def _feed(self, data: bytes) -> None:
        if self._mode == 1:
            take = data[: self._length]
            self._data += take
            self._length -= len(take)
            if self._length == 0:
                self._done = True
        elif self._mode == 2:
            self._feed_chunked(data)
        else:
            self._data += data
        if not self._paused and len(self._data) > _PAUSE_AT and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _feed_chunked(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        n = len(buf)
        while pos < n and not self._done:
            state = self._chunk_state
            if state == 1:
                take = min(self._chunk_left, n - pos)
                self._data += buf[pos : pos + take]
                pos += take
                self._chunk_left -= take
                if self._chunk_left == 0:
                    self._chunk_state = 2
                continue
            end = buf.find(b"\r\n", pos)
            if end < 0:
                if n - pos > 4096:
                    self._fail(UpstreamProtocolError("malformed chunked body"))
                    return
                break
            line = bytes(buf[pos:end])
            pos = end + 2
            if state == 0:
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    self._fail(UpstreamProtocolError("malformed chunk size"))
                    return
                if size == 0:
                    self._chunk_state = 3
                else:
                    self._chunk_left = size
                    self._chunk_state = 1
            elif state == 2:
                if line:
                    self._fail(UpstreamProtocolError("malformed chunk end"))
                    return
                self._chunk_state = 0
            elif not line:  # state 3: end of trailers
                self._done = True
        del buf[:pos]

    def _fail(self, exc: BaseException) -> None:
        self._exc = exc
        self.keep_alive = False
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
        hw = self._head_waiter
        if self._exc is not None and hw is not None and not hw.done():
            hw.set_exception(self._exc)

    # -- the response ---------------------------------------------------------------------

    async def readany(self) -> bytes:
        """The body bytes received so far (waiting for some), or b"" at the end."""
        while not self._data:
            if self._exc is not None:
                raise self._exc
            if self._done:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = bytes(self._data)
        self._data.clear()
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    async def read(self) -> bytes:
        parts: list[bytes] = []
        while True:
            chunk = await self.readany()
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)


class UpstreamResponse:
    __slots__ = ("_conn", "_key", "_pool", "_released", "read", "readany")

    def __init__(self, pool: UpstreamPool, key: tuple[str, int], conn: _Conn) -> None:
        self._pool = pool
        self._key = key
        self._conn = conn
        self._released = False
        self.readany = conn.readany  # body bytes as they arrive; b"" at the end
        self.read = conn.read  # the whole body

    @property
    def status(self) -> int:
        return self._conn.status

    @property
    def content_type(self) -> str:
        return self._conn.content_type

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        conn = self._conn
        if conn._done and conn.keep_alive and conn.transport is not None and not conn._data:
            self._pool._put(self._key, conn)
        elif conn.transport is not None:
            conn.transport.close()


class UpstreamPool:
    """Keep-alive connections per backend `host:port`; most recently used first."""

    def __init__(self, connect_timeout_s: float = 2.0, keepalive_s: float = 4.0) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        self._idle: dict[tuple[str, int], deque[_Conn]] = {}
        self._heads: dict[str, tuple[tuple[str, int], bytes]] = {}
        self._closed = False

    def _target(self, base_url: str) -> tuple[tuple[str, int], bytes]:
        cached = self._heads.get(base_url)
        if cached is None:
            parts = urlsplit(base_url)
            if parts.scheme != "http" or not parts.hostname:
                raise UpstreamProtocolError(f"only http:// backends are pooled: {base_url}")
            port = parts.port or 80
            host_header = parts.netloc.encode("idna")
            cached = ((parts.hostname, port), host_header)
            self._heads[base_url] = cached
        return cached

    def _put(self, key: tuple[str, int], conn: _Conn) -> None:
        if self._closed:
            if conn.transport is not None:
                conn.transport.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(key, deque()).append(conn)

    async def _connect(self, key: tuple[str, int]) -> _Conn:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout_s):
            _, conn = await loop.create_connection(_Conn, key[0], key[1])
        return conn

    def _take_idle(self, key: tuple[str, int]) -> _Conn | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        cutoff = time.monotonic() - self.keepalive_s
        while idle:
            conn = idle.pop()
            if conn.transport is not None and conn.idle_since >= cutoff:
                return conn
            if conn.transport is not None:
                conn.transport.close()
        return None

    async def post(self, base_url: str, path: str, body: bytes) -> UpstreamResponse:
        key, host = self._target(base_url)
        request = b"".join((
            b"POST ", path.encode("latin-1"), b" HTTP/1.1\r\nHost: ", host,
            b"\r\nContent-Type: application/json\r\nContent-Length: ",
            str(len(body)).encode(), b"\r\n\r\n", body,
        ))  # fmt: skip
        conn = self._take_idle(key)
        if conn is not None:
            try:
                return await self._exchange(key, conn, request)
            except OSError:
                # A pooled connection the backend had just closed: one fresh try, unless
                # the backend had started answering (then it is a real failure).
                if conn._got_bytes:
                    raise
        return await self._exchange(key, await self._connect(key), request)

    async def _exchange(
        self, key: tuple[str, int], conn: _Conn, request: bytes
    ) -> UpstreamResponse:
        conn._reset()
        transport = conn.transport
        if transport is None:
            raise ConnectionResetError("connection closed")
        waiter = conn._head_waiter = asyncio.get_running_loop().create_future()
        transport.write(request)
        try:
            await waiter
        except BaseException:
            conn.keep_alive = False
            if conn.transport is not None:
                conn.transport.close()
            raise
        return UpstreamResponse(self, key, conn)

    def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                if conn.transport is not None:
                    conn.transport.close()
        self._idle.clear()
