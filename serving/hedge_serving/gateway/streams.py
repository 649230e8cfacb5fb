"""Reading what engines answer: error bodies and events, stream ends, re-assembly.

Engines report errors in two shapes, and the gateway reads both: OpenAI's
`{"error": {"message", "type", "param", "code"}}` (vLLM today) and the older flat
`{"object": "error", "message", "type", "param", "code"}`; inside a stream the same
objects arrive as a `data:` event (Anthropic-style and Responses streams use
`{"type": "error", ...}`). `classify_error` decides whose fault an error is: the
client's (4xx: a too-long prompt, a bad parameter) goes straight back to the client
and never counts against the engine; everything else is the engine's.

`Reassembler` turns a chat or text completion stream (asked for with
`stream_options.include_usage`) back into the non-streamed answer vLLM would have given:
`id`, `object`, `created`, `model`, `choices` in index order (`n` > 1) with the message or
text, tool calls, reasoning, logprobs, `finish_reason`, `stop_reason`, token ids, and
`usage`. What it holds is bounded per answer and per gateway: logprobs, decoded, hold ~6x
the bytes they arrived as (a dict per token and per alternative; issue 16, Medium-9), so
their events count `LOGPROBS_WEIGHT` times against the answer's `max_bytes`, and all the
re-assemblies of one gateway together hold at most `HeldBytes.limit` (`GATEWAY_HELD`).
The fields vLLM always writes but a stream leaves out (`null`s, empty tool call
lists) come from the `*_DEFAULTS` tables below, the one place to align with an engine
version.
"""

from __future__ import annotations

import json
import re
from typing import Any

from hedge_serving.gateway.errors import error_body
from hedge_serving.gateway.failures import ENGINE_BUSY as ENGINE_BUSY
from hedge_serving.gateway.failures import EngineError as EngineError
from hedge_serving.gateway.failures import IncompleteStream as IncompleteStream
from hedge_serving.gateway.failures import ResponseTooLarge

# Cheap prefixes that mark an event worth parsing as a possible error.
_ERROR_PREFIXES = (
    b'data: {"error"',
    b'data: {"object":"error"',
    b'data: {"object": "error"',
    b'data: {"type":"error"',
    b'data: {"type": "error"',
    b"event: error",
)
_EVENT_ENDS = (b"\n\n", b"\r\n\r\n", b"\r\r")

# HTTP statuses for the exception class names vLLM writes as the error `type`.
_TYPE_STATUS = {
    "badrequesterror": 400,
    "invalid_request_error": 400,
    "authenticationerror": 401,
    "authentication_error": 401,
    "permissiondeniederror": 403,
    "permission_error": 403,
    "notfounderror": 404,
    "not_found_error": 404,
    "request_too_large": 413,
    "ratelimiterror": 429,
    "rate_limit_error": 429,
    "internalservererror": 500,
    "server_error": 500,
    "api_error": 500,
    "overloaded_error": 529,
    "serviceunavailableerror": 503,
}


def last_event_end(data: bytes | bytearray) -> int:
    """Index just past the last complete SSE event in `data`, or 0."""
    end = 0
    for sep in _EVENT_ENDS:
        i = data.rfind(sep)
        if i >= 0 and i + len(sep) > end:
            end = i + len(sep)
    return end


def split_events(data: bytes) -> list[bytes]:
    """Complete events of `data` (which must end at an event boundary), without blanks."""
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return [e for e in data.split(b"\n\n") if e.strip()]


def event_data(event: bytes) -> bytes:
    """The `data:` payload of one event (lines joined), or b""."""
    if event.startswith(b"data: ") and b"\n" not in event:  # the usual one-line event
        return event[6:]
    lines = [
        line[5:].lstrip(b" ") if line.startswith(b"data:") else None for line in event.split(b"\n")
    ]
    return b"\n".join(x for x in lines if x is not None)


def is_stream_end(event: bytes, markers: tuple[bytes, ...]) -> bool:
    """Whether `event` (one complete event) is one that ends a stream."""
    for marker in markers:
        if marker == b"[DONE]":
            if event_data(event).strip() == b"[DONE]":
                return True
        elif event.startswith(b"event: " + marker) or (
            b'"type"' in event and _json_type(event) == marker.decode()
        ):
            return True
    return False


def _json_type(event: bytes) -> str | None:
    try:
        doc = json.loads(event_data(event))
    except ValueError:
        return None
    kind = doc.get("type") if isinstance(doc, dict) else None
    return kind if isinstance(kind, str) else None


def looks_like_error_event(event: bytes) -> bool:
    return event.lstrip().startswith(_ERROR_PREFIXES)


