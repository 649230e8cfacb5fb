"""Anthropic Messages API: OpenAI chat completions translated there and back.

Request: system/developer messages become `system`; consecutive turns of one role are
merged; text and image parts become content blocks; `max_tokens` (or
`max_completion_tokens`, or the provider's default) is always set, as Anthropic requires;
`stop` becomes `stop_sequences`; `temperature` is clamped to Anthropic's 0..1.
Requests this translation cannot express faithfully (tools, `n` > 1, JSON response
formats, tool messages) are reported as unsupported, so the next provider is tried rather
than a silently different answer.

Response: text blocks joined into `message.content`, `stop_reason` mapped to
`finish_reason`, `usage` mapped. Streams: `message_start` -> first chunk with the role,
`content_block_delta` (text) -> content chunks, `message_delta` -> the chunk carrying
`finish_reason`, `message_stop` -> optional usage chunk and `data: [DONE]`, `error` ->
an OpenAI error event; `ping` and unknown events are skipped.

Clients of the gateway's own `/v1/messages` (and `/v1/messages/count_tokens`) already
speak the Messages API: those requests go to Anthropic unchanged but for the model name,
and the answers, errors and streams come back unchanged.
"""

from __future__ import annotations

import json
import time
from typing import Any

from hedge_serving.gateway.errors import error_body, error_event
from hedge_serving.gateway.keys import KeyStore
from hedge_serving.gateway.providers.base import (
    MAX_EVENT_BYTES,
    Endpoint,
    MissingKey,
    PassthroughRelay,
    StreamRelay,
    UpstreamCall,
    with_model,
)
from hedge_serving.gateway.routing import ProviderSpec

DEFAULT_ANTHROPIC_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

_UNSUPPORTED_FIELDS = ("tools", "functions", "tool_choice", "function_call", "audio")


class Untranslatable(Exception):
    """The request uses something the Messages API translation cannot express."""


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise Untranslatable("system messages may only hold text")
            text = part.get("text")
            if not isinstance(text, str):
                raise Untranslatable("text parts need a string `text`")
            parts.append(text)
        return "\n".join(parts)
    if content is None:
        return ""
    raise Untranslatable("message content must be a string or a list of parts")


def _image_block(part: dict[str, Any]) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise Untranslatable("image_url parts need a url")
    if url.startswith("data:"):
        header, sep, data = url.partition(",")
        if not sep or ";base64" not in header:
            raise Untranslatable("only base64 data URLs can be sent to Anthropic")
        media_type = header[len("data:") :].split(";", 1)[0]
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if content is None:
        return []
    if not isinstance(content, list):
        raise Untranslatable("message content must be a string or a list of parts")
    blocks: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            raise Untranslatable("content parts must be objects")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise Untranslatable("text parts need a string `text`")
            if text:
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            blocks.append(_image_block(part))
        else:
            raise Untranslatable(f"content part type {kind!r} is not supported")
    return blocks


def chat_to_messages(
    payload: dict[str, Any], model: str, default_max_tokens: int
) -> dict[str, Any]:
    """OpenAI chat completion request -> Anthropic Messages request."""
    for name in _UNSUPPORTED_FIELDS:
        if payload.get(name) is not None:
            raise Untranslatable(f"`{name}` is not translated to Anthropic")
    n = payload.get("n")
    if n is not None and n != 1:
        raise Untranslatable("`n` other than 1 is not supported by Anthropic")
    fmt = payload.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        raise Untranslatable("JSON response formats are not translated to Anthropic")
    messages = payload.get("messages")
    if not isinstance(messages, list):
        raise Untranslatable("`messages` must be a list")

    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, dict):
            raise Untranslatable("each message must be an object")
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            text = _text_of(content)
            if text:
                system.append(text)
            continue
        if role not in ("user", "assistant"):
            raise Untranslatable(f"messages with role {role!r} are not translated to Anthropic")
        if message.get("tool_calls") or message.get("function_call"):
            raise Untranslatable("tool calls are not translated to Anthropic")
        blocks = _blocks(content)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    # Single text blocks read more naturally (and match the API docs) as plain strings.
    for turn in turns:
        blocks = turn["content"]
        if len(blocks) == 1 and blocks[0]["type"] == "text":
            turn["content"] = blocks[0]["text"]

    max_tokens = payload.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = payload.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        max_tokens = default_max_tokens
    out: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": turns}
    if system:
        out["system"] = "\n\n".join(system)
    stop = payload.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if isinstance(stop, list):
        sequences = [s for s in stop if isinstance(s, str) and s.strip()]
        if sequences:
            out["stop_sequences"] = sequences
    temperature = payload.get("temperature")
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        out["temperature"] = min(max(float(temperature), 0.0), 1.0)
    top_p = payload.get("top_p")
    if isinstance(top_p, int | float) and not isinstance(top_p, bool):
        out["top_p"] = float(top_p)
    if payload.get("stream") is True:
        out["stream"] = True
    user = payload.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    return out


