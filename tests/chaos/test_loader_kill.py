"""A loader SIGKILLed in the middle of a chunk load must not block that chunk for long.

Loads are single-flight through a lease the loader keeps alive. When the loader holding it
dies, arq keeps the job's in-progress key until the job timeout + 10 s (70 s at least
here); had the job id been the single-flight key, every fetch of that chunk would time out
(``WeightServerError``) until then, even with a healthy loader running.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from pathlib import Path

import pytest

from sw_core.exceptions import WeightServerError
from sw_core.local.redis_server import RedisServer
from sw_core.pipeline.registry import ModelRegistry
from tests.chaos.harness import publish_model
from tests.support.observe import KEYS
from tests.support.processes import Cluster, worker_env
from tests.support.servers import S3Server
from tests.support.settings import CHAOS, fast_settings
from tests.support.waiting import wait_until
from workers.chunks.chunk_source import RemoteChunkSource
from workers.chunks.protocol import load_job_id

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

#: arq's key of a running job (``arq.constants.in_progress_key_prefix`` + job id).
IN_PROGRESS_PREFIX = "arq:in-progress:"


async def test_a_loader_killed_mid_load_does_not_block_the_chunk(
    chaos_redis: RedisServer,
    chaos_client,
    s3: S3Server,
    cluster: Cluster,
    tmp_path: Path,
) -> None:
    model = await publish_model(s3, tmp_path, n_chunks=2)
    # S3 down + slow storage retries keep the first load busy for seconds: time to kill it
    settings = fast_settings(
        chaos_redis.url,
        CHAOS,
        **s3.settings_overrides(),
        backup_dir=str(model.backup_dir),
        retry_attempts=4,
        retry_initial_delay_s=1.0,
        timeout_seconds=5,
    )
    await ModelRegistry(chaos_client, settings).register(model.name, model.location)
    env = worker_env(settings)
    loader = cluster.add("loader-x", env, "workers.LoaderSettings")
    await cluster.wait_registered(chaos_client, KEYS, 60)
    chunk = model.manifest.chunks[0]
    s3.stop()

    first = RemoteChunkSource(model.name, settings, timeout_s=30)
    fetching = asyncio.create_task(first.fetch(chunk))
    try:
        in_progress = IN_PROGRESS_PREFIX + load_job_id(chunk.sha256, settings.key_prefix, "*")
        await wait_until(lambda: chaos_client.keys(in_progress), 20, "the load to start")
        loader.kill()
        s3.start()
        loader.start()
        await cluster.wait_registered(chaos_client, KEYS, 60)
        recovered_at = time.monotonic()

        # a healthy loader and S3 are back: a fetch should succeed within a load timeout
        second = RemoteChunkSource(model.name, settings, timeout_s=settings.timeout_seconds)
        try:
            deadline = recovered_at + 3 * settings.timeout_seconds
            data = None
            while data is None and time.monotonic() < deadline:
                with contextlib.suppress(WeightServerError):
                    data = await second.fetch(chunk)
        finally:
            await second.close()
        waited_s = time.monotonic() - recovered_at
        assert data is not None, (
            f"chunk still blocked {waited_s:.0f} s after the loader restarted; lease TTL "
            f"{await chaos_client.pttl(KEYS.chunk_lock(chunk.sha256))} ms"
        )
        assert hashlib.sha256(data).hexdigest() == chunk.sha256
    finally:
        fetching.cancel()
        with contextlib.suppress(BaseException):
            await fetching
        await first.close()
