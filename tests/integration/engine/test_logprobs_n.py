"""``logprobs``, ``n`` and OpenAI's additive penalties in the engine, static batches and
continuous batching alike, each against what transformers computes for the same request:
log-probabilities within 1e-4 of ``log_softmax(model(prompt + output).logits)``, greedy
penalized tokens equal to ``generate`` with the same penalty as a logits processor, and the
``n`` completions of a seeded request equal to ``n`` single requests with the derived seeds,
their shared prompt run once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from sw_core.engine import StreamingEngine
from sw_core.engine.tasks.continuous import DecodeSession
from sw_core.engine.tasks.requests import completion_seed
from tests.support.engine import drive_session, id_rows, reference_penalized
from tests.support.models import chunk_small

NEW = 10


def reference_logprobs(model: torch.nn.Module, prompt: list[int], output: list[int]) -> Any:
    """transformers' log-softmax of the next-token logits at every output position."""
    ids = torch.tensor([prompt + output])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0].float()
    return torch.log_softmax(logits, dim=-1)[len(prompt) - 1 : len(prompt) - 1 + len(output)]


def assert_logprobs_match(
    model: torch.nn.Module, prompt: list[int], result: dict[str, Any], k: int
) -> None:
    entries = result["logprobs"]
    tokens = result["token_ids"][: len(entries)]
    assert len(entries) == len(result["token_ids"]) - (result["finish_reason"] == "eos")
    want = reference_logprobs(model, prompt, tokens)
    for step, (entry, token) in enumerate(zip(entries, tokens, strict=True)):
        assert entry["token_id"] == token
        assert abs(entry["logprob"] - float(want[step, token])) < 1e-4, step
        top = entry["top_logprobs"]
        assert len(top) == k
        if k:
            values, ids = torch.topk(want[step], k)
            assert [t["token_id"] for t in top] == ids.tolist()
            assert (
                max(abs(t["logprob"] - float(v)) for t, v in zip(top, values, strict=True)) < 1e-4
            )


@pytest.fixture
async def llama(tmp_path: Path) -> Any:
    model, _ = chunk_small("llama", tmp_path)
    engine = await StreamingEngine.open(tmp_path, memory_budget_mb=64)
    yield model, engine
    await engine.aclose()


def first_call_rows(engine: StreamingEngine) -> list[int]:
    """Records the batch size of every model call (a forward pre-hook)."""
    rows: list[int] = []

    def hook(_module: Any, args: Any, kwargs: Any) -> None:
        rows.append(int(kwargs["input_ids"].shape[0]))

    engine.model.register_forward_pre_hook(hook, with_kwargs=True)
    return rows


async def test_logprobs_equal_transformers_log_softmax_in_a_static_batch(llama: Any) -> None:
    model, engine = llama
    rows = id_rows([5, 9, 3])
    reqs = [
        {"input_ids": rows[0], "max_new_tokens": NEW, "logprobs": True, "top_logprobs": 5},
        {"input_ids": rows[1], "max_new_tokens": NEW},
        # sampled and penalized: the logprobs stay the model's own distribution
        {
            "input_ids": rows[2],
            "max_new_tokens": NEW,
            "logprobs": True,
            "temperature": 0.8,
            "seed": 3,
            "frequency_penalty": 1.0,
            "repetition_penalty": 1.2,
        },
    ]
    got = await engine.run_async("generate", reqs)
    assert_logprobs_match(model, rows[0], got[0], 5)
    assert "logprobs" not in got[1]
    assert_logprobs_match(model, rows[2], got[2], 0)


async def test_logprobs_equal_transformers_log_softmax_when_rows_join(llama: Any) -> None:
    model, engine = llama
    session = DecodeSession(engine, 64 << 20)
    rows = id_rows([6, 4, 11], seed=4)
    seqs = [
        session.parse(
            f"r{i}",
            {"input_ids": r, "max_new_tokens": NEW + i, "logprobs": True, "top_logprobs": 3},
        )
        for i, r in enumerate(rows)
    ]
    done = await drive_session(session, {1: [seqs[0]], 3: [seqs[1], seqs[2]]})
    for i, row in enumerate(rows):
        assert_logprobs_match(model, row, session.result(done[f"r{i}"]), 3)


@pytest.mark.parametrize(("frequency", "presence"), [(1.5, 0.0), (0.0, 2.0), (0.8, -0.4)])
async def test_additive_penalties_equal_transformers_with_openais_formula(
    llama: Any, frequency: float, presence: float
) -> None:
    model, engine = llama
    rows = id_rows([5, 8], seed=9)
    new = 24
    params = {"max_new_tokens": new, "frequency_penalty": frequency, "presence_penalty": presence}
    static = await engine.run_async("generate", [{"input_ids": r, **params} for r in rows])
    session = DecodeSession(engine, 64 << 20)
    seqs = [session.parse(i, {"input_ids": r, **params}) for i, r in enumerate(rows)]
    joined = await drive_session(session, {1: [seqs[0]], 4: [seqs[1]]})
    differs = 0
    for i, row in enumerate(rows):
        want = reference_penalized(model, row, new, frequency, presence)
        assert static[i]["token_ids"] == want, i
        assert joined[i].tokens == want, i
        differs += want != reference_penalized(model, row, new, 0.0, 0.0)
    assert differs  # the penalties change the answer: the test can tell they act


async def test_n_completions_use_derived_seeds_and_run_their_prompt_once(llama: Any) -> None:
    _model, engine = llama
    calls = first_call_rows(engine)
    prompt = id_rows([7], seed=2)[0]
    sampled = {"input_ids": prompt, "max_new_tokens": NEW, "temperature": 1.0, "seed": 11}
    [three] = await engine.run_async("generate", [{**sampled, "n": 3}])
    assert calls[0] == 1  # the prompt ran once for the three rows
    assert len(three) == 3 and len({tuple(r["token_ids"]) for r in three}) > 1
    for i, result in enumerate(three):
        [alone] = await engine.run_async("generate", [{**sampled, "seed": completion_seed(11, i)}])
        assert result["token_ids"] == alone["token_ids"], i
    assert completion_seed(11, 0) == 11

    session = DecodeSession(engine, 64 << 20)
    calls.clear()
    other = session.parse("other", {"input_ids": id_rows([4])[0], "max_new_tokens": NEW})
    group = session.parse_all({**sampled, "n": 3}, lambda j: ("job", j))
    done = await drive_session(session, {1: [other], 2: group})
    assert calls[1] == 2  # step 2: the running row and the one prompt of the three
    for i in range(3):
        assert done[("job", i)].tokens == three[i]["token_ids"], i