def parse_error(body: bytes, http_status: int | None = None) -> EngineError:
    """An engine error from a JSON body or an event's data, in either shape.

    The status is the HTTP status when there is one, else the error's numeric `code`,
    else what its `type` names, else 500 (unknown errors are the engine's).
    """
    try:
        doc: Any = json.loads(body)
    except ValueError:
        doc = None
    err: Any = None
    if isinstance(doc, dict):
        err = doc.get("error")
        if not isinstance(err, dict):
            err = doc if (doc.get("object") == "error" or doc.get("type") == "error") else {}
    if not isinstance(err, dict):
        err = {}
    message = err.get("message")
    if not isinstance(message, str):
        message = f"the engine answered HTTP {http_status}" if http_status else "engine error"
    kind = err.get("type") if isinstance(err.get("type"), str) else None
    if kind == "error":  # Responses/Anthropic event: the detail is one level down
        kind = err.get("code") if isinstance(err.get("code"), str) else None
    code = err.get("code")
    status = http_status
    if status is None and isinstance(code, int) and not isinstance(code, bool):
        status = code if 400 <= code < 600 else None
    if status is None and isinstance(code, str) and code.isdigit():
        status = int(code) if 400 <= int(code) < 600 else None
    if status is None and kind is not None:
        status = _TYPE_STATUS.get(kind.lower())
    status = status or 500
    param = err.get("param") if isinstance(err.get("param"), str) else None
    out_type = kind or ("invalid_request_error" if 400 <= status < 500 else "server_error")
    out_code: Any = code if isinstance(code, str | int) and not isinstance(code, bool) else None
    normalized = json.dumps(
        {"error": {"message": message, "type": out_type, "param": param, "code": out_code}}
    ).encode()
    return EngineError(status, message, normalized)


def error_event_of(event: bytes) -> EngineError | None:
    """The error an event carries, if it is an error event."""
    if not looks_like_error_event(event):
        return None
    data = event_data(event)
    return parse_error(data) if data else EngineError(500, "engine error", b"")


# -- re-assembly -------------------------------------------------------------------------

# The keys vLLM (0.32) writes in its unstreamed answers, in its order, with what they hold
# when a stream does not say (a stream leaves nulls out). The one place to align with an
# engine version: tests/serving/data holds vLLM 0.32's answers both ways, and a test holds the
# re-assembled answer to the unstreamed one, key by key and in order.
CHAT_TOP: tuple[tuple[str, Any], ...] = (
    ("service_tier", None), ("system_fingerprint", None), ("usage", None),
    ("prompt_logprobs", None), ("prompt_token_ids", None), ("prompt_text", None),
    ("kv_transfer_params", None), ("ec_transfer_params", None), ("metrics", None),
)  # fmt: skip
COMPLETION_TOP: tuple[tuple[str, Any], ...] = (
    ("service_tier", None), ("system_fingerprint", None), ("usage", None),
    ("kv_transfer_params", None), ("ec_transfer_params", None), ("metrics", None),
)  # fmt: skip
CHAT_CHOICE: tuple[tuple[str, Any], ...] = (
    ("logprobs", None), ("finish_reason", None), ("stop_reason", None), ("token_ids", None),
    ("routed_experts", None),
)  # fmt: skip
COMPLETION_CHOICE: tuple[tuple[str, Any], ...] = (
    ("logprobs", None), ("finish_reason", None), ("stop_reason", None), ("token_ids", None),
    ("prompt_logprobs", None), ("prompt_token_ids", None), ("routed_experts", None),
)  # fmt: skip
# `tool_calls` is written only when there are some (between `function_call` and `reasoning`).
MESSAGE: tuple[tuple[str, Any], ...] = (
    ("refusal", None), ("annotations", None), ("audio", None), ("function_call", None),
    ("reasoning", None),
)  # fmt: skip
USAGE: tuple[tuple[str, Any], ...] = (
    ("prompt_tokens_details", None), ("completion_tokens_details", None),
)  # fmt: skip
_TOP_ORDER = ("id", "object", "created", "model", "choices")
_CHOICE_KEYS = frozenset({"index", "delta", "text", "logprobs", "finish_reason", "stop_reason"})
_decode = json.JSONDecoder().decode
# vLLM's token chunks are compact JSON of a few shapes; their text is taken without
# decoding the event (other shapes, and other engines, take the full parse).
_CHOICES_AT = b'"choices":[{"index":'
_STR = rb'"(?:[^"\\]|\\.)*"'
# The first chunk of a vLLM chat stream: the answer's identity and the assistant's role.
_ROLE_CHUNK = re.compile(
    rb'\{"id":('
    + _STR
    + rb'),"object":"chat\.completion\.chunk","created":(\d+),"model":('
    + _STR
    + rb'),"choices":\[\{"index":(\d+),"delta":\{"role":"assistant","content":""\},'
    rb'"logprobs":null,"finish_reason":null\}\](,"prompt_token_ids":null,"prompt_text":null)?\}'
)
_USAGE_AT = b',"choices":[],"usage":'
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _string(literal: bytes) -> str:
    """A JSON string literal (quotes included) as text; escapes are rare, so decoded rarely."""
    return literal[1:-1].decode() if b"\\" not in literal else str(_decode(literal.decode()))


