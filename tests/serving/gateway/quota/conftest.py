"""A real redis-server for the quota store's tests: one per session (each test gets it
flushed), and a private one for the tests that stop, pause and restart it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis

from hedge_dev.redis import RedisServer, ensure_redis
from hedge_serving.gateway.quota.store import RedisStore


@pytest.fixture(scope="session")
def redis_binary() -> Path:
    return ensure_redis()


@pytest.fixture(scope="session")
def redis_session(redis_binary: Path) -> Iterator[RedisServer]:
    with RedisServer(redis_binary) as server:
        yield server


@pytest.fixture
def redis_server(redis_session: RedisServer) -> Iterator[RedisServer]:
    """The session's redis-server with an empty database."""
    with redis.Redis.from_url(redis_session.url) as client:
        client.flushdb()
    yield redis_session


@pytest.fixture
def own_redis(redis_binary: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone (it may stop or pause it)."""
    with RedisServer(redis_binary) as server:
        yield server


@pytest.fixture
async def redis_stores() -> AsyncIterator[Callable[..., RedisStore]]:
    """Makes RedisStores and closes them after the test."""
    made: list[RedisStore] = []

    def make(url: str, share: float = 1.0, **kwargs: float) -> RedisStore:
        store = RedisStore(url, share, **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()
