"""The routing table: live backend state kept across updates, the first spec wins."""

from __future__ import annotations

from hedge_serving.gateway.routing import RouteSpec, RoutingTable


def test_routing_table_keeps_backend_state_across_updates() -> None:
    table = RoutingTable()
    table.replace([RouteSpec("a", ("http://x:1", "http://y:1")), RouteSpec("b", ("http://x:1",))])
    route = table.resolve("a")
    assert route is not None
    x = route.backends[0]
    x.outstanding = 7
    table.replace([RouteSpec("a", ("http://x:1/",)), RouteSpec("a", ("http://z:1",))])
    again = table.resolve("a")
    assert again is not None and again.backends == (x,)  # same live object; first spec wins
    assert [b.url for b in table.backends()] == ["http://x:1"]
    assert table.resolve("b") is None
