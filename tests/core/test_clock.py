"""hedge_core.clock: the API's time format, both ways."""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Iterator

import pytest

from hedge_core import api, clock
from hedge_core.clock import parse_time, rfc3339, rfc3339_ms, unix_seconds, utc_now

MOMENT = datetime.datetime(2026, 11, 30, 4, 28, 0, 123_999, tzinfo=datetime.UTC).timestamp()


@pytest.fixture
def new_york() -> Iterator[None]:
    """A local time zone that is not UTC, so naive times tell the two readers apart."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


def test_rfc3339_is_whole_seconds_in_utc() -> None:
    assert rfc3339(MOMENT) == "2026-11-30T04:28:00Z"
    assert rfc3339(0) == "1970-01-01T00:00:00Z"


def test_rfc3339_ms_truncates_to_the_millisecond() -> None:
    assert rfc3339_ms(MOMENT) == "2026-11-30T04:28:00.123Z"
    assert rfc3339_ms(0) == "1970-01-01T00:00:00.000Z"
    assert parse_time(rfc3339_ms(MOMENT)) == pytest.approx(MOMENT - 0.000999, abs=1e-6)


def test_utc_now_is_now_in_the_api_format() -> None:
    before = int(time.time())
    now = utc_now()
    after = int(time.time())
    assert now.endswith("Z") and len(now) == len("2026-11-30T04:28:00Z")
    assert before <= (unix_seconds(now) or 0) <= after


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2026-11-30T04:28:00Z", 1_796_012_880.0),
        ("2026-11-30T04:28:00.5Z", 1_796_012_880.5),
        ("2026-11-30T06:28:00+02:00", 1_796_012_880.0),
    ],
)
def test_both_readers_agree_on_times_with_an_offset(text: str, seconds: float) -> None:
    assert unix_seconds(text) == seconds
    assert parse_time(text) == seconds
    assert unix_seconds(rfc3339(seconds)) == int(seconds)


@pytest.mark.parametrize("value", [None, "", "soon", "2026-13-01T00:00:00Z", 1_796_012_880, b"x"])
def test_what_is_not_a_time_is_none(value: object) -> None:
    assert unix_seconds(value) is None
    assert parse_time(value) is None


@pytest.mark.usefixtures("new_york")
def test_a_time_without_an_offset_is_local_for_unix_seconds_and_utc_for_parse_time() -> None:
    naive = "2026-01-01T00:00:00"
    utc = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC).timestamp()
    assert parse_time(naive) == utc
    assert unix_seconds(naive, naive_as_utc=True) == utc
    assert unix_seconds(naive) == utc + 5 * 3600  # New York is UTC-5 in January


def test_the_api_reexports_the_same_functions() -> None:
    assert api.rfc3339 is clock.rfc3339
    assert api.unix_seconds is clock.unix_seconds
