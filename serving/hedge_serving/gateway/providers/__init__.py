"""Fallback providers, one module per wire format (see `base` for the common interface)."""

from __future__ import annotations

from hedge_serving.gateway.keys import KeyStore
from hedge_serving.gateway.providers.anthropic import AnthropicProvider
from hedge_serving.gateway.providers.azure import AzureOpenAIProvider
from hedge_serving.gateway.providers.base import Endpoint, MissingKey, Provider, UpstreamCall
from hedge_serving.gateway.providers.openai import OpenAIProvider
from hedge_serving.gateway.routing import ProviderSpec, ProviderType

__all__ = ["Endpoint", "MissingKey", "Provider", "UpstreamCall", "make_provider"]


def make_provider(spec: ProviderSpec, keys: KeyStore) -> Provider:
    if spec.type is ProviderType.ANTHROPIC:
        return AnthropicProvider(spec, keys)
    if spec.type is ProviderType.AZURE_OPENAI:
        return AzureOpenAIProvider(spec, keys)
    return OpenAIProvider(spec, keys)
