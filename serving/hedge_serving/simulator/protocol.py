"""Request validation for the simulator's OpenAI API, with vLLM's error shape.

Turns request bodies into small typed values (prompts already split into tokens) or raises
`ApiError`, which the server renders the way vLLM 0.32 does:
`{"error": {"message": ..., "type": ..., "param": ..., "code": 400}}`. Like vLLM, two kinds of
400: a body that does not fit the request schema (bad JSON, a missing field, a value of the
wrong type) is `type: "Bad Request"` with `param: "body.<field>"` (FastAPI's validation
error), while a well-formed request that cannot be served (too many tokens, `n: 0`) is
`type: "BadRequestError"` with the parameter's name. Values are coerced as pydantic's lax
mode does (`"10"` is 10, `"yes"` is true), since that is what vLLM accepts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal

BOS_TOKEN = "<s>"


class ApiError(Exception):
    """An error answered to the client as JSON in vLLM's shape."""

    def __init__(
        self, status: int, message: str, err_type: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type or error_type(status)
        self.param = param

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.err_type,
                "param": self.param,
                "code": self.status,
            }
        }


def error_type(status: int) -> str:
    """vLLM's `type` for a status: BadRequestError, NotFoundError, InternalServerError, ..."""
    special = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError"}
    if status in special:
        return special[status]
    try:
        phrase = HTTPStatus(status).phrase.replace(" ", "").replace("-", "")
    except ValueError:
        return "Error"
    return phrase if phrase.endswith("Error") else phrase + "Error"


def bad_request(message: str, param: str | None = None) -> ApiError:
    """A well-formed request vLLM cannot serve (its serving layer's 400)."""
    if param is not None:
        message = f"{message} (parameter={param})"
    return ApiError(400, message, "BadRequestError", param)


def invalid_body(message: str, field: str | None = None) -> ApiError:
    """A body that does not fit the request schema (FastAPI's validation 400 in vLLM)."""
    loc = "body" if field is None else f"body.{field}"
    return ApiError(400, f"1 validation error: {loc}: {message}", "Bad Request", loc)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise invalid_body(f"JSON decode error: {exc.msg}", str(exc.pos)) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid_body(f"JSON decode error: {exc}", "0") from None
    if not isinstance(body, dict):
        raise invalid_body("Input should be a valid dictionary or object to extract fields from")
    return body


@dataclass
class GenerationRequest:
    """A validated chat or text completion request."""

    kind: Literal["chat", "completion"]
    model: str | None
    # One token list per prompt (completions accept a batch of prompts; chat has one).
    prompts: list[list[str]]
    n: int
    max_tokens: int | None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    continuous_usage: bool = False
    seed: int | None = None

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)


@dataclass
class EmbeddingRequest:
    """A validated embeddings request."""

    model: str | None
    inputs: list[list[str]]
    encoding_format: Literal["float", "base64"]
    dimensions: int | None

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.inputs)


def words(text: str) -> list[str]:
    """The simulator's tokenizer: one token per whitespace-separated word."""
    return text.split()


def parse_chat_request(body: dict[str, Any]) -> GenerationRequest:
    messages = body.get("messages")
    if messages is None:
        raise invalid_body("Field required", "messages")
    if not isinstance(messages, list):
        raise invalid_body("Input should be a valid list", "messages")
    if not messages:
        raise bad_request(
            "Cannot apply chat template to an empty conversation. Provide at least one message."
        )
    tokens: list[str] = []
    for i, message in enumerate(messages):
        tokens.extend(_message_tokens(i, message))
    tokens.append("<|assistant|>")  # the generation prompt a chat template appends
    max_tokens = _opt_int(body, "max_completion_tokens", minimum=1)
    if max_tokens is None:
        max_tokens = _opt_int(body, "max_tokens", minimum=1)
    return GenerationRequest(
        kind="chat", model=_opt_str(body, "model"), prompts=[tokens], max_tokens=max_tokens,
        **_common_fields(body),
    )  # fmt: skip


def _message_tokens(index: int, message: Any) -> list[str]:
    where = f"messages.{index}"
    if not isinstance(message, dict):
        raise invalid_body("Input should be a valid dictionary", where)
    role = message.get("role")
    if not isinstance(role, str) or not role:
        raise invalid_body("'role' must be a non-empty string", f"{where}.role")
    tokens = [f"<|{role}|>"]
    content = message.get("content")
    if content is None:
        return tokens
    if isinstance(content, str):
        return tokens + words(content)
    if not isinstance(content, list):
        raise invalid_body(
            "'content' must be a string, a list of parts or null", f"{where}.content"
        )
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise invalid_body("a part must be an object with a 'type'", f"{where}.content.{j}")
        if part["type"] == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise invalid_body("Input should be a valid string", f"{where}.content.{j}.text")
            tokens.extend(words(text))
        else:
            tokens.append(f"<|{part['type']}|>")  # an image or audio part: one placeholder token
    return tokens


