"""The node listing behind the scheduling diagnosis: reused for a few seconds, and a
refusal (no RBAC) is remembered instead of asked again on every reconcile."""

from __future__ import annotations

import asyncio
from typing import Any

from hedge_core.kube import Forbidden
from hedge_operator.placement.nodes import NodeCache


class Lister:
    def __init__(self, refuse: bool = False) -> None:
        self.calls = 0
        self.refuse = refuse

    async def list_nodes(self) -> list[dict[str, Any]]:
        self.calls += 1
        if self.refuse:
            raise Forbidden(403, "Forbidden", 'nodes is forbidden: cannot list resource "nodes"')
        return [{"labels": {"n": str(self.calls)}, "taints": []}]


def test_a_listing_is_reused_until_it_expires() -> None:
    now = [0.0]
    lister = Lister()
    cache = NodeCache(lister, clock=lambda: now[0])
    assert asyncio.run(cache.nodes()) == ([{"labels": {"n": "1"}, "taints": []}], 1)
    now[0] = NodeCache.TTL - 0.1
    assert asyncio.run(cache.nodes())[1] == 0
    now[0] = NodeCache.TTL + 0.1
    nodes, requests = asyncio.run(cache.nodes())
    assert requests == 1 and nodes == [{"labels": {"n": "2"}, "taints": []}]


def test_a_refusal_means_no_census_and_is_not_asked_again_at_once() -> None:
    now = [0.0]
    lister = Lister(refuse=True)
    cache = NodeCache(lister, clock=lambda: now[0])
    assert asyncio.run(cache.nodes()) == (None, 1)
    now[0] = NodeCache.REFUSED_TTL - 1
    assert asyncio.run(cache.nodes()) == (None, 0)
    assert lister.calls == 1
    lister.refuse = False
    now[0] = NodeCache.REFUSED_TTL + 1
    nodes, _ = asyncio.run(cache.nodes())
    assert nodes is not None and lister.calls == 2
