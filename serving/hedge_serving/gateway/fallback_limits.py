"""What a request may ask of a paid fallback provider (pure): caps on `n` and the output
tokens, no background Responses, nothing stored at the provider, and the tokens reserved
against the fallback budget at admission.

A request over a cap gets an OpenAI-style 400 naming the cap (rather than a silently
clamped answer); a request that names no output limit is sent with the cap when its
ModelDeployment has a budget, so that what it reserves bounds what it can spend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hedge_serving.gateway.endpoints import Endpoint
from hedge_serving.gateway.errors import BadRequest
from hedge_serving.gateway.usage import estimate_prompt_tokens

# The output-token fields of each endpoint, the first one is the one the gateway sets.
OUTPUT_FIELDS: dict[Endpoint, tuple[str, ...]] = {
    Endpoint.CHAT: ("max_completion_tokens", "max_tokens"),
    Endpoint.COMPLETIONS: ("max_tokens",),
    Endpoint.RESPONSES: ("max_output_tokens",),
    Endpoint.MESSAGES: ("max_tokens",),
}
CHOICE_FIELDS: dict[Endpoint, tuple[str, ...]] = {
    Endpoint.CHAT: ("n",),
    Endpoint.COMPLETIONS: ("n", "best_of"),  # best_of completions are generated and billed
}


@dataclass(frozen=True, slots=True)
class FallbackLimits:
    max_n: int = 4  # --fallback-max-n
    max_tokens: int = 4096  # --fallback-max-tokens


def _count(payload: dict[str, Any], key: str, cap: int, flag: str) -> int | None:
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"`{key}` must be a positive integer", param=key)
    if value > cap:
        raise BadRequest(
            f"`{key}` is {value}, more than the {cap} this gateway allows for requests served "
            f"by a fallback provider ({flag})",
            param=key,
            code="fallback_limit_exceeded",
        )
    return value


def prompts(endpoint: Endpoint, payload: dict[str, Any]) -> int:
    """How many prompts one request carries (a completions batch generates for each)."""
    prompt = payload.get("prompt")
    if (
        endpoint is Endpoint.COMPLETIONS
        and isinstance(prompt, list)
        and prompt
        and all(isinstance(p, str | list) for p in prompt)
    ):
        return len(prompt)
    return 1


def admit_fallback(
    endpoint: Endpoint,
    payload: dict[str, Any],
    body_bytes: int,
    limits: FallbackLimits,
    budgeted: bool,
) -> tuple[dict[str, Any], int]:
    """(the payload to send the providers, tokens to reserve), or BadRequest."""
    options = payload.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("`stream_options` must be an object", param="stream_options")
    out = payload
    if endpoint is Endpoint.RESPONSES:
        if payload.get("background") is True:
            raise BadRequest(
                "`background` responses are not served by a fallback provider: the gateway "
                "would not see them finish or what they cost; send the request without it",
                param="background",
                code="fallback_limit_exceeded",
            )
        # Nothing is kept at the provider under the platform's key (a stored response
        # can be fetched, continued or left running there, unseen by the gateway).
        out = {**out, "store": False}
    choices = 1
    for key in CHOICE_FIELDS.get(endpoint, ()):
        choices = max(choices, _count(payload, key, limits.max_n, "--fallback-max-n") or 1)
    fields = OUTPUT_FIELDS.get(endpoint, ())
    output: int | None = None
    for key in fields:
        asked = _count(payload, key, limits.max_tokens, "--fallback-max-tokens")
        if asked is not None:
            output = asked if output is None else max(output, asked)
    if output is None and fields:
        output = limits.max_tokens
        if budgeted:
            out = {**out, fields[0]: output}
    generated = (output or 0) * choices * prompts(endpoint, payload)
    return out, estimate_prompt_tokens(body_bytes) + generated


__all__ = ["CHOICE_FIELDS", "OUTPUT_FIELDS", "FallbackLimits", "admit_fallback", "prompts"]
