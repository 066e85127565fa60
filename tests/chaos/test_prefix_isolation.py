"""Two deployments on one Redis (``SW_KEY_PREFIX`` sw and sw2) must not block each other.

``Keys`` puts every key under its prefix so one Redis can host several deployments, but arq
keeps job ids in its global ``arq:job:*`` namespace: were a chunk load's job id not
prefixed, a load queued by one deployment (its loaders busy or down) would make arq refuse
the other deployment's load of the same content (same sha256), and the second deployment's
fetch would time out although its own loader is idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from pathlib import Path

import pytest
from arq.worker import Worker

from sw_core.pipeline.registry import ModelRegistry
from tests.support.settings import CHAOS, fast_settings
from tests.support.storage import write_chunk_set
from tests.support.waiting import wait_until
from workers.chunks.chunk_source import RemoteChunkSource
from workers.chunks.protocol import LOAD_CHUNK, arq_pool, load_job_id
from workers.node import worker_options

pytestmark = [pytest.mark.chaos]


async def test_a_load_queued_by_one_prefix_does_not_block_another_prefix(
    redis_url: str, redis_client, tmp_path: Path
) -> None:
    manifest = write_chunk_set(tmp_path / "tiny", n_chunks=1)
    chunk = manifest.chunks[0]
    one = fast_settings(redis_url, CHAOS, key_prefix="sw", timeout_seconds=3)
    two = fast_settings(redis_url, CHAOS, key_prefix="sw2", timeout_seconds=3)
    for settings in (one, two):
        await ModelRegistry(redis_client, settings).register("tiny", str(tmp_path / "tiny"))
    # deployment "sw" asks for the chunk while its loaders are down: the job waits queued
    pool = await arq_pool(one)
    try:
        queued = await pool.enqueue_job(
            LOAD_CHUNK,
            "tiny",
            chunk.name,
            chunk.sha256,
            _job_id=load_job_id(chunk.sha256, "sw", "other"),
        )
        assert queued is not None
    finally:
        await pool.aclose()
    # deployment "sw2" has an idle loader of its own and asks for the same content
    worker = Worker(**worker_options(two, inference=False), handle_signals=False)
    task = asyncio.create_task(worker.async_run())
    source = RemoteChunkSource("tiny", two, timeout_s=3)
    try:
        await wait_until(lambda: "loader" in worker.ctx, 15, "the sw2 loader")
        data = await source.fetch(chunk)
        assert hashlib.sha256(data).hexdigest() == chunk.sha256
        # let the load job end (it gives its lease back after announcing) before closing
        await wait_until(lambda: worker.job_counter == 0, 15, "the sw2 load to end")
    finally:
        await source.close()
        await worker.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
