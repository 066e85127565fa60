"""SW_PRELOAD_MODELS warms the named models when a worker starts."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from tests.support.models import ChunkedModel
from tests.support.observe import KEYS
from tests.support.processes import start_worker, worker_env
from tests.support.settings import fast_settings
from tests.support.waiting import wait_until_sync


def test_preloaded_model_is_in_the_cache_before_any_job(
    redis_url: str, minilm_chunked: ChunkedModel, tmp_path: Path
) -> None:
    settings = fast_settings(
        redis_url, models=f"minilm={minilm_chunked.folder}", preload_models="minilm,ghost"
    )
    log_path = tmp_path / "inference.log"
    proc = start_worker(worker_env(settings), log_path)
    client = redis.Redis.from_url(redis_url)
    try:
        wait_until_sync(
            lambda: "model minilm preloaded" in log_path.read_text(), 120, "the preload"
        )
        assert client.zcard(KEYS.cache_lru) >= len(minilm_chunked.manifest.chunks) - 1
        assert client.xlen(KEYS.jobs) == 0  # no job was needed
        assert "preloading model ghost failed" in log_path.read_text()  # logged, not fatal
        time.sleep(0.2)
        assert proc.alive
    finally:
        client.close()
        assert proc.stop() == 0, log_path.read_text()[-3000:]
