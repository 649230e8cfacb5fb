"""The peering gate: kopf's rule for who runs, and what a standby does with a nudge."""

from __future__ import annotations

import asyncio
import datetime

import pytest

from hedge_operator.runtime import Nudger
from hedge_operator.standby import PeeringGate, Standby, outranked

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)


def record(priority: int, seconds_ago: float = 0, lifetime: int = 60) -> dict[str, object]:
    seen = NOW - datetime.timedelta(seconds=seconds_ago)
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen.isoformat()}


@pytest.mark.parametrize(
    ("peers", "expected"),
    [
        ({"me": record(10)}, []),
        ({"me": record(10), "a": record(20)}, ["a"]),
        ({"me": record(10), "a": record(5)}, []),
        ({"me": record(10), "a": record(10)}, ["a"]),  # a tie pauses everyone, as in kopf
        ({"me": record(10), "a": record(20, seconds_ago=61)}, []),  # dead peer
        ({"me": record(10), "a": {"priority": 20}}, ["a"]),  # no lastseen: seen now
        ({"me": record(10), "a": {"priority": "x"}}, []),  # unreadable: ignored
    ],
)
def test_kopf_peering_rule(peers: dict[str, object], expected: list[str]) -> None:
    assert outranked(peers, "me", 10, NOW) == expected


def test_standalone_gate_is_always_open() -> None:
    gate = PeeringGate(None, identity="me", priority=0, peering=None)
    assert gate.is_open()
    gate.check("anything")


def test_a_peering_gate_starts_closed_and_refuses_writes() -> None:
    # Without a client nothing is ever read: closed, as kopf starts paused.
    gate = PeeringGate(None, identity="me", priority=0, peering="hedge")
    assert not gate.is_open()
    with pytest.raises(Standby, match="standby replica: not writing"):
        gate.check("apply Service llama")


async def test_a_closed_gate_drops_nudges_and_an_open_one_runs_them() -> None:
    ran: list[tuple[str, str]] = []
    is_open = False

    async def run(key: tuple[str, str]) -> None:
        ran.append(key)

    nudger = Nudger(run, delay=0.0, may_run=lambda: is_open)
    nudger.nudge(("ns", "a"))
    await asyncio.wait_for(asyncio.gather(*list(nudger._tasks)), 5)
    assert ran == []
    is_open = True
    nudger.nudge(("ns", "a"))
    await asyncio.wait_for(asyncio.gather(*list(nudger._tasks)), 5)
    assert ran == [("ns", "a")]
    await nudger.close()


async def test_a_standby_error_is_not_retried_by_the_nudger() -> None:
    calls = 0

    async def run(key: tuple[str, str]) -> None:
        nonlocal calls
        calls += 1
        raise Standby("standby replica: not writing (test)")

    nudger = Nudger(run, delay=0.0)
    nudger.nudge(("ns", "a"))
    await asyncio.wait_for(asyncio.gather(*list(nudger._tasks)), 5)
    assert calls == 1
    assert not nudger._pending  # no retry scheduled: kopf reconciles on resume
    await nudger.close()
