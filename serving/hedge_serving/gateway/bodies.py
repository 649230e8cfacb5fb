"""Pure: the bounds a request's JSON body must meet before `json.loads` builds it.

A body within the byte limit can still cost far more than its bytes once decoded (issue 16,
Medium-9): 4 MiB of `[{},{},…]` is ~1.4 million dicts (~100 MiB) and blocks the event loop
while they are built; a body nested ~1,000 deep decodes, then fails deeper in the gateway
with a `RecursionError`. So before decoding, a scan of the raw bytes (C-speed `bytes.count`,
one regex that blanks string literals, `bytes.replace` passes) bounds the nesting depth,
the number of objects and arrays, and the number of values, and refuses a body over any of
them with a 400 that names the bound. JSON text must be UTF-8 (RFC 8259 §8.1): a UTF-16 or
UTF-32 body is refused by name instead of being decoded by `json.loads`' detection.

Measured on one core (python 3.11, 4 MiB bodies; bench: see the tests in
tests/serving/gateway/behaviour/test_amplification.py), event-loop time per request:
  `[{},{},…]`: `json.loads` 95-110 ms and ~100 MiB, the pre-scan refuses it in ~1 ms;
  a chat body of ordinary text: `bytes.count` only, ~0.2 ms (no regex: too few brackets);
  a 4 MiB body of code with 100k braces: the regex pass adds ~8 ms to a ~6 ms decode.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from typing import Any

from hedge_serving.gateway import errors

_UNPARSABLE = (
    "We could not parse the JSON body of your request. The body must be a JSON object with "
    "a `model` field."
)
# A JSON string literal (escapes included); it is blanked so its brackets and commas do not
# count. Unrolled and possessive: linear, nothing to backtrack on.
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_TO_SQUARE = bytes.maketrans(b"{}", b"[]")
_WIDE_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """What one request body may hold (0 turns a bound off). Ordinary OpenAI requests are
    far inside these: tens of levels at most (tool schemas), a few thousand containers (a
    batch of 2,048 embedding inputs), values mostly strings."""

    max_depth: int = 64  # nested objects and arrays
    max_containers: int = 65_536  # objects and arrays in the whole body
    max_values: int = 1_048_576  # array elements and object members, all levels together


def parse_request_json(body: bytes, limits: BodyLimits) -> Any:
    """The decoded body; `errors.BadRequest` for a body that is not UTF-8 JSON or is over a
    bound."""
    text = _utf8_text(body)
    check_shape(body, limits)
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise errors.BadRequest(_UNPARSABLE) from None


def _utf8_text(body: bytes) -> str:
    if body.startswith(codecs.BOM_UTF8):  # RFC 8259 lets a parser ignore it; json.loads did
        body = body[len(codecs.BOM_UTF8) :]
    # Valid UTF-8 JSON has no NUL byte (controls must be escaped); UTF-16/32 text of ASCII
    # has one in its first four bytes, as json.detect_encoding assumes.
    elif body.startswith(_WIDE_BOMS) or b"\x00" in body[:4]:
        raise errors.BadRequest(
            "The request body must be JSON encoded as UTF-8 (RFC 8259); it looks like "
            "UTF-16 or UTF-32."
        )
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise errors.BadRequest(
            f"The request body is not valid UTF-8 (at byte {exc.start}); JSON must be UTF-8."
        ) from None


def check_shape(body: bytes, limits: BodyLimits) -> None:
    """Raises `errors.BadRequest` if the body nests deeper, or holds more containers or
    values, than `limits` allow. Counts bytes outside string literals; a body that is not
    JSON at all passes here and fails in `json.loads`."""
    opens = body.count(b"{") + body.count(b"[")
    commas = body.count(b",")
    # Upper bounds (strings may hold brackets and commas): most bodies stop here.
    if (
        _within(opens, limits.max_depth)
        and _within(opens, limits.max_containers)
        and _within(commas + 1, limits.max_values)
    ):
        return
    structure = _STRING.sub(b'""', body)
    objects, arrays = structure.count(b"{"), structure.count(b"[")
    if objects != structure.count(b"}") or arrays != structure.count(b"]"):
        raise errors.BadRequest(_UNPARSABLE)  # unbalanced: not JSON, whatever its size
    opens = objects + arrays
    if not _within(opens, limits.max_containers):
        raise _over(f"more than {limits.max_containers} objects and arrays")
    if not _within(structure.count(b",") + 1, limits.max_values):
        raise _over(f"more than {limits.max_values} values")
    if not _within(opens, limits.max_depth) and _deeper_than(structure, limits.max_depth):
        raise _over(f"objects and arrays nested more than {limits.max_depth} deep")


def _within(count: int, bound: int) -> bool:
    return bound <= 0 or count <= bound


def _deeper_than(structure: bytes, depth: int) -> bool:
    """Whether the brackets nest deeper than `depth`: each pass removes exactly the
    innermost pairs, so the passes needed to empty the string are its nesting depth."""
    brackets = structure.translate(_TO_SQUARE, _NOT_BRACKETS)
    for _ in range(depth):
        shorter = brackets.replace(b"[]", b"")
        if not shorter or len(shorter) == len(brackets):
            return False  # empty: not deeper; no progress: unbalanced, json.loads says so
        brackets = shorter
    return b"[]" in brackets


def _over(what: str) -> errors.GatewayError:
    return errors.BadRequest(
        f"The JSON body of your request has {what}; that is over the gateway's limit."
    )
