"""Tokens the fallback providers report spending, for the fallback budget and
hedge_gateway_fallback_tokens_total.

Read from what the client gets (after translation): an answer's `usage`, or the usage a
stream reports — OpenAI's last chunk (`stream_options.include_usage`, which the gateway asks
providers for and takes out again when the client did not ask), the Responses API's
`response.completed`, Anthropic's `message_start` and `message_delta`. Counted as
`total_tokens`, else prompt + completion (input + output). Only fallback answers are read
this way, never the self-hosted path.

When the provider reports no usage (it omits it, or the client left the stream before its
last chunk) the spend is estimated, on the side of charging more: the prompt at one token
per 4 bytes of the request body as sent, plus one token per 4 characters of the text the
client was relayed (`content`, `text`, `delta`, `refusal`, tool-call `arguments` … strings,
counted as the stream goes; for an answer in one piece, of the answer's body) — about what
OpenAI's tokenizers give for English text, never less than one token per relayed event.
"""

from __future__ import annotations

import json
import math
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


CHARS_PER_TOKEN = 4
_TEXT_KEYS = frozenset(
    {"content", "text", "delta", "refusal", "arguments", "partial_json", "thinking", "output"}
)
_MAX_DEPTH = 32


def text_chars(doc: Any, depth: int = 0) -> int:
    """Characters of generated text in an answer or stream event (the strings under the
    keys a model's text travels in), bounded in depth; `usage` is not text."""
    if depth > _MAX_DEPTH:
        return 0
    total = 0
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key == "usage":
                continue
            if isinstance(value, str):
                if key in _TEXT_KEYS:
                    total += len(value)
            elif isinstance(value, dict | list):
                total += text_chars(value, depth + 1)
    elif isinstance(doc, list):
        for item in doc:
            total += text_chars(item, depth + 1)
    return total


def estimate_prompt_tokens(body_bytes: int) -> int:
    return math.ceil(body_bytes / CHARS_PER_TOKEN)


def estimate_answer_tokens(body: bytes) -> int:
    """Completion tokens of an answer in one piece that reports no usage."""
    try:
        chars = text_chars(json.loads(body))
    except ValueError:
        chars = len(body)
    return max(1, math.ceil(chars / CHARS_PER_TOKEN))


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

    __slots__ = ("_chars", "_count", "_events", "_finished", "_inner", "_strip")

    def __init__(self, inner: StreamRelay, strip_usage_chunk: bool) -> None:
        self._inner = inner
        self._strip = strip_usage_chunk
        self._count = _Count()
        self._chars = 0  # generated text relayed so far, for the estimate
        self._events = 0
        self._finished = False  # the upstream stream reached its end

    @property
    def tokens(self) -> int | None:
        """What the stream reported, or None."""
        return self._count.tokens

    def charge(self, prompt_tokens: int) -> int:
        """The tokens to charge: as reported by a stream that ended; else (no usage, or the
        client or the upstream left early, when Anthropic's running counts are partial)
        the larger of what was reported and the estimate of what was relayed."""
        reported = self._count.tokens or 0
        if reported and self._finished:
            return reported
        completion = max(self._events, math.ceil(self._chars / CHARS_PER_TOKEN))
        return max(reported, prompt_tokens + completion)

    def feed(self, chunk: bytes) -> bytes:
        out = self._inner.feed(chunk)
        self._measure(out)
        return self._scan(out) if b'"usage"' in out else out

    def finish(self) -> bytes:
        self._finished = True
        out = self._inner.finish()
        self._measure(out)
        return self._scan(out) if b'"usage"' in out else out

    def _measure(self, out: bytes) -> None:
        if not out:
            return
        for event in split_events(out[: last_event_end(out) or len(out)]):
            data = event_data(event)
            if not data or data == b"[DONE]":
                continue
            try:
                doc = json.loads(data)
            except ValueError:
                continue
            self._events += 1
            self._chars += text_chars(doc)

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
