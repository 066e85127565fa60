"""Choosing the next token: the penalties, then argmax or a seeded sample.

Each row uses only its own request and generator, so its output never depends on its batch
mates (static batches and continuous batching alike).
"""

from __future__ import annotations

import secrets
from collections import Counter

import torch

from sw_core.engine.tasks.requests import GenerateRequest


def penalize(
    logits: torch.Tensor,
    requests: list[GenerateRequest],
    prompts: list[list[int]],
    generated: list[list[int]],
) -> torch.Tensor:
    """The penalties of each row, in place, in vLLM's order: first transformers'
    ``RepetitionPenaltyLogitsProcessor`` (the logit of every token id in row i's
    ``prompts[i]`` and ``generated[i]`` is divided by the row's ``repetition_penalty`` when
    positive, multiplied by it otherwise), then OpenAI's additive penalties over the
    generated tokens only: ``logit -= frequency_penalty * count + presence_penalty * (count
    > 0)``."""
    width = logits.shape[-1]
    for i, req in enumerate(requests):
        params = req.params
        penalty = params.repetition_penalty
        if penalty != 1.0:
            seen = {*prompts[i], *generated[i]}
            # ids beyond a head narrower than the vocabulary cannot be chosen: skipped, as
            # transformers skips them
            kept = sorted(t for t in seen if t < width)
            ids = torch.tensor(kept, dtype=torch.long, device=logits.device)
            score = logits[i, ids]
            logits[i, ids] = torch.where(score < 0, score * penalty, score / penalty)
        frequency, presence = params.frequency_penalty, params.presence_penalty
        if (frequency or presence) and generated[i]:
            counts = Counter(t for t in generated[i] if t < width)
            ids = torch.tensor(list(counts), dtype=torch.long, device=logits.device)
            n = torch.tensor(list(counts.values()), dtype=logits.dtype, device=logits.device)
            logits[i, ids] -= frequency * n + presence
    return logits


def generator_for(req: GenerateRequest, device: torch.device) -> torch.Generator | None:
    """A seeded generator for a sampling request (its completion's seed, see
    :func:`~sw_core.engine.tasks.requests.completion_seed`, else a random one); None for a
    greedy one."""
    if req.params.sampling_temperature <= 0:
        return None
    seed = req.seed if req.seed is not None else secrets.randbits(63)
    return torch.Generator(device=device).manual_seed(seed)


def choose(
    logits: torch.Tensor,
    requests: list[GenerateRequest],
    generators: list[torch.Generator | None],
) -> torch.Tensor:
    """Next token per row: argmax, or a seeded sample with temperature, then top-k, top-p
    and min-p (transformers' order)."""
    chosen = logits.argmax(dim=-1)
    for i, req in enumerate(requests):
        params = req.params
        temperature = params.sampling_temperature
        if temperature <= 0:
            continue
        scores = logits[i] / temperature
        if params.top_k > 0:
            k = min(params.top_k, scores.numel())
            kth = torch.topk(scores, k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if params.top_p < 1.0:
            ordered, order = torch.sort(scores, descending=True)
            cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
            drop = cumulative - torch.softmax(ordered, dim=-1) >= params.top_p
            scores = scores.masked_fill(
                torch.zeros_like(drop).scatter(0, order, drop), float("-inf")
            )
        probs = torch.softmax(scores, dim=-1)
        if params.min_p > 0:  # tokens less likely than min_p x the likeliest are out
            probs = probs.masked_fill(probs < params.min_p * probs.max(), 0.0)
        chosen[i] = torch.multinomial(probs, 1, generator=generators[i])[0]
    return chosen
