"""Helpers for the engine tests: chunk sets in the Redis cache, token rows, references."""

from __future__ import annotations

from pathlib import Path

import redis
import torch

from sw_core.cache import ChunkCache
from sw_core.chunks.manifest import Manifest
from sw_core.engine.io.sources import CachedChunkSource
from sw_core.engine.tasks.continuous import DecodeSession, Sequence
from sw_core.keys import Keys
from sw_core.storage import FilesystemBackend
from tests.support.models import VOCAB


def chunk_cache(redis_url: str, budget_mb: int = 1024) -> ChunkCache:
    return ChunkCache(
        redis.Redis.from_url(redis_url),
        keys=Keys("sw-engine-test"),
        cache_size_bytes=budget_mb << 20,
    )


def cached_source(folder: Path, manifest: Manifest, cache: ChunkCache) -> CachedChunkSource:
    """A source over ``folder`` whose every chunk is already in the Redis cache."""
    for chunk in manifest.chunks:
        cache.put(chunk.sha256, (folder / chunk.file).read_bytes())
    return CachedChunkSource(cache, FilesystemBackend(folder))


def id_rows(lengths: list[int], vocab: int = VOCAB, seed: int = 1) -> list[list[int]]:
    """Token-id rows of the given lengths spread over the whole vocabulary (ids >= 2)."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(2, vocab, (n,), generator=generator).tolist() for n in lengths]


def padded(rows: list[list[int]], pad_id: int, *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row)
        mask[i, span] = 1
    return ids, mask


def reference_generate(
    model: torch.nn.Module,
    rows: list[list[int]],
    max_new_tokens: int,
    pad_id: int,
    *,
    repetition_penalty: float = 1.0,
) -> list[list[int]]:
    """transformers' greedy ``generate`` for the batch, new tokens only, cut after EOS."""
    config = model.config
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    ids, mask = padded(rows, pad_id, left=not encoder_decoder)
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            repetition_penalty=repetition_penalty,
        )
    start = 1 if encoder_decoder else ids.shape[1]
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    result = []
    for row in out[:, start:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))
        result.append(row[:cut])
    return result


async def drive_session(
    session: DecodeSession, plan: dict[int, list[Sequence]]
) -> dict[str, Sequence]:
    """Step a :class:`~sw_core.engine.tasks.continuous.DecodeSession` until every sequence ended;
    ``plan[step]`` (sequences) joins before that step (1-based). Finished sequences by key."""
    done: dict[str, Sequence] = {}
    step = 0
    while session.active or any(k > step for k in plan):
        step += 1
        report = await session.step_async(plan.get(step, []))
        for seq in report.finished:
            done[seq.key] = seq
    return done


class OpenAIPenalties:
    """The reference: OpenAI's/vLLM's additive penalties as a transformers logits processor."""

    def __init__(self, start: int, frequency: float, presence: float) -> None:
        self.start, self.frequency, self.presence = start, frequency, presence

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        for row in range(input_ids.shape[0]):
            counts = torch.bincount(input_ids[row, self.start :], minlength=scores.shape[-1])
            scores[row] -= self.frequency * counts + self.presence * (counts > 0)
        return scores


def reference_penalized(
    model: torch.nn.Module, prompt: list[int], new: int, frequency: float, presence: float
) -> list[int]:
    from transformers import LogitsProcessorList

    ids = torch.tensor([prompt])
    processor = OpenAIPenalties(len(prompt), frequency, presence)
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            do_sample=False,
            logits_processor=LogitsProcessorList([processor]),
        )
    return out[0, len(prompt) :].tolist()