_TOKEN_CHUNK = re.compile(
    rb'"choices":\[\{"index":(\d+),(?:"delta":\{"content":|"text":)(' + _STR + rb")\}?,"
    rb'"logprobs":null,"finish_reason":(null|"[a-z_]+")'
    rb'(?:,"stop_reason":(null|\d+|' + _STR + rb"))?"
    rb'(?:,"prompt_token_ids":null)?(?:,"token_ids":null)?\}\]\}'
)


class _Choice:
    __slots__ = ("extra", "finish", "index", "logprobs", "message", "stop", "text", "tools")

    def __init__(self, index: int) -> None:
        self.index = index
        self.text: list[str] = []  # completions text, or chat content
        self.message: dict[str, Any] = {}  # chat: role and any other delta fields
        self.tools: dict[int, dict[str, Any]] = {}
        self.logprobs: Any = None
        self.finish: Any = None
        self.stop: Any = None
        self.extra: dict[str, Any] = {}  # other choice keys (token_ids, ...)


LOGPROBS_WEIGHT = 6  # decoded logprobs hold 5.3x (5 top per token, tracemalloc) to 5.8x
MAX_HELD_BYTES = 256 * 1024 * 1024  # all re-assemblies of one gateway, weighted as above
_LOGPROBS_SET = re.compile(rb'"logprobs":\s*[\[{]')


class HeldBytes:
    """The weighted bytes all `Reassembler`s of one gateway hold, against one cap."""

    def __init__(self, limit: int = MAX_HELD_BYTES) -> None:
        self.limit = limit
        self.held = 0

    def take(self, n: int) -> bool:
        if self.held + n > self.limit > 0:
            return False
        self.held += n
        return True

    def give(self, n: int) -> None:
        self.held -= n


GATEWAY_HELD = HeldBytes()


class GatewayHoldsTooMuch(ResponseTooLarge):
    """Re-assembled answers in flight already hold the gateway's cap."""

    def __init__(self, limit: int) -> None:
        Exception.__init__(
            self, f"answers being re-assembled already hold the gateway's {limit} bytes"
        )
        self.limit = limit


