"""A lean HTTP/1.1 client for the self-hosted hot path: pooled keep-alive connections.

The gateway spends most of its time talking to vLLM pods over plain HTTP on the cluster
network, so that path skips a general-purpose client's per-request machinery: a request
is one pre-built byte string and one socket write, the response head is parsed once, and
the body is handed over as it arrives (Content-Length, chunked, or until close). Fallback
providers (TLS, redirects, proxies) use aiohttp's client.

Why hand-written: measured side by side in one run of `bench/gateway_bench.py` (the
`hedge-aiohttp` contender runs the same gateway with aiohttp's client on this path),
this client carries about 1.6x the requests per second per process and half the added
latency; docs/gateway.md has the numbers. What keeps it correct is held to aiohttp's
(strict) parser by tests/serving/gateway/units/test_upstream.py, fuzzed with hypothesis:

- framing is strict: one Content-Length (digits only; repeated equal values allowed),
  never with Transfer-Encoding; chunked only as the final coding; chunk sizes in hex
  without padding; obsolete line folding, bare LF and control characters are rejected;
- 1xx answers (100 Continue, 103 Early Hints) are skipped, the final answer is read;
  101 is an error (the gateway never asks to switch protocols);
- a request is re-sent on a fresh connection only when the pooled one was already
  closed before anything was written: a POST that reached the engine is never sent twice
  by this client (a duplicate generation on the GPU);
- connections per backend are capped (`max_conns_per_host`; more requests wait for one),
  idle connections are closed after `keepalive_s` and forgotten with their backend;
- `watch()` bounds the wait for the first body byte and the silence between reads, so a
  hung engine is detected while its `/health` still answers (`UpstreamStalled`).

Contract: `post()` returns once the response head is in (or raises `OSError` /
`TimeoutError`); the caller reads with `read()` or `readany()` (`b""` at the end) and must
call `release()`, which returns the connection to the pool only if the response was read
to its end and the server allows keep-alive. Every failure to reach or understand the
backend is an `OSError` (`UpstreamProtocolError` for a malformed answer).
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

from hedge_serving.gateway.failures import ResponseTooLarge as ResponseTooLarge
from hedge_serving.gateway.failures import UpstreamProtocolError as UpstreamProtocolError
from hedge_serving.gateway.failures import UpstreamStalled as UpstreamStalled

_MAX_HEAD = 64 * 1024
_MAX_HEADERS = 128
_PAUSE_AT = 512 * 1024  # buffered, unread body bytes before reading from the socket pauses
_MAX_CHUNK_LINE = 4096  # a chunk-size line or trailer line (aiohttp's default is 8190)
_MAX_TARGETS = 4096  # cached request prefixes (one per backend URL seen)
_SWEEP_S = 0.25  # how often stalls are looked for: a stall is seen at most this late

_TOKEN = re.compile(rb"[0-9A-Za-z!#$%&'*+\-.^_`|~]+")
_DIGITS = re.compile(rb"[0-9]+")
_HEX = re.compile(rb"[0-9a-fA-F]{1,16}")
# A whole chunk-size line: size, optional extensions (no CR/LF inside), CRLF.
_CHUNK_LINE = re.compile(rb"([0-9a-fA-F]{1,16})(?:;[^\r\n]*)?\r\n")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: [^\r\n]*)?")
# What uvicorn (vLLM) sends: known tokens, so their names need no validation.
_COMMON_HEADERS = frozenset(
    {b"date", b"server", b"content-type", b"content-length", b"transfer-encoding",
     b"connection", b"x-request-id"}
)  # fmt: skip
_FORBIDDEN_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class Answer(Protocol):
    """A response whose head is in: what the proxy reads."""

    @property
    def status(self) -> int: ...

    @property
    def content_type(self) -> str: ...

    async def readany(self) -> bytes: ...

    async def read(self, limit: int | None = None) -> bytes: ...

    def release(self) -> None: ...


class Upstream(Protocol):
    """A client for self-hosted backends (`UpstreamPool`, or `AiohttpUpstream`)."""

    async def post(
        self,
        base_url: str,
        path: str,
        body: bytes,
        first_s: float | None = None,
        idle_s: float | None = None,
    ) -> Answer: ...

    def close(self) -> Awaitable[None] | None: ...


class _Conn(asyncio.Protocol):
    __slots__ = (
        "_buf",
        "_chunk_left",
        "_chunk_state",
        "_data",
        "_done",
        "_exc",
        "_first_s",
        "_got_body",
        "_got_bytes",
        "_head",
        "_head_waiter",
        "_host",
        "_idle_s",
        "_last_rx",
        "_length",
        "_loop",
        "_mode",
        "_paused",
        "_waiter",
        "_watch_start",
        "_watched",
        "content_type",
        "idle_since",
        "keep_alive",
        "pooled",
        "status",
        "transport",
    )

    def __init__(self, host: _Host) -> None:
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self.pooled = False  # in its host's idle deque
        self._host = host
        self._loop = asyncio.get_running_loop()
        self._watched = False  # in the pool's set of connections whose silence is timed
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
        self._got_bytes = False  # any byte of an answer (head included)
        self._got_body = False  # any byte of the body
        self._paused = False
        self._first_s: float | None = None
        self._idle_s: float | None = None
        self._watch_start = 0.0
        self._last_rx = 0.0
        self._unwatch()
        self.status = 0
        self.content_type = "application/json"
        self.keep_alive = True

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._host.live += 1  # `connection_lost` (via `forget`) takes it back
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.keep_alive = False
        self._unwatch()
        self._host.forget(self)
        if self._head and self._mode == 3 and exc is None:
            self._done = True
        elif not self._done and self._exc is None:
            self._exc = exc or ConnectionResetError("the backend closed the connection")
        self._wake()

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        if self._watched:
            self._last_rx = self._loop.time()
        if not self._head:
            self._buf += data
            self._parse_heads()
        elif self._done:
            self._fail(UpstreamProtocolError("bytes after the end of the answer"))
            return
        else:
            self._feed(data)
        self._wake()

    def eof_received(self) -> bool:
        return False

    # -- parsing ------------------------------------------------------------------------

    def _parse_heads(self) -> None:
        # Loops because 1xx heads come before the final one, possibly in one read.
        while not self._head and self._exc is None:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > _MAX_HEAD:
                    self._fail(UpstreamProtocolError("response head too large"))
                return
            head = bytes(self._buf[:end])
            del self._buf[: end + 4]
            try:
                final = self._parse_head(head)
            except (ValueError, IndexError) as exc:
                self._fail(UpstreamProtocolError(f"malformed response head: {exc}"))
                return
            if not final:
                continue  # 1xx: the real answer follows
            self._head = True
            rest = bytes(self._buf)
            self._buf = bytearray()
            if self._head_waiter is not None and not self._head_waiter.done():
                self._head_waiter.set_result(None)
            if self._mode == 1 and self._length == 0:
                self._done = True
                if rest:
                    self._fail(UpstreamProtocolError("bytes after the end of the answer"))
            elif rest:
                self._feed(rest)

    def _parse_head(self, head: bytes) -> bool:
        """Parse one response head; False for an informational (1xx) one."""
        lines = head.split(b"\r\n")
        status_line = _STATUS_LINE.fullmatch(lines[0])
        if status_line is None:
            raise ValueError("bad status line")
        unframed = head.replace(b"\r\n", b"")
        if b"\n" in unframed or b"\r" in unframed:
            raise ValueError("bare CR or LF")
        status = int(status_line.group(2))
        if status == 101:
            raise ValueError("unexpected 101 Switching Protocols")
        if len(lines) > _MAX_HEADERS:
            raise ValueError("too many headers")
        keep_alive = status_line.group(1) == b"1"  # HTTP/1.0 closes by default
        length = -1
        te: bytes | None = None
        content_type = "application/json"
        seen_type = False
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            lname = name.lower()
            if not sep or (lname not in _COMMON_HEADERS and _TOKEN.fullmatch(name) is None):
                raise ValueError("bad header line")  # includes obs-fold (leading space)
            value = value.strip(b" \t")
            if _FORBIDDEN_CTL.search(value):
                raise ValueError("control character in a header value")
            if lname == b"content-length":
                # Digits only: no sign, no list (RFC 9110 8.6 would allow a list of equal
                # values; aiohttp refuses it too), and never twice.
                if length >= 0:
                    raise ValueError("repeated Content-Length")
                if _DIGITS.fullmatch(value) is None:
                    raise ValueError("invalid Content-Length")
                length = int(value)
            elif lname == b"transfer-encoding":
                if te is not None:
                    raise ValueError("repeated Transfer-Encoding")
                te = value
            elif lname == b"content-type":
                if seen_type:
                    raise ValueError("repeated Content-Type")
                seen_type = True
                content_type = value.decode("latin-1")
            elif lname == b"connection":
                tokens = {t.strip(b" \t").lower() for t in value.split(b",")}
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens:
                    keep_alive = True
        if te is not None and length >= 0:
            # The classic request-smuggling ambiguity: never guess which one frames the body.
            raise ValueError("both Transfer-Encoding and Content-Length")
        if 100 <= status < 200:
            return False
        self.status = status
        self.content_type = content_type
        self.keep_alive = keep_alive
        if status in (204, 304):
            self._mode, self._length = 1, 0
        elif te is not None:
            if te.rsplit(b",", 1)[-1].strip(b" \t").lower() == b"chunked":
                self._mode = 2
            else:  # RFC 9112 6.3: a response without final chunked runs until close
                self._mode = 3
                self.keep_alive = False
        elif length >= 0:
            self._mode, self._length = 1, length
        else:
            self._mode = 3
            self.keep_alive = False
        return True

    def _feed(self, data: bytes) -> None:
        self._got_body = True
        if self._mode == 1:
            take = data[: self._length]
            self._data += take
            self._length -= len(take)
            if self._length == 0:
                self._done = True
                if len(data) > len(take):
                    self._fail(UpstreamProtocolError("bytes after the end of the answer"))
                    return
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
            if state == 0:
                # Fast path: a whole chunk (size line, data, CRLF) in one regex match and
                # one copy; a partial one falls through to the line-by-line states below.
                sized = _CHUNK_LINE.match(buf, pos)
                if sized is not None:
                    size = int(sized.group(1), 16)
                    start = sized.end()
                    stop = start + size
                    if size and stop + 2 <= n:
                        if buf[stop : stop + 2] != b"\r\n":
                            self._fail(UpstreamProtocolError("malformed chunk end"))
                            return
                        self._data += buf[start:stop]
                        pos = stop + 2
                        continue
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
                if n - pos > _MAX_CHUNK_LINE or b"\n" in buf[pos:]:
                    self._fail(UpstreamProtocolError("malformed chunked body"))
                    return
                break
            line = bytes(buf[pos:end])
            pos = end + 2
            if b"\n" in line:
                self._fail(UpstreamProtocolError("bare LF in a chunked body"))
                return
            if state == 0:
                size_field = line.split(b";", 1)[0]
                if _HEX.fullmatch(size_field) is None:
                    self._fail(UpstreamProtocolError("malformed chunk size"))
                    return
                self._chunk_left = int(size_field, 16)
                self._chunk_state = 1 if self._chunk_left else 3
            elif state == 2:
                if line:
                    self._fail(UpstreamProtocolError("malformed chunk end"))
                    return
                self._chunk_state = 0
            elif not line:  # state 3: end of trailers
                self._done = True
            elif _TOKEN.fullmatch(line.partition(b":")[0]) is None:
                self._fail(UpstreamProtocolError("malformed trailer"))
                return
        del buf[:pos]
        if self._done and buf:
            self._fail(UpstreamProtocolError("bytes after the end of the answer"))

    def _fail(self, exc: BaseException) -> None:
        if self._exc is None:
            self._exc = exc
        self.keep_alive = False
        self._unwatch()
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

    # -- stall watch ----------------------------------------------------------------------

    def watch(self, first_s: float | None, idle_s: float | None) -> None:
        """Fail with `UpstreamStalled` unless a body byte arrives within `first_s` of now,
        and each later read within `idle_s` of the one before (None: no limit)."""
        self._first_s, self._idle_s = first_s, idle_s
        self._watch_start = self._last_rx = self._loop.time()
        if not self._watched and (first_s is not None or idle_s is not None):
            self._watched = True
            self._host.pool._watch(self)

    def _deadline(self) -> float | None:
        if not self._got_body:
            return None if self._first_s is None else self._watch_start + self._first_s
        return None if self._idle_s is None else self._last_rx + self._idle_s

    def _check(self, now: float) -> None:
        """Called by the pool's sweep: fail the exchange if its silence ran out. (No timer
        per request: a read only stores its time, and one sweep checks every watched
        connection a few times a second.)"""
        if self._done or self._exc is not None:
            self._unwatch()
            return
        deadline = self._deadline()
        if deadline is None or now < deadline:
            return
        phase = "idle" if self._got_body else "first"
        seconds = self._idle_s if self._got_body else self._first_s
        self._fail(UpstreamStalled(phase, seconds or 0.0))

    def _unwatch(self) -> None:
        if self._watched:
            self._watched = False
            self._host.pool._watching.discard(self)

    # -- the response ---------------------------------------------------------------------

    async def readany(self) -> bytes:
        """The body bytes received so far (waiting for some), or b"" at the end."""
        while not self._data:
            if self._exc is not None:
                raise self._exc
            if self._done:
                self._unwatch()
                return b""
            self._waiter = self._loop.create_future()
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

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body; `ResponseTooLarge` past `limit` bytes."""
        parts: list[bytes] = []
        size = 0
        while True:
            chunk = await self.readany()
            if not chunk:
                return b"".join(parts)
            size += len(chunk)
            if limit is not None and size > limit:
                self._fail(ResponseTooLarge(limit))
                raise ResponseTooLarge(limit)
            parts.append(chunk)


