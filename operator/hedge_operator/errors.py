"""The operator's own errors, and the API client's that it catches.

RetryableError   the API server had trouble (5xx, throttling, conflict, the connection):
                 reconcile again later; kopf turns it into a TemporaryError
TRANSIENT        the client-side exceptions that mean "try again" (any API error, the
                 connection, a timeout): caught once per call site, never spelled out
"""

from __future__ import annotations

from hedge_core.kube import TRANSIENT

__all__ = ["TRANSIENT", "RetryableError"]


class RetryableError(Exception):
    """The API server had trouble (5xx, throttling, conflict): reconcile again later."""
