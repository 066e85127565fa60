"""Issue 11: SW_PRELOAD_MODELS warms the named models when a worker starts."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from tests.model_fixtures import ChunkedModel
from tests.ops_support import wait_until
from tests.pipeline_helpers import KEYS, pipeline_settings, start_worker, stop_worker, worker_env


def test_preloaded_model_is_in_the_cache_before_any_job(
    redis_url: str, minilm_chunked: ChunkedModel, tmp_path: Path
) -> None:
    settings = pipeline_settings(
        redis_url, models=f"minilm={minilm_chunked.folder}", preload_models="minilm,ghost"
    )
    log_path = tmp_path / "inference.log"
    proc = start_worker(worker_env(settings), log_path)
    client = redis.Redis.from_url(redis_url)
    try:
        wait_until(lambda: "model minilm preloaded" in log_path.read_text(), 120, "the preload")
        assert client.zcard(KEYS.cache_lru) >= len(minilm_chunked.manifest.chunks) - 1
        assert client.xlen(KEYS.jobs) == 0  # no job was needed
        assert "preloading model ghost failed" in log_path.read_text()  # logged, not fatal
        time.sleep(0.2)
        assert proc.poll() is None
    finally:
        client.close()
        assert stop_worker(proc) == 0, log_path.read_text()[-3000:]