class _Host:
    """The connections to one backend `host:port`: idle ones, and how many are in use."""

    __slots__ = ("idle", "in_use", "key", "live", "pool", "waiters")

    def __init__(self, pool: UpstreamPool, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.idle: deque[_Conn] = deque()
        self.in_use = 0  # requests holding a connection (or about to open one)
        self.live = 0  # open connections, idle or not
        self.waiters: deque[asyncio.Future[None]] = deque()

    def forget(self, conn: _Conn) -> None:
        """A connection closed (from `connection_lost`)."""
        self.live -= 1
        if conn.pooled:  # closed by the backend while idle
            conn.pooled = False
            self.idle.remove(conn)
        self.pool._maybe_drop(self)


class UpstreamResponse:
    __slots__ = ("_conn", "_host", "_released", "readany")

    def __init__(self, host: _Host, conn: _Conn) -> None:
        self._host = host
        self._conn = conn
        self._released = False
        self.readany = conn.readany  # body bytes as they arrive; b"" at the end

    @property
    def status(self) -> int:
        return self._conn.status

    @property
    def content_type(self) -> str:
        return self._conn.content_type

    async def read(self, limit: int | None = None) -> bytes:
        return await self._conn.read(limit)

    def watch(self, first_s: float | None, idle_s: float | None) -> None:
        """See `_Conn.watch`; the clock starts now."""
        self._conn.watch(first_s, idle_s)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        conn = self._conn
        conn._unwatch()
        if conn._done and conn.keep_alive and conn.transport is not None and not conn._data:
            self._host.pool._release(self._host, conn)
            return
        if conn.transport is not None:
            conn.transport.close()
        self._host.pool._release(self._host, None)


class UpstreamPool:
    """Keep-alive connections per backend `host:port`; most recently used first."""

    def __init__(
        self,
        connect_timeout_s: float = 2.0,
        keepalive_s: float = 4.0,
        max_conns_per_host: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        self.max_conns_per_host = max(1, max_conns_per_host)
        self._clock = clock
        self._hosts: dict[tuple[str, int], _Host] = {}
        self._targets: dict[str, tuple[tuple[str, int], bytes]] = {}
        self._reaper: asyncio.TimerHandle | None = None
        self._watching: set[_Conn] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    # -- bookkeeping ----------------------------------------------------------------------

    def hosts(self) -> int:
        """Backends with open connections or requests in flight (for tests and metrics)."""
        return len(self._hosts)

    def connections(self) -> int:
        return sum(h.live for h in self._hosts.values())

    def retain(self, base_urls: set[str]) -> None:
        """Forget request prefixes of backends that left the routing table (their idle
        connections go with the keep-alive reaper)."""
        for url in [u for u in self._targets if u not in base_urls]:
            del self._targets[url]

    def _target(self, base_url: str) -> tuple[tuple[str, int], bytes]:
        cached = self._targets.get(base_url)
        if cached is None:
            parts = urlsplit(base_url)
            if parts.scheme != "http" or not parts.hostname:
                raise UpstreamProtocolError(f"only http:// backends are pooled: {base_url}")
            port = parts.port or 80
            host_header = parts.netloc.encode("idna")
            cached = ((parts.hostname, port), host_header)
            if len(self._targets) >= _MAX_TARGETS:
                self._targets.clear()  # backends churn; a cache miss costs one urlsplit
            self._targets[base_url] = cached
        return cached

    def _maybe_drop(self, host: _Host) -> None:
        idle = not host.live and not host.in_use and not host.waiters
        if idle and self._hosts.get(host.key) is host:
            del self._hosts[host.key]

    def _release(self, host: _Host, conn: _Conn | None) -> None:
        """A request is done with its connection (`conn` None: the connection was closed)."""
        host.in_use -= 1
        if conn is not None:
            if self._closed:
                if conn.transport is not None:
                    conn.transport.close()
            else:
                conn.idle_since = self._clock()
                conn.pooled = True
                host.idle.append(conn)
                self._schedule_reaper()
        self._wake_next(host)
        self._maybe_drop(host)

    @staticmethod
    def _wake_next(host: _Host) -> None:
        while host.waiters:
            waiter = host.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _watch(self, conn: _Conn) -> None:
        self._watching.add(conn)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(_SWEEP_S, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        for conn in list(self._watching):
            conn._check(now)
        if self._watching:
            self._sweeper = asyncio.get_running_loop().call_later(_SWEEP_S, self._sweep)

    def _schedule_reaper(self) -> None:
        if self._reaper is None:
            loop = asyncio.get_running_loop()
            self._reaper = loop.call_later(self.keepalive_s, self._reap)

    def _reap(self) -> None:
        """Close idle connections older than the keep-alive time (they would be refused
        anyway), so a backend that left the routing table leaves no socket behind."""
        self._reaper = None
        cutoff = self._clock() - self.keepalive_s
        pending = False
        for host in list(self._hosts.values()):
            while host.idle and host.idle[0].idle_since < cutoff:
                conn = host.idle.popleft()
                conn.pooled = False
                if conn.transport is not None:
                    conn.transport.close()
            pending = pending or bool(host.idle)
        if pending and not self._closed:
            self._schedule_reaper()

    # -- requests -------------------------------------------------------------------------

    async def _acquire(self, key: tuple[str, int]) -> _Host:
        host = self._hosts.get(key)
        if host is None:
            host = self._hosts[key] = _Host(self, key)
        while host.in_use >= self.max_conns_per_host:
            waiter = asyncio.get_running_loop().create_future()
            host.waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter in host.waiters:
                    host.waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._wake_next(host)  # handed a turn it will not use: pass it on
                self._maybe_drop(host)
                raise
        host.in_use += 1
        return host

    def _take_idle(self, host: _Host) -> _Conn | None:
        cutoff = self._clock() - self.keepalive_s
        idle = host.idle
        while idle:
            conn = idle.pop()
            conn.pooled = False
            transport = conn.transport
            if transport is not None and not transport.is_closing():
                if conn.idle_since >= cutoff:
                    return conn
                transport.close()
        return None

    async def _connect(self, host: _Host) -> _Conn:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout_s):
            _, conn = await loop.create_connection(lambda: _Conn(host), host.key[0], host.key[1])
        return conn

    async def post(
        self,
        base_url: str,
        path: str,
        body: bytes,
        first_s: float | None = None,
        idle_s: float | None = None,
    ) -> UpstreamResponse:
        """Send a POST; returns once the response head is in. `first_s` bounds the wait
        for the first body byte and `idle_s` each later silence (see `_Conn.watch`); the
        watch runs from the moment the request is written until the body is read."""
        key, host_header = self._target(base_url)
        request = b"".join((
            b"POST ", path.encode("latin-1"), b" HTTP/1.1\r\nHost: ", host_header,
            b"\r\nContent-Type: application/json\r\nContent-Length: ",
            str(len(body)).encode(), b"\r\n\r\n", body,
        ))  # fmt: skip
        host = await self._acquire(key)
        try:
            # A pooled connection that is already closed is skipped before anything is
            # written; once the request is written it is never re-sent (see the module doc).
            conn = self._take_idle(host) or await self._connect(host)
            return await self._exchange(host, conn, request, first_s, idle_s)
        except BaseException:
            self._release(host, None)
            raise

    async def _exchange(
        self,
        host: _Host,
        conn: _Conn,
        request: bytes,
        first_s: float | None,
        idle_s: float | None,
    ) -> UpstreamResponse:
        conn._reset()
        transport = conn.transport
        if transport is None:
            raise ConnectionResetError("connection closed")
        waiter = conn._head_waiter = conn._loop.create_future()
        transport.write(request)
        if first_s is not None or idle_s is not None:
            conn.watch(first_s, idle_s)
        try:
            await waiter
        except BaseException:
            conn.keep_alive = False
            conn._unwatch()
            if conn.transport is not None:
                conn.transport.close()
            raise
        return UpstreamResponse(host, conn)

    def close(self) -> None:
        """Close idle connections; connections in use close when released."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for host in list(self._hosts.values()):
            for conn in list(host.idle):
                conn.pooled = False
                if conn.transport is not None:
                    conn.transport.close()
            host.idle.clear()


class AiohttpUpstream:
    """The same contract as `UpstreamPool`, on aiohttp's client: the measured alternative.

    `hedge gateway --upstream-client aiohttp` selects it, and `bench/gateway_bench.py`
    runs it beside the pooled client, so the choice of the hand-written client above stays
    a measurement, not a belief. Stalls are bounded with aiohttp's per-read timeout.
    """

    def __init__(
        self, connect_timeout_s: float = 2.0, keepalive_s: float = 4.0, max_conns: int = 1024
    ) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=0, limit_per_host=max_conns, keepalive_timeout=keepalive_s
            ),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            trust_env=False,
        )
        self._connect_timeout_s = connect_timeout_s
        self._headers = {"Content-Type": "application/json"}

    async def post(
        self,
        base_url: str,
        path: str,
        body: bytes,
        first_s: float | None = None,
        idle_s: float | None = None,
    ) -> _AiohttpResponse:
        limits = [x for x in (first_s, idle_s) if x is not None]
        timeout = self._aiohttp.ClientTimeout(
            total=None, sock_connect=self._connect_timeout_s, sock_read=max(limits, default=None)
        )
        try:
            # A 3xx from an engine is an engine failure, not somewhere else to go.
            resp = await self._session.post(
                base_url + path,
                data=body,
                headers=self._headers,
                timeout=timeout,
                allow_redirects=False,
            )
        except self._aiohttp.ClientError as exc:
            raise ConnectionError(str(exc)) from exc
        return _AiohttpResponse(resp)

    def close(self) -> Awaitable[None]:
        return self._session.close()


class _AiohttpResponse:
    def __init__(self, resp: Any) -> None:
        self._resp = resp
        self.status: int = resp.status
        self.content_type: str = resp.headers.get("Content-Type", "application/json")

    async def readany(self) -> bytes:
        try:
            return bytes(await self._resp.content.readany())
        except TimeoutError as exc:
            raise UpstreamStalled("idle", 0.0) from exc
        except Exception as exc:  # aiohttp.ClientError
            raise ConnectionError(str(exc)) from exc

    async def read(self, limit: int | None = None) -> bytes:
        parts: list[bytes] = []
        size = 0
        while chunk := await self.readany():
            size += len(chunk)
            if limit is not None and size > limit:
                self._resp.close()
                raise ResponseTooLarge(limit)
            parts.append(chunk)
        return b"".join(parts)

    def watch(self, first_s: float | None, idle_s: float | None) -> None:
        pass  # bounded by the per-read timeout given at post()

    def release(self) -> None:
        self._resp.release()
