"""Local stand-ins for the upstreams the gateway talks to, on 127.0.0.1 ephemeral ports.

- `engines.Engine`: a tiny vLLM-like OpenAI server with fault knobs the tests flip per
  request (status codes, a stream cut after N events, slowness) and a record of what it
  received.
- `providers.OpenAIStub`, `AzureStub`, `AnthropicStub`: the providers' public wire formats
  as their API references describe them (paths, auth headers, request validation, response
  and streaming shapes, error shapes).
- `replies`: the deterministic model they all play (`reply_text(prompt)`, cut by
  `max_tokens` and stop sequences as a real model would be); `servers`: what every stub
  shares; `harness`: gateways started in-process for a test; `kubeapi`: a fake Kubernetes
  API; `egress`: a CONNECT proxy and a local CA.

Import from the named modules; the names below stay importable from the package for
callers outside tests/serving (tests/e2e/traffic.py).
"""

from __future__ import annotations

from tests.serving.gateway_stubs.engines import Engine, EngineFaults
from tests.serving.gateway_stubs.providers import (
    AnthropicStub,
    AzureStub,
    OpenAIStub,
    ProviderFaults,
    openai_answer,
)
from tests.serving.gateway_stubs.replies import generate, prompt_of_chat, reply_text, tokens_of
from tests.serving.gateway_stubs.servers import Received, start_app

__all__ = [
    "AnthropicStub",
    "AzureStub",
    "Engine",
    "EngineFaults",
    "OpenAIStub",
    "ProviderFaults",
    "Received",
    "generate",
    "openai_answer",
    "prompt_of_chat",
    "reply_text",
    "start_app",
    "tokens_of",
]
