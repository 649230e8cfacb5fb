"""The judgement of one self-hosted attempt (`attempts.classify`), row by row of its table."""

from __future__ import annotations

import asyncio

import pytest

from hedge_serving.gateway.attempts import (
    Health,
    Judgement,
    Step,
    StreamBroke,
    Verdict,
    classify,
)
from hedge_serving.gateway.failures import (
    EngineError,
    IncompleteStream,
    ResponseTooLarge,
    UpstreamProtocolError,
    UpstreamStalled,
)
from hedge_serving.gateway.revisions import CLIENT_ERROR, ERROR, SUCCESS
from hedge_serving.gateway.streams import EngineError as StreamsEngineError
from hedge_serving.gateway.upstream import ResponseTooLarge as UpstreamResponseTooLarge

ANSWERED = (Verdict(Step.PASS, Health.SUCCESS), SUCCESS)
BROKE = (Verdict(Step.PASS, Health.FAILURE), ERROR)
CLIENTS_FAULT = (Verdict(Step.PASS, Health.ALIVE), CLIENT_ERROR)
BUSY = (Verdict(Step.RETRY, Health.UNTOUCHED), None)
FAILED = (Verdict(Step.RETRY, Health.FAILURE), ERROR)
TOO_LARGE = (Verdict(Step.FAIL, Health.ALIVE), None)
UNJUDGED = (Verdict(Step.RAISE, Health.UNTOUCHED), None)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, ANSWERED),
        (201, ANSWERED),
        (204, ANSWERED),
        (299, ANSWERED),
        (300, FAILED),
        (302, FAILED),
        (400, CLIENTS_FAULT),
        (401, CLIENTS_FAULT),
        (404, CLIENTS_FAULT),
        (413, CLIENTS_FAULT),
        (422, CLIENTS_FAULT),
        (499, CLIENTS_FAULT),
        (408, BUSY),
        (429, BUSY),
        (500, FAILED),
        (502, FAILED),
        (503, FAILED),
        (504, FAILED),
        (529, FAILED),
        (599, FAILED),
    ],
)
def test_status(status: int, expected: Judgement) -> None:
    assert classify(status) == expected


def _engine(status: int) -> EngineError:
    return EngineError(status, "boom", b"{}")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (StreamBroke(), BROKE),
        (_engine(400), CLIENTS_FAULT),
        (_engine(404), CLIENTS_FAULT),
        (_engine(499), CLIENTS_FAULT),
        # An error event saying busy is the engine's failure, unlike an HTTP 429.
        (_engine(408), FAILED),
        (_engine(429), FAILED),
        (_engine(500), FAILED),
        (_engine(503), FAILED),
        (UpstreamStalled("first", 1.0), FAILED),
        (UpstreamStalled("idle", 1.0), FAILED),
        (UpstreamProtocolError("malformed"), FAILED),
        (ConnectionResetError(), FAILED),
        (OSError("refused"), FAILED),
        (TimeoutError(), FAILED),
        (IncompleteStream(), FAILED),
        (ValueError("bad json"), FAILED),
        (ResponseTooLarge(10), FAILED),
        (asyncio.CancelledError(), UNJUDGED),
        (RuntimeError("judged elsewhere"), UNJUDGED),
        (KeyboardInterrupt(), UNJUDGED),
    ],
)
def test_exception(exc: BaseException, expected: Judgement) -> None:
    assert classify(exc) == expected


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ResponseTooLarge(10), TOO_LARGE),
        # Only the size of a whole answer is judged differently.
        (UpstreamStalled("idle", 1.0), FAILED),
        (OSError(), FAILED),
        (_engine(400), CLIENTS_FAULT),
    ],
)
def test_exception_reading_a_whole_answer(exc: BaseException, expected: Judgement) -> None:
    assert classify(exc, whole_answer=True) == expected


def test_old_import_paths_name_the_same_classes() -> None:
    assert StreamsEngineError is EngineError
    assert UpstreamResponseTooLarge is ResponseTooLarge


def test_every_judgement_passes_or_retries_with_a_consistent_outcome() -> None:
    """The table's invariants: a retried attempt never counts the client's fault, and a
    success is only ever recorded for an answer that reached the client."""
    cases: list[int | BaseException] = [*range(100, 600), StreamBroke(), _engine(400)]
    for what in cases:
        verdict, outcome = classify(what)
        if verdict.step is Step.RETRY:
            assert outcome in (None, ERROR)
        if verdict.breaker is Health.SUCCESS:
            assert verdict.step is Step.PASS and outcome == SUCCESS