def parse_completion_request(body: dict[str, Any]) -> GenerationRequest:
    if "prompt" not in body or body["prompt"] is None:
        raise bad_request(
            "Either prompt or prompt_embeds must be provided and non-empty.", "prompt"
        )
    prompts = _parse_prompts(body["prompt"], "prompt", add_bos=True)
    return GenerationRequest(
        kind="completion", model=_opt_str(body, "model"), prompts=prompts,
        max_tokens=_opt_int(body, "max_tokens", minimum=1), **_common_fields(body),
    )  # fmt: skip


def parse_embedding_request(body: dict[str, Any], max_dim: int) -> EmbeddingRequest:
    if "input" not in body or body["input"] is None:
        raise invalid_body("Field required", "input")
    inputs = _parse_prompts(body["input"], "input", add_bos=False)
    encoding: Literal["float", "base64"]
    match body.get("encoding_format"):
        case None | "float":
            encoding = "float"
        case "base64":
            encoding = "base64"
        case _:
            raise invalid_body("Input should be 'float' or 'base64'", "encoding_format")
    dimensions = _opt_int(body, "dimensions", minimum=1)
    if dimensions is not None and dimensions > max_dim:
        raise bad_request(f"dimensions must be at most {max_dim} for this model", "dimensions")
    return EmbeddingRequest(
        model=_opt_str(body, "model"),
        inputs=inputs,
        encoding_format=encoding,
        dimensions=dimensions,
    )


def _parse_prompts(value: Any, name: str, *, add_bos: bool) -> list[list[str]]:
    """A string, a list of strings, a list of token ids, or a list of lists of token ids."""
    bos = [BOS_TOKEN] if add_bos else []
    if isinstance(value, str):
        return [bos + words(value)]
    if not isinstance(value, list) or not value:
        raise invalid_body("must be a string, a list of strings or token ids, non-empty", name)
    if all(isinstance(v, str) for v in value):
        return [bos + words(v) for v in value]
    if all(_is_token_id(v) for v in value):
        return [[str(v) for v in value]]
    if all(isinstance(v, list) and v and all(_is_token_id(t) for t in v) for v in value):
        return [[str(t) for t in v] for v in value]
    raise invalid_body("must be a string, a list of strings or token ids, non-empty", name)


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _common_fields(body: dict[str, Any]) -> dict[str, Any]:
    stream = _opt_bool(body, "stream") or False
    stream_options = body.get("stream_options")
    include_usage = continuous_usage = False
    if stream_options is not None:
        if not isinstance(stream_options, dict):
            raise invalid_body("Input should be a valid dictionary", "stream_options")
        if not stream:
            raise bad_request(
                "Stream options can only be defined when `stream=True`.", "stream_options"
            )
        include_usage = _opt_bool(stream_options, "include_usage", "stream_options.") or False
        continuous_usage = (
            _opt_bool(stream_options, "continuous_usage_stats", "stream_options.") or False
        )
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop] if stop else []
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = [s for s in stop if s]
    else:
        raise invalid_body("Input should be a valid string or list of strings", "stop")
    for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        _opt_number(body, key)
    n = _opt_int(body, "n")
    if n is not None and n < 1:
        raise bad_request(f"n must be at least 1, got {n}.")
    if n is not None and n > 128:
        raise bad_request(f"n must be at most 128, got {n}.")
    return {
        "n": n or 1,
        "stop": stops,
        "stream": stream,
        "include_usage": include_usage,
        "continuous_usage": continuous_usage,
        "seed": _opt_int(body, "seed"),
    }


def _opt_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise invalid_body("Input should be a valid string", key)
    return value


# pydantic's lax mode, which vLLM's request models use.
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def _opt_bool(body: dict[str, Any], key: str, prefix: str = "") -> bool | None:
    value = body.get(key)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise invalid_body("Input should be a valid boolean", prefix + key)


def _opt_int(body: dict[str, Any], key: str, minimum: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            number = None
    if number is None:
        raise invalid_body("Input should be a valid integer", key)
    if minimum is not None and number < minimum:
        raise bad_request(f"{key} must be at least {minimum}, got {number}.", key)
    return number


def _opt_number(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise invalid_body("Input should be a valid number", key)
