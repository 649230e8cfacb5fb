"""Azure OpenAI: `{endpoint}/openai/deployments/{deployment}/{path}?api-version=`, `api-key`.

The body is OpenAI's; Azure picks the model from the deployment, so `model` is left out.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from hedge_serving.gateway.keys import KeyStore
from hedge_serving.gateway.providers.base import Endpoint
from hedge_serving.gateway.providers.openai import OPENAI_PATHS, OpenAIProvider
from hedge_serving.gateway.routing import ProviderSpec

DEFAULT_API_VERSION = "2024-10-21"


class AzureOpenAIProvider(OpenAIProvider):
    """OpenAI's wire format at a deployment URL, authenticated with the `api-key` header."""

    # Azure's Responses API lives outside the deployment URLs: not offered as a fallback.
    paths = {e: p for e, p in OPENAI_PATHS.items() if e is not Endpoint.RESPONSES}

    def __init__(self, spec: ProviderSpec, keys: KeyStore) -> None:
        if not spec.base_url:
            raise ValueError(
                "azure-openai fallback needs a baseURL (https://<resource>.openai.azure.com)"
            )
        super().__init__(spec, keys)
        base = spec.base_url.rstrip("/")
        if base.endswith("/openai"):
            base = base[: -len("/openai")]
        deployment = quote(spec.deployment or spec.model, safe="")
        self._prefix = f"{base}/openai/deployments/{deployment}/"
        self._query = "?api-version=" + quote(spec.api_version or DEFAULT_API_VERSION, safe="")

    def _auth_headers(self, key: str) -> dict[str, str]:
        return {"api-key": key}

    def _url(self, endpoint: Endpoint) -> str:
        return self._prefix + self.paths[endpoint] + self._query

    def _body(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in payload.items() if k != "model"}
