"""Tokens the fallback providers report spending, for the fallback budget and
hedge_gateway_fallback_tokens_total.

Read from what the client gets (after translation): an answer's `usage`, or the usage a
stream reports — OpenAI's last chunk (`stream_options.include_usage`, which the gateway asks
providers for and takes out again when the client did not ask), the Responses API's
`response.completed`, Anthropic's `message_start` and `message_delta`. Counted as
`total_tokens`, else prompt + completion (input + output). Only fallback answers are read
this way, never the self-hosted path.
"""

from __future__ import annotations

import json
from typing import Any

from hedge_serving.gateway.providers.base import StreamRelay
from hedge_serving.gateway.streams import event_data, last_event_end, split_events


class _Count:
    __slots__ = ("input", "output", "total")

    def __init__(self) -> None:
        self.input = self.output = self.total = 0

    def add(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        # Cumulative counts (Anthropic repeats output_tokens as it grows): keep the largest.
        for attr, keys in (
            ("input", ("prompt_tokens", "input_tokens")),
            ("output", ("completion_tokens", "output_tokens")),
            ("total", ("total_tokens",)),
        ):
            for key in keys:
                value = usage.get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    setattr(self, attr, max(getattr(self, attr), value))

    @property
    def tokens(self) -> int | None:
        if self.total:
            return self.total
        return self.input + self.output or None


def _usages(doc: Any) -> list[Any]:
    if not isinstance(doc, dict):
        return []
    found = [doc.get("usage")]
    for key in ("response", "message"):  # Responses' response.completed, Anthropic's start
        inner = doc.get(key)
        if isinstance(inner, dict):
            found.append(inner.get("usage"))
    return found


def answer_tokens(body: bytes) -> int | None:
    """The tokens an answer in one piece reports, or None."""
    if b'"usage"' not in body:
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    count = _Count()
    for usage in _usages(doc):
        count.add(usage)
    return count.tokens


class MeteredRelay:
    """A provider's stream relay that notes the usage the stream reports (`tokens`) and,
    with `strip_usage_chunk`, drops OpenAI's usage-only chunk the client did not ask for."""

    __slots__ = ("_count", "_inner", "_strip")

    def __init__(self, inner: StreamRelay, strip_usage_chunk: bool) -> None:
        self._inner = inner
        self._strip = strip_usage_chunk
        self._count = _Count()

    @property
    def tokens(self) -> int | None:
        return self._count.tokens

    def feed(self, chunk: bytes) -> bytes:
        out = self._inner.feed(chunk)
        return self._scan(out) if b'"usage"' in out else out

    def finish(self) -> bytes:
        out = self._inner.finish()
        return self._scan(out) if b'"usage"' in out else out

    def _scan(self, out: bytes) -> bytes:
        end = last_event_end(out) or len(out)
        kept: list[bytes] = []
        dropped = False
        for event in split_events(out[:end]):
            if b'"usage"' in event:
                try:
                    doc = json.loads(event_data(event))
                except ValueError:
                    doc = None
                for usage in _usages(doc):
                    self._count.add(usage)
                if (
                    self._strip
                    and isinstance(doc, dict)
                    and doc.get("choices") == []
                    and "usage" in doc
                ):
                    dropped = True
                    continue
            kept.append(event)
        if not dropped:
            return out
        return b"".join(e + b"\n\n" for e in kept) + out[end:]
