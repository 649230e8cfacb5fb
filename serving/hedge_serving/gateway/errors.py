"""Errors the gateway answers with, all rendered in the OpenAI error shape.

Every error a client can see is a `GatewayError`; its subclass fixes the HTTP status and
the OpenAI `type`, and the instance carries a precise message (never a secret, never a
traceback)::

    GatewayError                       {"error": {"message", "type", "param", "code"}}
    ├── ClientError                    4xx, type "invalid_request_error" unless noted
    │   ├── BadRequest                 400  malformed JSON, missing/invalid fields
    │   ├── AuthenticationFailed       401  type "authentication_error"
    │   ├── NotFound                   404  a path that is not part of the OpenAI API
    │   ├── ModelNotFound              404  code "model_not_found"
    │   ├── MethodNotAllowed           405
    │   ├── PayloadTooLarge            413
    │   ├── UnsupportedMediaType       415
    │   ├── FallbackBudgetExhausted    429  type "rate_limit_error", code
    │   │                                   "fallback_budget_exhausted"; carries Retry-After
    │   └── RateLimited                429  type "rate_limit_error", code
    │                                       "rate_limit_exceeded": a tenant's limit (its
    │                                       ClientPolicy); Retry-After and x-ratelimit-*
    └── ServerError                    5xx, type "server_error"
        ├── InternalError              500  a bug; the message stays generic
        ├── UpstreamFailed             502  backends/providers answered badly
        ├── NoCapacity                 503  nothing can serve; carries Retry-After
        └── UpstreamTimeout            504  the model's request timeout ran out

`BackendFailure` is not a client-facing error: the proxy raises it inside one attempt
against one backend (connection refused or reset, a 5xx, a stall, a cut stream, an engine
error event, before anything reached the client) so that the attempt is retried elsewhere
or the request falls back. What engines answer is read in `streams` (`EngineError`: whose
fault an error is) and `upstream` (`UpstreamStalled`, `ResponseTooLarge`).
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import ClassVar


def error_payload(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, dict[str, str | None]]:
    """The OpenAI error object."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> bytes:
    return json.dumps(error_payload(message, type_, param, code)).encode()


def error_event(message: str, type_: str = "server_error", code: str | None = None) -> bytes:
    """A server-sent event carrying an OpenAI error; ends a stream that broke mid-way.

    The official SDKs raise `APIError` when a stream event's data holds an `error` key.
    """
    return b"data: " + error_body(message, type_, None, code) + b"\n\n"


class GatewayError(Exception):
    status: int = 500  # an instance may override it (see `for_status`)
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}
        self.close_connection = False  # e.g. the body was not (fully) read

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.param, self.code)


class ClientError(GatewayError):
    status = 400
    type = "invalid_request_error"


class BadRequest(ClientError):
    status = 400


class AuthenticationFailed(ClientError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class NotFound(ClientError):
    status = 404


class ModelNotFound(ClientError):
    status = 404
    default_code = "model_not_found"


class MethodNotAllowed(ClientError):
    status = 405


class PayloadTooLarge(ClientError):
    status = 413


class UnsupportedMediaType(ClientError):
    status = 415


class FallbackBudgetExhausted(ClientError):
    """Only the fallback could serve the request and its budget is spent until the window
    turns (a 429 as the OpenAI API's own rate limits, so SDKs back off and retry)."""

    status = 429
    type = "rate_limit_error"
    default_code = "fallback_budget_exhausted"


class RateLimited(ClientError):
    """A limit of the caller's ClientPolicy (requests or tokens per minute, tokens per day,
    concurrent requests) leaves no room for the request until a window turns or a request
    in flight ends; shaped like OpenAI's own rate-limit errors, so SDKs wait and retry."""

    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class ServerError(GatewayError):
    status = 500
    type = "server_error"


class InternalError(ServerError):
    status = 500


class UpstreamFailed(ServerError):
    status = 502


class NoCapacity(ServerError):
    status = 503
    default_code = "no_capacity"


class UpstreamTimeout(ServerError):
    status = 504
    default_code = "timeout"


class BackendFailure(Exception):
    """One attempt against one backend or provider failed before the client saw a byte."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def for_status(status: int, message: str | None = None) -> GatewayError:
    """A `GatewayError` for an arbitrary HTTP status (used for low-level parser errors)."""
    cls: type[GatewayError]
    if status == 401:
        cls = AuthenticationFailed
    elif status == 404:
        cls = NotFound
    elif status == 405:
        cls = MethodNotAllowed
    elif status == 413:
        cls = PayloadTooLarge
    elif 400 <= status < 500:
        cls = ClientError
    elif status == 503:
        cls = NoCapacity
    elif status == 504:
        cls = UpstreamTimeout
    else:
        cls = ServerError
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    err = cls(message or phrase)
    err.status = status
    return err