def _usage(usage: Any) -> tuple[int, int]:
    if not isinstance(usage, dict):
        return 0, 0

    def num(key: str) -> int:
        value = usage.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    prompt = (
        num("input_tokens") + num("cache_creation_input_tokens") + num("cache_read_input_tokens")
    )
    return prompt, num("output_tokens")


def _finish(stop_reason: Any) -> str | None:
    if stop_reason is None:
        return None
    return FINISH_REASONS.get(str(stop_reason), "stop")


def message_to_chat(message: dict[str, Any], created: int | None = None) -> dict[str, Any]:
    """Anthropic Messages response -> OpenAI chat completion."""
    content = message.get("content")
    texts = []
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text":
                text = block.get("text")
                if isinstance(text, str):
                    texts.append(text)
    prompt, completion = _usage(message.get("usage"))
    return {
        "id": str(message.get("id") or "msg"),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": str(message.get("model") or ""),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(texts)},
                "logprobs": None,
                "finish_reason": _finish(message.get("stop_reason")) or "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


def anthropic_error_to_openai(status: int, body: bytes) -> bytes:
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict):
        message = err.get("message")
        kind = err.get("type")
        if kind in ("api_error", "overloaded_error"):
            kind = "server_error"
        return error_body(
            message if isinstance(message, str) else f"upstream error (HTTP {status})",
            kind if isinstance(kind, str) else "upstream_error",
        )
    return error_body(f"upstream error (HTTP {status})", "upstream_error")


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class AnthropicStreamRelay:
    """Anthropic's stream events -> OpenAI `chat.completion.chunk` events."""

    def __init__(
        self,
        include_usage: bool = False,
        created: int | None = None,
        max_event_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        self._buffer = b""
        self._max = max_event_bytes
        self._include_usage = include_usage
        self._created = int(time.time()) if created is None else created
        self._id = "msg"
        self._model = ""
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._finished = False  # message_stop or error seen

    def feed(self, chunk: bytes) -> bytes:
        data = self._buffer + chunk
        data = data.replace(b"\r\n", b"\n")
        out: list[bytes] = []
        while True:
            end = data.find(b"\n\n")
            if end < 0:
                break
            raw, data = data[:end], data[end + 2 :]
            out.append(self._event(raw))
        self._buffer = data
        if len(data) > self._max and not self._finished:
            self._finished = True
            self._buffer = b""
            out.append(error_event("an Anthropic stream event was too large", code="bad_stream"))
        return b"".join(out)

    def finish(self) -> bytes:
        if self._finished:
            return b""
        self._finished = True
        return error_event("the Anthropic stream ended before message_stop", code="stream_cut")

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return _sse(
            {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self._model,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ],
            }
        )

    def _event(self, raw: bytes) -> bytes:
        if self._finished:
            return b""
        data_lines = []
        for line in raw.split(b"\n"):
            if line.startswith(b"data:"):
                data_lines.append(line[5:].lstrip(b" "))
        if not data_lines:
            return b""
        try:
            event = json.loads(b"\n".join(data_lines))
        except ValueError:
            self._finished = True
            return error_event(
                "the Anthropic stream carried an unreadable event", code="bad_stream"
            )
        if not isinstance(event, dict):
            return b""
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message")
            if isinstance(message, dict):
                self._id = str(message.get("id") or self._id)
                self._model = str(message.get("model") or self._model)
                self._prompt_tokens, self._completion_tokens = _usage(message.get("usage"))
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "content_block_start":
            block = event.get("content_block")
            if isinstance(block, dict) and block.get("type") == "text":
                text = block.get("text")
                if isinstance(text, str) and text:
                    return self._chunk({"content": text})
            return b""
        if kind == "content_block_delta":
            delta = event.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                text = delta.get("text")
                if isinstance(text, str) and text:
                    return self._chunk({"content": text})
            return b""
        if kind == "message_delta":
            usage = event.get("usage")
            if isinstance(usage, dict):  # cumulative counts; only the keys present change
                prompt, completion = _usage(usage)
                if "output_tokens" in usage:
                    self._completion_tokens = completion
                if "input_tokens" in usage:
                    self._prompt_tokens = prompt
            delta = event.get("delta")
            reason = _finish(delta.get("stop_reason")) if isinstance(delta, dict) else None
            return self._chunk({}, reason or "stop")
        if kind == "message_stop":
            self._finished = True
            out = b""
            if self._include_usage:
                prompt, completion = self._prompt_tokens, self._completion_tokens
                out = _sse(
                    {
                        "id": self._id,
                        "object": "chat.completion.chunk",
                        "created": self._created,
                        "model": self._model,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": prompt,
                            "completion_tokens": completion,
                            "total_tokens": prompt + completion,
                        },
                    }
                )
            return out + b"data: [DONE]\n\n"
        if kind == "error":
            self._finished = True
            err = event.get("error")
            message = err.get("message") if isinstance(err, dict) else None
            return error_event(
                message if isinstance(message, str) else "the Anthropic stream failed",
                code="upstream_error",
            )
        return b""  # ping, content_block_stop and event types added later