class Reassembler:
    """Feeds on the engine's stream bytes; `result()` is the non-streamed body."""

    def __init__(self, chat: bool, max_bytes: int, held: HeldBytes | None = None) -> None:
        self.chat = chat
        self.max_bytes = max_bytes
        self._held = GATEWAY_HELD if held is None else held
        self._taken = 0  # what this answer holds of `_held`
        self._size = 0
        self._pending = b""
        self._top: dict[str, Any] = {}
        self._choices: dict[int, _Choice] = {}
        self._usage: Any = None
        self.done = False

    def feed(self, chunk: bytes) -> None:
        """Raises `EngineError` for an error event, `ValueError` for unreadable data,
        `ResponseTooLarge` past `max_bytes`."""
        self._charge(len(chunk))
        data = self._pending + chunk if self._pending else chunk
        if len(data) > 2 and data.find(b"\n\n") == len(data) - 2 and b"\r" not in data:
            events = [data[:-2]]  # the usual read: exactly one whole event
            self._pending = b""
        else:
            end = last_event_end(data)
            self._pending = data[end:]
            if not end:
                return
            events = split_events(data[:end])
        for event in events:
            if self.done:
                break
            payload = event_data(event)
            if not payload:
                continue
            if payload.strip() == b"[DONE]":
                self.done = True
                break
            if self._top:
                if payload.endswith(b"}]}"):
                    at = payload.find(_CHOICES_AT)
                    token = _TOKEN_CHUNK.fullmatch(payload, at) if at > 0 else None
                    if token is not None and self._token(token):
                        continue
                elif payload.endswith(b"}}"):  # the usage chunk: decode only its usage
                    at = payload.find(_USAGE_AT)
                    if at > 0:
                        self._usage = _decode(payload[at + len(_USAGE_AT) : -1].decode())
                        continue
            elif self.chat:
                role = _ROLE_CHUNK.fullmatch(payload)
                if role is not None:
                    self._role(role)
                    continue
            if payload[:1] != b"{" or looks_like_error_event(event):
                err = error_event_of(event)
                if err is not None:
                    raise err
            if _LOGPROBS_SET.search(payload) is not None:
                self._charge(len(payload) * (LOGPROBS_WEIGHT - 1))  # what it holds decoded
            doc = _decode(payload.decode())
            if type(doc) is not dict:
                raise ValueError("a stream event is not a JSON object")
            self._take(doc)

    def _charge(self, n: int) -> None:
        self._size += n
        if self._size > self.max_bytes:
            self.release()
            raise ResponseTooLarge(self.max_bytes)
        if not self._held.take(n):
            self.release()
            raise GatewayHoldsTooMuch(self._held.limit)
        self._taken += n

    def release(self) -> None:
        """Give back what this answer holds of the gateway's cap (idempotent)."""
        if self._taken:
            self._held.give(self._taken)
            self._taken = 0

    def __del__(self) -> None:  # an answer abandoned mid-stream (client gone, engine cut)
        self.release()

    def _role(self, match: re.Match[bytes]) -> None:
        self._top = {
            "id": _string(match.group(1)),
            "object": "chat.completion.chunk",
            "created": int(match.group(2)),
            "model": _string(match.group(3)),
        }
        if match.group(5):  # vLLM 0.32 says these on its first chunk, as nulls
            self._top["prompt_token_ids"] = self._top["prompt_text"] = None
        index = int(match.group(4))
        choice = self._choices[index] = _Choice(index)
        choice.message["role"] = "assistant"
        choice.text.append("")

    def _token(self, match: re.Match[bytes]) -> bool:
        """A plain token chunk of a choice already seen; False: use the full parse."""
        choice = self._choices.get(int(match.group(1)))
        if choice is None or choice.tools:
            return False
        choice.text.append(_string(match.group(2)))
        finish = match.group(3)
        if finish != b"null":
            choice.finish = finish[1:-1].decode()
        stop = match.group(4)
        if stop is not None and stop != b"null":
            choice.stop = _decode(stop.decode())
        return True

    def _take(self, doc: dict[str, Any]) -> None:
        # Per token: a few dict lookups. Fields other than the usual ones take the slow path.
        choices = doc.pop("choices", None)
        usage = doc.pop("usage", None)
        if usage is not None:
            self._usage = usage
        top = self._top
        if not top:
            self._top = doc
        elif len(doc) != len(top) or any(top.get(k) is None for k in doc):
            for key, value in doc.items():
                if top.get(key) is None:
                    top[key] = value
        for raw in choices or ():
            if type(raw) is not dict:
                continue
            index = raw.get("index", 0)
            choice = self._choices.get(index)
            if choice is None:
                choice = self._choices[index] = _Choice(index)
            delta = raw.get("delta")
            if delta is not None:
                content = delta.get("content") if type(delta) is dict else None
                if type(content) is str and len(delta) == 1:
                    choice.text.append(content)
                else:
                    self._delta(choice, delta)
            text = raw.get("text")
            if type(text) is str:
                choice.text.append(text)
            logprobs = raw.get("logprobs")
            if logprobs is not None:
                choice.logprobs = _merge_logprobs(choice.logprobs, logprobs)
            finish = raw.get("finish_reason")
            if finish is not None:
                choice.finish = finish
            stop = raw.get("stop_reason")
            if stop is not None:
                choice.stop = stop
            if len(raw) > 5 or not raw.keys() <= _CHOICE_KEYS:
                for key in raw.keys() - _CHOICE_KEYS:
                    value = raw[key]
                    have = choice.extra.get(key)
                    if isinstance(value, list) and isinstance(have, list):
                        choice.extra[key] = have + value
                    elif value is not None or key not in choice.extra:
                        choice.extra[key] = value

    def _delta(self, choice: _Choice, delta: Any) -> None:
        if not isinstance(delta, dict):
            return
        message = choice.message
        for key, value in delta.items():
            if key == "content":
                if isinstance(value, str):
                    choice.text.append(value)
                elif "content" not in message:
                    message["content"] = value
            elif key == "tool_calls":
                for call in value or ():
                    _merge_tool_call(choice.tools, call)
            elif isinstance(value, str) and isinstance(message.get(key), str):
                message[key] += value
            elif value is not None or key not in message:
                message[key] = value

    def result(self) -> bytes:
        if not self.done:
            raise IncompleteStream("the engine's stream ended before it was complete")
        top = self._top
        out: dict[str, Any] = {}
        for key in _TOP_ORDER:
            if key == "choices":
                out["choices"] = [self._choice(self._choices[i]) for i in sorted(self._choices)]
            elif key == "object":
                out["object"] = "chat.completion" if self.chat else "text_completion"
            else:
                out[key] = top.get(key)
        usage = self._usage
        if isinstance(usage, dict):
            usage = _with_defaults(usage, USAGE)
        for key, default in CHAT_TOP if self.chat else COMPLETION_TOP:
            out[key] = usage if key == "usage" else top.get(key, default)
        for key, value in top.items():  # what a newer engine adds, at the end
            if key not in out:
                out[key] = value
        try:
            return _encode(out).encode()
        finally:
            self.release()

    def _choice(self, c: _Choice) -> dict[str, Any]:
        out: dict[str, Any] = {"index": c.index}
        if self.chat:
            message: dict[str, Any] = {"role": c.message.get("role", "assistant")}
            message["content"] = "".join(c.text) if c.text else c.message.get("content")
            for key, default in MESSAGE:
                if key == "reasoning" and c.tools:
                    message["tool_calls"] = [c.tools[i] for i in sorted(c.tools)]
                message[key] = c.message.get(key, default)
            for key, value in c.message.items():
                if key not in message:
                    message[key] = value
            out["message"] = message
        else:
            out["text"] = "".join(c.text)
        out["logprobs"] = c.logprobs
        out["finish_reason"] = c.finish
        out["stop_reason"] = c.stop
        for key, default in CHAT_CHOICE if self.chat else COMPLETION_CHOICE:
            if key not in out:
                out[key] = c.extra.get(key, default)
        for key, value in c.extra.items():
            if key not in out:
                out[key] = value
        return out


