"""The penalties against vLLM's formula, written out independently here with numpy:
repetition penalty over prompt and output first, then ``logits -= frequency_penalty *
count + presence_penalty * (count > 0)`` over the output tokens only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sw_core.engine.tasks.requests import GenerateRequest
from sw_core.engine.tasks.sampling import penalize
from sw_core.schema import GenerateParams

VOCAB = 50


def vllm_penalties(
    logits: np.ndarray,
    prompt: list[int],
    output: list[int],
    repetition: float,
    frequency: float,
    presence: float,
) -> np.ndarray:
    """vLLM's ``apply_penalties`` for one row (``vllm/model_executor/layers/utils.py``)."""
    out = logits.astype(np.float64).copy()
    counts = np.bincount(np.asarray(output, dtype=np.int64), minlength=VOCAB)[:VOCAB]
    seen = np.zeros(VOCAB, dtype=bool)
    seen[prompt] = True
    seen |= counts > 0
    factor = np.where(seen, repetition, 1.0)
    out = np.where(out > 0, out / factor, out * factor)
    out -= frequency * counts
    out -= presence * (counts > 0)
    return out


@pytest.mark.parametrize(
    ("repetition", "frequency", "presence"),
    [(1.0, 0.7, 0.0), (1.0, 0.0, 1.5), (1.0, -0.5, -2.0), (1.3, 2.0, 0.4), (1.0, 0.0, 0.0)],
)
def test_penalties_equal_vllms_formula(
    repetition: float, frequency: float, presence: float
) -> None:
    rng = np.random.default_rng(7)
    rows = 3
    logits = rng.normal(0, 3, size=(rows, VOCAB)).astype(np.float32)
    prompts = [rng.integers(0, VOCAB, 6).tolist() for _ in range(rows)]
    # tokens repeated in the output: counts of 1, 2 and 4
    outputs = [[3, 3, 9, 11, 11, 11, 11], [], [0, 49, 49]]
    params = GenerateParams(
        repetition_penalty=repetition, frequency_penalty=frequency, presence_penalty=presence
    )
    requests = [GenerateRequest(p, 8, params) for p in prompts]
    got = penalize(torch.from_numpy(logits.copy()), requests, prompts, outputs).numpy()
    for i in range(rows):
        want = vllm_penalties(logits[i], prompts[i], outputs[i], repetition, frequency, presence)
        np.testing.assert_allclose(got[i], want, rtol=0, atol=1e-5)
    if frequency or presence:  # the test can tell the penalties act
        assert not np.allclose(got[0], logits[0])
    assert np.allclose(got[1], vllm_penalties(logits[1], prompts[1], [], repetition, 0, 0))


def test_penalties_apply_to_their_own_row_only() -> None:
    logits = torch.zeros((2, VOCAB))
    plain = GenerateRequest([1], 4, GenerateParams())
    penalized = GenerateRequest([1], 4, GenerateParams(frequency_penalty=1.0, presence_penalty=0.5))
    penalize(logits, [plain, penalized], [[1], [1]], [[5, 5], [5, 5]])
    assert logits[0].abs().sum() == 0
    assert logits[1, 5] == pytest.approx(-2.5) and logits[1, 1] == 0  # the prompt is not counted
