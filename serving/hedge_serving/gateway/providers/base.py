"""What every wire format provides: build the upstream request, translate the answer.

Providers are pure translation; the proxy does the I/O. A provider turns an OpenAI
request into an `UpstreamCall` (URL, headers, body), turns the upstream's non-streamed
body and error bodies back into OpenAI JSON, and supplies a `StreamRelay` that turns the
upstream's byte stream into OpenAI server-sent events one complete event at a time.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Protocol

from hedge_serving.gateway.errors import error_event
from hedge_serving.gateway.routing import ProviderSpec


class Endpoint(enum.StrEnum):
    """The OpenAI API paths the gateway proxies, relative to `/v1/`."""

    CHAT = "chat/completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"


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

    def translate_body(self, body: bytes) -> bytes:
        """A 2xx body in OpenAI form; raises ValueError if the upstream's is unreadable."""
        ...

    def translate_error(self, status: int, body: bytes) -> bytes:
        """An error body in the OpenAI error shape."""
        ...

    def relay(self, payload: dict[str, Any]) -> StreamRelay: ...


_EVENT_ENDS = (b"\n\n", b"\r\n\r\n", b"\r\r")
_DONE_ENDS = (b"[DONE]\n\n", b"[DONE]\r\n\r\n", b"[DONE]\r\r")


def _last_event_end(data: bytes) -> int:
    """Index just past the last complete SSE event in `data`, or 0."""
    end = 0
    for sep in _EVENT_ENDS:
        i = data.rfind(sep)
        if i >= 0 and i + len(sep) > end:
            end = i + len(sep)
    return end


class PassthroughRelay:
    """OpenAI-format SSE passed through unchanged, cut at event boundaries.

    Each upstream read is forwarded at once, minus a trailing partial event that waits for
    its end (vLLM and OpenAI write one event per chunk, so this is normally nothing). If
    the upstream ends without `data: [DONE]`, the client gets an OpenAI error event instead
    of a silently truncated stream.
    """

    __slots__ = ("_done", "_pending")

    def __init__(self) -> None:
        self._pending = b""
        self._done = False

    def feed(self, chunk: bytes) -> bytes:
        if self._pending:
            chunk = self._pending + chunk
            self._pending = b""
        if chunk.endswith(_EVENT_ENDS):  # fast path: whole events
            self._done = chunk.endswith(_DONE_ENDS)
            return chunk
        end = _last_event_end(chunk)
        self._pending = chunk[end:]
        out = chunk[:end]
        if out:
            self._done = out.endswith(_DONE_ENDS)
        return out

    def finish(self) -> bytes:
        if self._done and not self._pending.strip():
            return b""
        return error_event("the upstream stream ended before it was complete", code="stream_cut")


def with_model(payload: dict[str, Any], model: str) -> dict[str, Any]:
    out = dict(payload)
    out["model"] = model
    return out
