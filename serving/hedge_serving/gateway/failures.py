"""Pure: what can go wrong with one attempt at a self-hosted backend, as exception types.

Raised by the hot-path client (`upstream`: `UpstreamProtocolError`, `UpstreamStalled`,
`ResponseTooLarge`) and by the reading of engines' answers (`streams`: `EngineError`,
`IncompleteStream`), and judged by `attempts.classify`. Kept apart from the I/O that raises
them so the judgement imports no I/O (no asyncio, no aiohttp); `upstream` and `streams`
re-export them under their old names.
"""

from __future__ import annotations

# 4xx that are not the client's: the engine is busy or slow, another pod may serve.
ENGINE_BUSY = frozenset({408, 429})


class UpstreamProtocolError(ConnectionError):
    """The backend answered something that is not valid HTTP/1.1."""


class UpstreamStalled(TimeoutError):
    """The backend sent nothing within a `watch()` limit. `phase` is `first` or `idle`."""

    def __init__(self, phase: str, seconds: float) -> None:
        what = "first byte of the answer" if phase == "first" else "next bytes of the answer"
        super().__init__(f"no {what} within {seconds:g}s")
        self.phase = phase
        self.seconds = seconds


class ResponseTooLarge(Exception):
    """`read()` was asked to hold more than its limit of body bytes."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the backend's answer is larger than {limit} bytes")
        self.limit = limit


class EngineError(Exception):
    """An error answered by an engine (HTTP status or error event), with its status."""

    def __init__(self, status: int, message: str, body: bytes) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.body = body  # in the OpenAI error shape

    @property
    def is_client_error(self) -> bool:
        return 400 <= self.status < 500 and self.status not in ENGINE_BUSY


class IncompleteStream(Exception):
    """The engine's stream ended before `data: [DONE]`."""


__all__ = [
    "ENGINE_BUSY",
    "EngineError",
    "IncompleteStream",
    "ResponseTooLarge",
    "UpstreamProtocolError",
    "UpstreamStalled",
]
