"""hedge_dev.redis: Debian's redis-server from the cache, and the outages it can play."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hedge_dev import redis as dev_redis
from hedge_dev.tools import ToolError

ROOT = Path(__file__).resolve().parents[2]


def test_without_apt_the_error_names_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    dev_redis._candidate_version.cache_clear()
    monkeypatch.setattr(shutil, "which", lambda *_a, **_k: None)
    try:
        with pytest.raises(ToolError, match="apt-get download redis-server redis-tools"):
            dev_redis.ensure_redis()
    finally:
        dev_redis._candidate_version.cache_clear()


def test_the_binary_is_cached_outside_the_repository_by_version() -> None:
    binary = dev_redis.ensure_redis()
    assert binary.exists() and not binary.is_relative_to(ROOT)
    assert binary.parents[2].name == dev_redis._candidate_version()


def test_server_stops_pauses_and_restarts_on_its_port() -> None:
    with dev_redis.RedisServer() as server:
        assert dev_redis._ping(server.port, 1.0)
        server.pause()
        assert not dev_redis._ping(server.port, 0.2)  # accepted by the kernel, never answered
        server.resume()
        assert dev_redis._ping(server.port, 1.0)
        server.stop()
        assert not dev_redis._ping(server.port, 0.2)
        server.start()
        assert dev_redis._ping(server.port, 1.0)
