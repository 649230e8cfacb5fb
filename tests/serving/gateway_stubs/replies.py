"""The deterministic model every stub plays: the reply to a prompt is `reply_text(prompt)`,
cut by `max_tokens` and stop sequences as a real model would be."""

from __future__ import annotations

from typing import Any

WORDS_PER_REPLY = 12


def reply_text(prompt: str) -> str:
    """The deterministic completion every stub gives for `prompt`."""
    seed = sum(prompt.encode()) % 97
    return " ".join(f"w{(seed + i) % 50}" for i in range(WORDS_PER_REPLY))


def tokens_of(text: str) -> list[str]:
    """Whitespace tokens, each but the first carrying its leading space."""
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]]


def generate(
    prompt: str, max_tokens: int | None, stop: list[str]
) -> tuple[list[str], str, str | None]:
    """(tokens, finish, matched stop sequence) with finish in {stop, length, stop_sequence}."""
    text = reply_text(prompt)
    for s in stop:
        i = text.find(s)
        if i >= 0:
            return tokens_of(text[:i]) if i else [], "stop_sequence", s
    toks = tokens_of(text)
    if max_tokens is not None and max_tokens < len(toks):
        return toks[:max_tokens], "length", None
    return toks, "stop", None


def prompt_of_chat(messages: list[dict[str, Any]]) -> str:
    parts = []
    for m in messages:
        c = m.get("content")
        if isinstance(c, str):
            parts.append(c)
        elif isinstance(c, list):
            parts.extend(p.get("text", "") for p in c if isinstance(p, dict))
    return "\n".join(parts)
