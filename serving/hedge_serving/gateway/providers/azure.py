"""Azure OpenAI: `{endpoint}/openai/deployments/{deployment}/{path}?api-version=`, `api-key`.

The body is OpenAI's; Azure picks the model from the deployment, so `model` is left out.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from hedge_serving.gateway.keys import KeyStore
from hedge_serving.gateway.providers.base import (
    Endpoint,
    MissingKey,
    PassthroughRelay,
    UpstreamCall,
)
from hedge_serving.gateway.providers.openai import openai_error_body
from hedge_serving.gateway.routing import ProviderSpec

DEFAULT_API_VERSION = "2024-10-21"


class AzureOpenAIProvider:
    def __init__(self, spec: ProviderSpec, keys: KeyStore) -> None:
        if not spec.base_url:
            raise ValueError(
                "azure-openai fallback needs a baseURL (https://<resource>.openai.azure.com)"
            )
        self.spec = spec
        self._keys = keys
        base = spec.base_url.rstrip("/")
        if base.endswith("/openai"):
            base = base[: -len("/openai")]
        deployment = quote(spec.deployment or spec.model, safe="")
        self._prefix = f"{base}/openai/deployments/{deployment}/"
        self._query = "?api-version=" + quote(spec.api_version or DEFAULT_API_VERSION, safe="")

    @property
    def label(self) -> str:
        return self.spec.label

    def unsupported(self, endpoint: Endpoint, payload: dict[str, Any]) -> str | None:
        return None

    def build(self, endpoint: Endpoint, payload: dict[str, Any], stream: bool) -> UpstreamCall:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.spec.api_key is not None:
            key = self._keys.get(self.spec.api_key)
            if not key:
                raise MissingKey(self.spec.api_key.describe())
            headers["api-key"] = key
        body = {k: v for k, v in payload.items() if k != "model"}
        url = self._prefix + endpoint.value + self._query
        return UpstreamCall(url, headers, json.dumps(body).encode())

    def translate_body(self, body: bytes) -> bytes:
        return body

    def translate_error(self, status: int, body: bytes) -> bytes:
        return openai_error_body(status, body)

    def relay(self, payload: dict[str, Any]) -> PassthroughRelay:
        return PassthroughRelay()
