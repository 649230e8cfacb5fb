"""Times as the Kubernetes API writes them (RFC 3339, UTC), and back to unix seconds.

Pure: no I/O; the only clock read is `utc_now`, for callers that take no injected clock.

Two readers exist because two behaviours existed, and they differ only for a time without
a UTC offset (`2026-01-01T00:00:00`, which the API server never writes):
`unix_seconds` (formerly in `hedge_core.api`) reads it in the machine's local time zone,
`parse_time` (formerly `hedge_operator.rollout_io.parse_time`) reads it as UTC. Every time
with `Z` or an offset reads the same in both.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

__all__ = ["parse_time", "rfc3339", "rfc3339_ms", "unix_seconds", "utc_now"]


def rfc3339(seconds: float) -> str:
    """Unix seconds as the API server writes times (`2026-11-30T04:28:00Z`)."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_ms(seconds: float) -> str:
    """Unix seconds as RFC 3339 with milliseconds (`2026-11-30T04:28:00.123Z`), truncated, not
    rounded (a rollout step's start is compared to the millisecond: it keys the analysis
    window)."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def utc_now() -> str:
    """Now, as the API server writes times (whole seconds, `Z`)."""
    return rfc3339(time.time())


def unix_seconds(value: Any, *, naive_as_utc: bool = False) -> float | None:
    """An API time (RFC 3339, `Z` or an offset, fractions allowed) as unix seconds; None when
    it is not a string or not a time. A time without an offset is local time, unless
    `naive_as_utc`."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if naive_as_utc and parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


def parse_time(value: object) -> float | None:
    """`unix_seconds` reading a time without an offset as UTC (rollout_io's behaviour)."""
    return unix_seconds(value, naive_as_utc=True)