def _with_defaults(doc: dict[str, Any], defaults: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    missing = [(k, v) for k, v in defaults if k not in doc]
    return {**doc, **dict(missing)} if missing else doc


def _merge_logprobs(have: Any, new: Any) -> Any:
    if new is None:
        return have
    if have is None:
        return json.loads(json.dumps(new)) if isinstance(new, dict) else new
    if isinstance(have, dict) and isinstance(new, dict):
        for key, value in new.items():
            if isinstance(value, list) and isinstance(have.get(key), list):
                have[key].extend(value)
            elif value is not None:
                have[key] = value
    return have


def _merge_tool_call(tools: dict[int, dict[str, Any]], call: Any) -> None:
    if not isinstance(call, dict):
        return
    index = call.get("index", len(tools))
    have = tools.get(index)
    if have is None:
        have = tools[index] = {"id": None, "type": "function", "function": {"name": None}}
        have["function"]["arguments"] = ""
    if call.get("id"):
        have["id"] = call["id"]
    if call.get("type"):
        have["type"] = call["type"]
    fn = call.get("function")
    if isinstance(fn, dict):
        if fn.get("name"):
            have["function"]["name"] = fn["name"]
        if isinstance(fn.get("arguments"), str):
            have["function"]["arguments"] += fn["arguments"]


def streamed_body(body: bytes, payload: dict[str, Any]) -> bytes:
    """The request asking the engine to stream, usage included.

    The client's bytes are kept and the two keys appended (no re-serialization of a large
    prompt); a body that already names `stream` is re-serialized so no key is doubled.
    """
    if "stream" not in payload and "stream_options" not in payload:
        head = body.rstrip()
        if head.endswith(b"}") and len(payload) > 0:
            return head[:-1] + b',"stream":true,"stream_options":{"include_usage":true}}'
    out = dict(payload)
    out["stream"] = True
    out["stream_options"] = {"include_usage": True}
    return json.dumps(out).encode()


def can_reassemble(payload: dict[str, Any]) -> bool:
    """Whether the engine can stream this request and give the same answer.

    vLLM refuses `prompt_logprobs` on streams and `stream_options` on requests that do not
    stream (the client must see that 400); beam search does not stream token by token; and
    an echoed prompt streams differently (no prompt logprobs, token ids on the first
    chunk): those requests keep the plain path.
    """
    return (
        payload.get("prompt_logprobs") is None
        and "stream_options" not in payload
        and not payload.get("use_beam_search")
        and not payload.get("echo")
    )


def classify_error(status: int, body: bytes) -> EngineError:
    """An engine's non-2xx answer as an `EngineError` (see `EngineError.is_client_error`)."""
    return parse_error(body, status)


__all__ = [
    "GATEWAY_HELD",
    "EngineError",
    "GatewayHoldsTooMuch",
    "HeldBytes",
    "IncompleteStream",
    "Reassembler",
    "can_reassemble",
    "classify_error",
    "error_body",
    "parse_error",
    "streamed_body",
]
