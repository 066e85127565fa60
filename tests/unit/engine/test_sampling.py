"""Sampling's ``min_p`` against transformers' ``MinPLogitsWarper``: every token a seeded
sample picks is one the warper keeps, and without ``min_p`` the same draws reach tokens it
removes (so the test can tell the filter acts)."""

from __future__ import annotations

import torch
from transformers.generation.logits_process import MinPLogitsWarper

from sw_core.engine.tasks.requests import GenerateRequest
from sw_core.engine.tasks.sampling import choose, generator_for

VOCAB = 40
DRAWS = 400


def _picks(logits: torch.Tensor, **params: float) -> set[int]:
    from sw_core.schema import GenerateParams

    request = GenerateRequest([1], 4, GenerateParams(do_sample=True, seed=11, **params))
    generator = generator_for(request, torch.device("cpu"))
    return {int(choose(logits.clone(), [request], [generator])[0]) for _ in range(DRAWS)}


def test_min_p_keeps_the_tokens_transformers_keeps() -> None:
    logits = torch.randn(1, VOCAB, generator=torch.Generator().manual_seed(3)) * 1.5
    for min_p, temperature in ((0.1, 1.0), (0.2, 0.8), (0.05, 1.5)):
        warped = MinPLogitsWarper(min_p)(torch.tensor([[1]]), logits / temperature)
        kept = set(torch.nonzero(torch.isfinite(warped[0])).flatten().tolist())
        assert 1 < len(kept) < VOCAB
        picks = _picks(logits, min_p=min_p, temperature=temperature)
        assert picks <= kept, f"min_p={min_p}: sampled {sorted(picks - kept)} it removes"
        unfiltered = _picks(logits, temperature=temperature)
        assert unfiltered - kept, f"min_p={min_p}: the draws never left the kept set"


def test_min_p_of_one_keeps_only_the_likeliest_token() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.9, -1.0]])
    assert _picks(logits, min_p=1.0, temperature=1.0) == {1}
