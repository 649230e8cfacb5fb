"""OpenAI and any OpenAI-compatible API: same wire format, the model name swapped.

Serves chat and text completions, embeddings and the Responses API (`/v1/responses`),
the endpoints OpenAI has; vLLM's own extras (rerank, score, pooling, tokenizer) are not
sent to a provider.
"""

from __future__ import annotations

import json
from typing import Any

from hedge_serving.gateway.errors import error_body
from hedge_serving.gateway.keys import KeyStore
from hedge_serving.gateway.providers.base import (
    Endpoint,
    MissingKey,
    PassthroughRelay,
    UpstreamCall,
    with_model,
)
from hedge_serving.gateway.routing import ProviderSpec, ProviderType

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"

# Gateway endpoint -> path under the provider's base URL (which ends in /v1).
OPENAI_PATHS: dict[Endpoint, str] = {
    Endpoint.CHAT: "chat/completions",
    Endpoint.COMPLETIONS: "completions",
    Endpoint.EMBEDDINGS: "embeddings",
    Endpoint.RESPONSES: "responses",
}


def openai_error_body(status: int, body: bytes) -> bytes:
    """Keep an upstream error body if it already has the OpenAI shape, else wrap it."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        err = doc["error"]
        message = err.get("message")
        return error_body(
            message if isinstance(message, str) else f"upstream error (HTTP {status})",
            err.get("type") if isinstance(err.get("type"), str) else "upstream_error",
            err.get("param") if isinstance(err.get("param"), str) else None,
            err.get("code") if isinstance(err.get("code"), str) else None,
        )
    return error_body(f"upstream error (HTTP {status})", "upstream_error")


class OpenAIProvider:
    """`openai` (default base URL api.openai.com) and `openai-compatible` (any base URL)."""

    def __init__(self, spec: ProviderSpec, keys: KeyStore) -> None:
        if spec.type is ProviderType.OPENAI_COMPATIBLE and not spec.base_url:
            raise ValueError("openai-compatible fallback needs a baseURL")
        self.spec = spec
        self._keys = keys
        self._base = (spec.base_url or DEFAULT_OPENAI_BASE_URL).rstrip("/")

    @property
    def label(self) -> str:
        return self.spec.label

    paths = OPENAI_PATHS

    def unsupported(self, endpoint: Endpoint, payload: dict[str, Any]) -> str | None:
        if endpoint not in self.paths:
            return f"{self.spec.type.value} has no {endpoint.value} endpoint"
        return None

    def build(self, endpoint: Endpoint, payload: dict[str, Any], stream: bool) -> UpstreamCall:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.spec.api_key is not None:
            key = self._keys.get(self.spec.api_key)
            if not key:
                raise MissingKey(self.spec.api_key.describe())
            headers.update(self._auth_headers(key))
        return UpstreamCall(self._url(endpoint), headers, json.dumps(self._body(payload)).encode())

    # The three points where OpenAI-shaped providers differ (Azure overrides them).
    def _auth_headers(self, key: str) -> dict[str, str]:
        return {"Authorization": "Bearer " + key}

    def _url(self, endpoint: Endpoint) -> str:
        return f"{self._base}/{self.paths[endpoint]}"

    def _body(self, payload: dict[str, Any]) -> dict[str, Any]:
        return with_model(payload, self.spec.model)

    def translate_body(self, endpoint: Endpoint, body: bytes) -> bytes:
        return body

    def translate_error(self, endpoint: Endpoint, status: int, body: bytes) -> bytes:
        return openai_error_body(status, body)

    def relay(self, endpoint: Endpoint, payload: dict[str, Any]) -> PassthroughRelay:
        return PassthroughRelay(endpoint)
