"""Pure: the operator's own errors.

    RetryableError   the API server had trouble (5xx, throttling, conflict, the connection):
                     reconcile again later; kopf turns it into a TemporaryError

What the API client raises is `hedge_core.kube`'s tree (`ApiError` → `ClientError` →
`Conflict`, `Forbidden`, …; `ServerError`), and what means "try again" is its one
`TRANSIENT` tuple: call sites catch those, never status numbers or a tuple of their own.
"""

from __future__ import annotations


class RetryableError(Exception):
    """The API server had trouble (5xx, throttling, conflict): reconcile again later."""
