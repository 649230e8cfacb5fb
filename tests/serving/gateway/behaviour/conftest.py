"""Fixtures the gateway's discovery behaviour tests share: a fake Kubernetes API server on
loopback (real HTTP, the API's wire format) and the project's client logged in to it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hedge_core.kube import Kube
from tests.serving.gateway_stubs.kubeapi import FakeKubeAPI, kubeconfig_for


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[FakeKubeAPI]:
    server = await FakeKubeAPI().start()
    server.kubeconfig = kubeconfig_for(server, tmp_path)
    yield server
    await server.stop()


@pytest.fixture
async def kube(api: FakeKubeAPI) -> AsyncIterator[Kube]:
    client = Kube(str(api.kubeconfig))
    yield client
    await client.close()
