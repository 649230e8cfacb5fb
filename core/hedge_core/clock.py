"""Times as the Kubernetes API writes them (RFC 3339, UTC), and back to unix seconds.

Pure: no I/O; the only clock read is `utc_now`, for callers that take no injected clock.
"""

from __future__ import annotations

import datetime
from typing import Any


def rfc3339(seconds: float) -> str:
    """Unix seconds as the API server writes times (`2026-11-30T04:28:00Z`)."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def unix_seconds(value: Any) -> float | None:
    """An API time (RFC 3339, `Z` or an offset) as unix seconds; None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
