"""The whole system with the real engine: real arq processes, real Redis, real MiniLM chunks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import torch

from producer import Producer
from sw_core.engine import StreamingEngine
from sw_core.exceptions import ModelError
from sw_core.keys import Keys
from tests.support.models import ChunkedModel
from tests.support.processes import start_worker, worker_env
from tests.support.settings import fast_settings

N_JOBS = 200


def _sentences(n: int) -> list[str]:
    subjects = ["The cat", "A trader", "My sister", "The old engine", "Every student"]
    verbs = ["watches", "repairs", "describes", "ignores", "paints"]
    objects = ["the river", "a red car", "the stock market", "an empty room", "the night sky"]
    return [
        f"{subjects[i % 5]} {verbs[(i // 5) % 5]} {objects[(i // 25) % 5]} ({i})" for i in range(n)
    ]


@pytest.mark.slow
async def test_200_embed_jobs_two_producers_two_workers_one_loader(
    redis_url: str, minilm_chunked: ChunkedModel, tmp_path: Path
) -> None:
    settings = fast_settings(redis_url, models=f"minilm={minilm_chunked.folder}", max_batch_size=16)
    env = worker_env(settings, SW_HANDLER="workers.jobs.inference:build_handler")
    procs = [
        start_worker(env, tmp_path / "inference-1.log"),
        start_worker(env, tmp_path / "inference-2.log"),
        start_worker(env, tmp_path / "loader.log", "workers.LoaderSettings"),
    ]
    sentences = _sentences(N_JOBS)
    try:
        async with Producer(settings=settings) as p1, Producer(settings=settings) as p2:

            async def submit(producer: Producer, texts: list[str]) -> list[str]:
                return [await producer.submit("minilm", "embed", [t]) for t in texts]

            ids_1, ids_2 = await asyncio.gather(
                submit(p1, sentences[0::2]), submit(p2, sentences[1::2])
            )
            job_ids = [None] * N_JOBS
            job_ids[0::2], job_ids[1::2] = ids_1, ids_2
            results = await asyncio.gather(*(p1.result(j, timeout_s=240) for j in job_ids))
    finally:
        codes = [p.stop() for p in procs]
    logs = "".join((tmp_path / f).read_text() for f in ("inference-1.log", "inference-2.log"))
    assert codes == [0, 0, 0], logs[-3000:]

    engine = await StreamingEngine.open(minilm_chunked.folder, settings)
    try:
        expected = await engine.run_async("embed", [{"text": t} for t in sentences])
    finally:
        await engine.aclose()
    for got, want in zip(results, expected, strict=True):
        assert len(got) == 1
        assert torch.allclose(torch.tensor(got[0]), torch.tensor(want), atol=1e-5)

    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        stats = await client.hgetall(Keys(settings.key_prefix).stats)
    finally:
        await client.aclose()
    assert int(stats["total_requests"]) == N_JOBS
    assert int(stats["completed"]) == N_JOBS
    assert int(stats.get("errors", 0)) == 0
    assert int(stats.get("cache_misses", 0)) >= 1


async def test_unknown_model_is_dead_lettered_by_the_engine_handler(
    redis_url: str, minilm_chunked: ChunkedModel, tmp_path: Path
) -> None:
    settings = fast_settings(redis_url, models=f"minilm={minilm_chunked.folder}")
    proc = start_worker(worker_env(settings), tmp_path / "inference.log")
    try:
        async with Producer(settings=settings) as producer:
            # the producer refuses it at submit; a hand-added entry gets its dead letter
            entry = {"model": "no-such-model", "task": "embed", "text": "hello"}
            job_id = (await producer.redis.xadd(producer.keys.jobs, entry)).decode()
            with pytest.raises(ModelError, match="not registered"):
                await producer.result(job_id, timeout_s=60)
            good = await producer.submit("minilm", "embed", ["hello world"])
            vector = await producer.result(good, timeout_s=120)
        assert len(vector) == 1 and len(vector[0]) == 384
    finally:
        assert proc.stop() == 0, (tmp_path / "inference.log").read_text()[-3000:]
