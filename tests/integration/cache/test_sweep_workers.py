"""A model larger than the shared chunk cache, swept by real workers (a loader and an
inference worker, real Redis): each sweep hits about C/N of its bytes instead of none, the
storage reads per token fall to match, and a hot small model keeps its hits meanwhile."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import torch
import transformers

from producer import Producer
from sw_core.chunks.chunker import chunk_model
from sw_core.chunks.manifest import Manifest
from sw_core.settings import Settings
from tests.support.models import tiny_engine_model
from tests.support.observe import read_sweeps
from tests.support.serving import workers
from tests.support.settings import fast_settings
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

MIB = 1 << 20
#: The worker keeps almost nothing: every step streams the model through the cache tier.
BUDGET_MB = 2


def big_chat_model(folder: Path) -> Manifest:
    """A random LLaMA with SmolLM2's tokenizer (about 28 MiB: 8 blocks and 1 MiB shards of a
    tied 49152 x 128 embedding, which the head reads whole every step)."""
    from sw_core.local.bundled import smollm2_gguf_path

    gguf = smollm2_gguf_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=256,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    return chunk_model(model, folder, name="big", tokenizer=tokenizer, max_chunk_mb=1)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Manifest]]:
    big = tmp_path_factory.mktemp("big")
    small = tmp_path_factory.mktemp("small")
    return {
        "big": (big, big_chat_model(big)),
        "small": (small, tiny_engine_model(small, "small", hidden=128)),
    }


def settings_for(redis_url: str, models: dict[str, tuple[Path, Manifest]]) -> Settings:
    """A cache half the big model's size; a worker budget far below both models."""
    cache_mb = models["big"][1].total_bytes // MIB // 2
    locations = ",".join(f"{name}={folder}" for name, (folder, _) in models.items())
    return fast_settings(
        redis_url,
        models=locations,
        cache_size_mb=cache_mb,
        cache_part_mb=1,
        memory_budget_mb=BUDGET_MB,
        prefetch_count=1,
        max_new_tokens_limit=100,
        timeout_seconds=30,
    )


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before.get(name, 0) for name in after}


async def generate(producer: Producer, tokens: int = 6) -> int:
    """One big-model generate job; the tokens it generated."""
    job = await producer.submit(
        "big", "generate", ["Tell me about the sea."], max_new_tokens=tokens
    )
    [result] = await producer.result(job, timeout=300)
    return len(result["token_ids"])


async def settled(redis: aioredis.Redis, model: str, sweeps: int) -> dict[str, int]:
    """The model's counters once its worker flushed ``sweeps`` sweeps (a job's result is
    written before the step's counters are flushed)."""

    async def flushed() -> bool:
        return (await read_sweeps(redis, model))["sweeps"] >= sweeps

    await wait_until(flushed, 30, f"{sweeps} sweeps of {model} to be counted")
    return await read_sweeps(redis, model)


async def forward_small(producer: Producer) -> None:
    job = await producer.submit("small", "forward", [[5, 6, 7, 8]], positions="last")
    await producer.result(job, timeout=120)


async def test_each_sweep_of_a_model_twice_the_cache_hits_about_c_over_n(
    redis_url: str, models: dict[str, Any], tmp_path: Path
) -> None:
    settings = settings_for(redis_url, models)
    redis = aioredis.Redis.from_url(redis_url)
    jobs: list[dict[str, int]] = []
    with workers(settings, tmp_path):
        async with Producer(settings=settings) as producer:
            before = await read_sweeps(redis, "big")
            for _ in range(3):
                tokens = await generate(producer)
                after = await settled(redis, "big", before["sweeps"] + tokens)
                jobs.append({**delta(after, before), "tokens": tokens})
                before = after
    await redis.aclose()
    cache_bytes = settings.cache_size_bytes
    later = jobs[1:]
    swept = sum(j["bytes"] for j in later) / sum(j["sweeps"] for j in later)
    assert swept > 1.8 * cache_bytes, (swept, cache_bytes)  # the sweep does not fit
    c_over_n = cache_bytes / swept
    for job in later:
        assert job["sweeps"] == job["tokens"], jobs  # one sweep per token
        hit_rate = job["hit_bytes"] / job["bytes"]
        assert hit_rate >= 0.8 * c_over_n, (hit_rate, c_over_n, jobs)
        # storage serves exactly what the cache does not, about (1 - C/N) of each sweep
        # (with plain LRU it was the whole model, every token)
        missed = job["bytes"] - job["hit_bytes"]  # (a loader re-reading a manifest: a little more)
        assert missed <= job["storage_bytes_read"] <= missed + 0.02 * job["bytes"], jobs
        per_token = job["storage_bytes_read"] / job["tokens"]
        assert per_token <= (1 - 0.8 * c_over_n) * swept, (per_token, swept, jobs)


async def test_a_hot_small_model_keeps_its_hits_while_a_big_one_sweeps(
    redis_url: str, models: dict[str, Any], tmp_path: Path
) -> None:
    settings = settings_for(redis_url, models)
    redis = aioredis.Redis.from_url(redis_url)
    with workers(settings, tmp_path):
        async with Producer(settings=settings) as producer:
            for _ in range(3):  # the small model is hot: cached and used
                await forward_small(producer)
            small_before = await settled(redis, "small", 3)
            big_before = await read_sweeps(redis, "big")
            big_job = asyncio.ensure_future(generate(producer, tokens=8))
            small_jobs = 0
            while not big_job.done():  # used all along the big model's sweeps
                await forward_small(producer)
                small_jobs += 1
            tokens = await big_job
            small = delta(await settled(redis, "small", 3 + small_jobs), small_before)
            big = delta(await settled(redis, "big", tokens), big_before)
    await redis.aclose()
    assert tokens >= 4 and small_jobs >= tokens, (tokens, small_jobs)
    assert small["reads"] > 0 and big["reads"] > 0
    # every read of the small model hit: the big model's sweeps did not flush it
    assert small["hits"] == small["reads"], small
    # and the big model still got a share of the cache
    assert big["hit_bytes"] > 0, big
