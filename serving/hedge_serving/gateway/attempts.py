"""Pure: how one attempt at a self-hosted backend is judged, from its status or exception.

    what the attempt ended with                step    breaker    revision outcome
    ─────────────────────────────────────────  ──────  ─────────  ────────────────
    HTTP < 300, read whole / re-assembled /    PASS    success    SUCCESS
      relayed to its end
    a relayed stream broke after its first     PASS    failure    ERROR
      event (`StreamBroke`; the client got
      an error event)
    HTTP 4xx but 408/429 (the client's)        PASS    alive      CLIENT_ERROR
    HTTP 408, 429 (`ENGINE_BUSY`)              RETRY   untouched  -
    any other HTTP ≥ 300 (3xx, 5xx)            RETRY   failure    ERROR
    `EngineError` (an error event) naming      PASS    alive      CLIENT_ERROR
      a client error
    `EngineError` naming anything else         RETRY   failure    ERROR
      (408/429 included: the engine said so)
    `UpstreamStalled` (no first token, or      RETRY   failure    ERROR
      silence between tokens)
    `OSError`, `IncompleteStream`,             RETRY   failure    ERROR
      `ValueError`, `ResponseTooLarge`
    `ResponseTooLarge` reading a whole         FAIL    alive      -
      answer (`whole_answer=True`)
    anything else (cancelled, the request      RAISE   untouched  -
      timeout, a failure judged elsewhere)

Steps: PASS, the answer (the client's own error included) goes to the client; RETRY, a
`BackendFailure`: another backend while attempts last, then the fallback providers;
FAIL, the request fails here (`UpstreamFailed`: no retry, no fallback); RAISE, the attempt
is not judged and the exception propagates.

Breaker: success and failure are recorded; alive records a success only when the attempt
was the half-open probe (the backend answered, so it is up, but the error is not its
fault), else frees nothing but the probe slot, like untouched. The revision outcome is
counted per attempt, a retried failure included (the canary analysis judges the revision,
not whether the client was saved); `-` counts nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hedge_serving.gateway.failures import (
    ENGINE_BUSY,
    EngineError,
    IncompleteStream,
    ResponseTooLarge,
    UpstreamStalled,
)
from hedge_serving.gateway.revisions import CLIENT_ERROR, ERROR, SUCCESS


class Step(enum.Enum):
    """What the proxy does after the attempt."""

    PASS = "pass"
    RETRY = "retry"
    FAIL = "fail"
    RAISE = "raise"


class Health(enum.Enum):
    """What the attempt tells the backend's circuit breaker."""

    SUCCESS = "success"
    FAILURE = "failure"
    ALIVE = "alive"  # a success only if the attempt was the half-open probe
    UNTOUCHED = "untouched"


@dataclass(frozen=True, slots=True)
class Verdict:
    step: Step
    breaker: Health


class StreamBroke(Exception):
    """A relayed stream lost its upstream after its first event (the client got an error
    event in the stream): not raised, only classified."""


Outcome = int | None  # revisions.SUCCESS, CLIENT_ERROR, ERROR; None counts nothing
Judgement = tuple[Verdict, Outcome]

ANSWERED: Judgement = (Verdict(Step.PASS, Health.SUCCESS), SUCCESS)
BROKE: Judgement = (Verdict(Step.PASS, Health.FAILURE), ERROR)
CLIENTS_FAULT: Judgement = (Verdict(Step.PASS, Health.ALIVE), CLIENT_ERROR)
BUSY: Judgement = (Verdict(Step.RETRY, Health.UNTOUCHED), None)
FAILED: Judgement = (Verdict(Step.RETRY, Health.FAILURE), ERROR)
TOO_LARGE: Judgement = (Verdict(Step.FAIL, Health.ALIVE), None)
UNJUDGED: Judgement = (Verdict(Step.RAISE, Health.UNTOUCHED), None)

# Exceptions an attempt fails with (the backend's fault), after the more specific ones.
_FAILURES = (UpstreamStalled, OSError, IncompleteStream, ValueError, ResponseTooLarge)


def classify_status(status: int) -> Judgement:
    """An HTTP answer's status (the answer read or relayed without a failure)."""
    if status < 300:
        return ANSWERED
    if 400 <= status < 500:
        return BUSY if status in ENGINE_BUSY else CLIENTS_FAULT
    return FAILED


def classify_exception(exc: BaseException, whole_answer: bool = False) -> Judgement:
    """An exception that ended the attempt; `whole_answer`: raised reading a whole answer."""
    if isinstance(exc, StreamBroke):
        return BROKE
    if isinstance(exc, EngineError):
        return CLIENTS_FAULT if exc.is_client_error else FAILED
    if whole_answer and isinstance(exc, ResponseTooLarge):
        return TOO_LARGE
    if isinstance(exc, _FAILURES):
        return FAILED
    return UNJUDGED


def classify(what: int | BaseException, whole_answer: bool = False) -> Judgement:
    """The verdict and revision outcome of an attempt that ended with `what` (see the
    table above)."""
    if isinstance(what, int):
        return classify_status(what)
    return classify_exception(what, whole_answer)


__all__ = [
    "ANSWERED",
    "BROKE",
    "BUSY",
    "CLIENTS_FAULT",
    "FAILED",
    "TOO_LARGE",
    "UNJUDGED",
    "Health",
    "Judgement",
    "Outcome",
    "Step",
    "StreamBroke",
    "Verdict",
    "classify",
    "classify_exception",
    "classify_status",
]
