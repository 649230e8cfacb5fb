"""What every wire format provides: build the upstream request, translate the answer.

Providers are pure translation; the proxy does the I/O. A provider turns a request for
one of the gateway's endpoints into an `UpstreamCall` (URL, headers, body), turns the
upstream's non-streamed body and error bodies back into the client's format, and supplies
a `StreamRelay` that turns the upstream's byte stream into the client's server-sent
events one complete event at a time. Relays hold at most `MAX_EVENT_BYTES` of an
unfinished event: an upstream that sends more without an event boundary is cut with an
error event rather than buffered without bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from hedge_serving.gateway.endpoints import STREAM_END, Endpoint
from hedge_serving.gateway.errors import error_event
from hedge_serving.gateway.routing import ProviderSpec
from hedge_serving.gateway.streams import is_stream_end, last_event_end, split_events

MAX_EVENT_BYTES = 1024 * 1024  # one server-sent event; vLLM's are a few hundred bytes


class MissingKey(Exception):
    """The provider's API key is not available (unset env var, Secret missing)."""


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    url: str
    headers: dict[str, str]
    body: bytes


class StreamRelay(Protocol):
    def feed(self, chunk: bytes) -> bytes:
        """Bytes to send to the client now (complete events only; may be empty)."""
        ...

    def finish(self) -> bytes:
        """At upstream end of stream: trailing bytes, or an error event if it was cut."""
        ...


class Provider(Protocol):
    spec: ProviderSpec

    @property
    def label(self) -> str: ...

    def unsupported(self, endpoint: Endpoint, payload: dict[str, Any]) -> str | None:
        """Why this provider cannot serve the request, or None if it can."""
        ...

    def build(self, endpoint: Endpoint, payload: dict[str, Any], stream: bool) -> UpstreamCall:
        """The upstream request; raises `MissingKey` when the API key is unavailable."""
        ...

    def translate_body(self, endpoint: Endpoint, body: bytes) -> bytes:
        """A 2xx body in the client's format; ValueError if the upstream's is unreadable."""
        ...

    def translate_error(self, endpoint: Endpoint, status: int, body: bytes) -> bytes:
        """An error body in the client's error shape."""
        ...

    def relay(self, endpoint: Endpoint, payload: dict[str, Any]) -> StreamRelay: ...


_EVENT_ENDS = (b"\n\n", b"\r\n\r\n", b"\r\r")


class PassthroughRelay:
    """Server-sent events passed through unchanged, cut at event boundaries.

    Each upstream read is forwarded at once, minus a trailing partial event that waits for
    its end (vLLM and OpenAI write one event per chunk, so this is normally nothing). If
    the upstream ends without the endpoint's final event (`data: [DONE]` for chat and
    completions, `message_stop`, `response.completed`), the client gets an error event
    instead of a silently truncated stream.
    """

    __slots__ = ("_done", "_markers", "_max", "_pending")

    def __init__(
        self, endpoint: Endpoint = Endpoint.CHAT, max_event_bytes: int = MAX_EVENT_BYTES
    ) -> None:
        self._pending = b""
        self._done = False
        self._markers = STREAM_END.get(endpoint, (b"[DONE]",))
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> bytes:
        if self._pending:
            chunk = self._pending + chunk
            self._pending = b""
        if chunk.endswith(_EVENT_ENDS):  # fast path: whole events
            self._done = self._ends(chunk)
            return chunk
        end = last_event_end(chunk)
        self._pending = chunk[end:]
        if len(self._pending) > self._max:
            raise ValueError(f"an upstream event is larger than {self._max} bytes")
        out = chunk[:end]
        if out:
            self._done = self._ends(out)
        return out

    def _ends(self, data: bytes) -> bool:
        if self._markers == (b"[DONE]",):  # the hot path: one suffix test
            return data.endswith((b"[DONE]\n\n", b"[DONE]\r\n\r\n", b"[DONE]\r\r"))
        events = split_events(data[-4096:] if len(data) > 4096 else data)
        return bool(events) and is_stream_end(events[-1], self._markers)

    def finish(self) -> bytes:
        if self._done and not self._pending.strip():
            return b""
        return error_event("the upstream stream ended before it was complete", code="stream_cut")


def with_model(payload: dict[str, Any], model: str) -> dict[str, Any]:
    out = dict(payload)
    out["model"] = model
    return out


__all__ = [
    "MAX_EVENT_BYTES",
    "Endpoint",
    "MissingKey",
    "PassthroughRelay",
    "Provider",
    "StreamRelay",
    "UpstreamCall",
    "with_model",
]