_NATIVE = (Endpoint.MESSAGES, Endpoint.MESSAGES_COUNT_TOKENS)


class AnthropicProvider:
    def __init__(self, spec: ProviderSpec, keys: KeyStore) -> None:
        self.spec = spec
        self._keys = keys
        base = (spec.base_url or DEFAULT_ANTHROPIC_BASE_URL).rstrip("/")
        if base.endswith("/v1"):
            base = base[:-3]
        self._base = base
        self._url = base + "/v1/messages"

    @property
    def label(self) -> str:
        return self.spec.label

    def unsupported(self, endpoint: Endpoint, payload: dict[str, Any]) -> str | None:
        if endpoint in _NATIVE:
            return None
        if endpoint is not Endpoint.CHAT:
            return f"anthropic has no {endpoint.value} endpoint"
        try:
            chat_to_messages(payload, self.spec.model, self.spec.max_tokens)
        except Untranslatable as exc:
            return str(exc)
        return None

    def build(self, endpoint: Endpoint, payload: dict[str, Any], stream: bool) -> UpstreamCall:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "anthropic-version": ANTHROPIC_VERSION,
        }
        if self.spec.api_key is not None:
            key = self._keys.get(self.spec.api_key)
            if not key:
                raise MissingKey(self.spec.api_key.describe())
            headers["x-api-key"] = key
        if endpoint in _NATIVE:
            native = with_model(payload, self.spec.model)
            return UpstreamCall(self._base + endpoint.value, headers, json.dumps(native).encode())
        body = chat_to_messages(payload, self.spec.model, self.spec.max_tokens)
        return UpstreamCall(self._url, headers, json.dumps(body).encode())

    def translate_body(self, endpoint: Endpoint, body: bytes) -> bytes:
        if endpoint in _NATIVE:
            return body
        message = json.loads(body)  # ValueError: the proxy treats it as a failed attempt
        if not isinstance(message, dict):
            raise ValueError("the Anthropic response was not a JSON object")
        return json.dumps(message_to_chat(message)).encode()

    def translate_error(self, endpoint: Endpoint, status: int, body: bytes) -> bytes:
        if endpoint in _NATIVE:
            return body
        return anthropic_error_to_openai(status, body)

    def relay(self, endpoint: Endpoint, payload: dict[str, Any]) -> StreamRelay:
        if endpoint in _NATIVE:
            return PassthroughRelay(endpoint)
        options = payload.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return AnthropicStreamRelay(include_usage=include_usage)
