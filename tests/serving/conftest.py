"""Fixtures shared by the gateway tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.serving.gateway_stubs.harness import Clients


@pytest.fixture
async def client() -> AsyncIterator[Clients]:
    """openai SDK clients for gateways started in a test, closed afterwards."""
    clients = Clients()
    yield clients
    await clients.close()
