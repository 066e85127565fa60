"""Generation options of the engine: ``repetition_penalty`` token for token equal to
transformers' ``generate``, and ``stop`` sequences (static batches, continuous batching and
the worker's text deltas), with real chunk sets read under a small memory budget."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sw_core.engine import StreamingEngine, StreamingLlamaModel
from sw_core.engine.tasks.continuous import DecodeSession
from tests.support.engine import drive_session, id_rows, reference_generate
from tests.support.models import chunk_small
from tests.support.serving import TinyChat
from workers.jobs.token_stream import TextDeltas

PENALTY = 1.3
PROMPT = "The old lighthouse keeper opened the door and"
NEW_TOKENS = 24
#: In no generated text: a stop sequence that never matches beside one that does.
NEVER = "\u2603never\u2603"


# ---------------------------------------------------------------------------- penalty
# T5's random logits need a stronger penalty to change its greedy answer on every row
@pytest.mark.parametrize(("kind", "penalty"), [("llama", PENALTY), ("t5", 2.0)])
async def test_repetition_penalty_equals_transformers_in_a_static_batch(
    kind: str, penalty: float, tmp_path: Path
) -> None:
    model, _ = chunk_small(kind, tmp_path)
    rows = id_rows([5, 9, 3])
    pad = model.generation_config.pad_token_id or 0
    # 2 MiB: the weights stream block by block at every step
    engine = await StreamingEngine.open(tmp_path, memory_budget_mb=2, prefetch_count=1)
    try:
        reqs = [{"input_ids": r, "max_new_tokens": NEW_TOKENS} for r in rows]
        # rows 0 and 2 penalized, row 1 not: the penalty is per row
        for i in (0, 2):
            reqs[i]["repetition_penalty"] = penalty
        got = await engine.run_async("generate", reqs)
    finally:
        await engine.aclose()
    for i, row in enumerate(rows):
        plain = reference_generate(model, [row], NEW_TOKENS, pad)[0]
        penalized = reference_generate(model, [row], NEW_TOKENS, pad, repetition_penalty=penalty)[0]
        want = plain if i == 1 else penalized
        assert got[i]["token_ids"] == want, i
        if i != 1:  # the penalty changes the answer: the test can tell it acts
            assert penalized != plain, i


async def test_repetition_penalty_equals_transformers_when_rows_join(tmp_path: Path) -> None:
    model, _ = chunk_small("llama", tmp_path)
    rows = id_rows([5, 9, 3, 12])
    new = [20, 6, 11, 15]
    penalties = [PENALTY, 2.0, 1.0, PENALTY]
    engine = await StreamingEngine.open(tmp_path, memory_budget_mb=2, prefetch_count=1)
    try:
        session = DecodeSession(engine, 64 << 20)
        seqs = [
            session.parse(f"r{i}", {"input_ids": r, "max_new_tokens": n, "repetition_penalty": p})
            for i, (r, n, p) in enumerate(zip(rows, new, penalties, strict=True))
        ]
        done = await drive_session(session, {1: [seqs[0]], 3: [seqs[1]], 5: [seqs[2], seqs[3]]})
    finally:
        await engine.aclose()
    pad = model.generation_config.pad_token_id or 0
    differs = 0
    for i, (row, n, p) in enumerate(zip(rows, new, penalties, strict=True)):
        [want] = reference_generate(model, [row], n, pad, repetition_penalty=p)
        assert done[f"r{i}"].tokens == want, i
        differs += want != reference_generate(model, [row], n, pad)[0]
    assert differs >= 2  # the penalized rows are not what greedy alone would give


# ---------------------------------------------------------------------------- stop
def _split_stop(tokenizer: Any, text: str, tokens: list[int]) -> tuple[str, int, int]:
    """A 4-character stop sequence across a token boundary in the middle of ``text``:
    ``(stop, where it begins, tokens up to and including the one that completes it)``."""
    for k in [*range(len(tokens) // 2, len(tokens) - 2), *range(len(tokens) // 2, 2, -1)]:
        before = tokenizer.decode(tokens[:k], skip_special_tokens=True)
        upto = tokenizer.decode(tokens[: k + 1], skip_special_tokens=True)
        at = len(before)
        stop = text[at - 2 : at + 2]
        if (
            text.startswith(before)
            and text.startswith(upto)
            and len(upto) >= at + 2
            and len(before) - len(tokenizer.decode(tokens[: k - 1], skip_special_tokens=True)) >= 2
            and stop.strip()
            and text.find(stop) == at - 2
        ):
            return stop, at - 2, k + 1
    raise AssertionError(f"no token boundary to put a stop sequence on in {text!r}")


@pytest.fixture
async def chat_engine(tiny_chat: TinyChat) -> AsyncIterator[StreamingEngine]:
    engine = await StreamingEngine.open(tiny_chat.folder, memory_budget_mb=8, prefetch_count=1)
    yield engine
    await engine.aclose()


async def test_a_stop_sequence_ends_the_row_and_cuts_its_text(
    tiny_chat: TinyChat, chat_engine: StreamingEngine
) -> None:
    base = {"text": PROMPT, "max_new_tokens": NEW_TOKENS, "chat": False}
    [full] = await chat_engine.run_async("generate", [base])
    assert full["finish_reason"] == "length", full
    text, tokens = full["text"], full["token_ids"]
    stop, at, used = _split_stop(tiny_chat.tokenizer, text, tokens)
    later = text[at + 6 : at + 10]  # a second stop sequence that occurs only after the first
    assert later and text.find(later) > at
    stopped, unstopped = await chat_engine.run_async(
        "generate", [{**base, "stop": [later, stop, NEVER]}, base]
    )
    assert stopped == {
        "text": text[:at],
        "token_ids": tokens[:used],  # up to and including the token that completed the stop
        "finish_reason": "stop",
        "prompt_tokens": full["prompt_tokens"],
    }
    assert len(stopped["token_ids"]) < len(tokens) and stop not in stopped["text"]
    assert unstopped == full  # its batch mate stopped; this row went on to its length
    [one] = await chat_engine.run_async("generate", [{**base, "stop": stop}])
    assert one == stopped
    async with StreamingLlamaModel(str(tiny_chat.folder), memory_budget_mb=8) as model:
        facade = await model.generate_async(
            PROMPT, max_new_tokens=NEW_TOKENS, chat=False, stop=[stop], repetition_penalty=1.0
        )
    assert facade == text[:at]


async def test_continuous_rows_stop_and_their_deltas_never_show_the_stop(
    tiny_chat: TinyChat, chat_engine: StreamingEngine
) -> None:
    base = {"text": PROMPT, "max_new_tokens": NEW_TOKENS, "chat": False}
    [full] = await chat_engine.run_async("generate", [base])
    text, tokens = full["text"], full["token_ids"]
    stop, at, used = _split_stop(tiny_chat.tokenizer, text, tokens)
    session = DecodeSession(chat_engine, 64 << 20)
    seqs = {
        "stopped": session.parse("stopped", {**base, "stop": [NEVER, stop]}),
        "plain": session.parse("plain", base),
    }
    deltas = {key: TextDeltas(session.decode, seq.request.params.stop) for key, seq in seqs.items()}
    sent: dict[str, list[str]] = {key: [] for key in seqs}
    # what the stopped row had sent once the stop sequence's first half was generated
    sent_before_last: str | None = None
    joining = list(seqs.values())
    while joining or session.active:
        report = await session.step_async(joining)
        joining = []
        for key in report.tokens:  # as workers.jobs.decode_loop publishes a step
            seq = seqs[key]
            ended = seq.finish_reason is not None
            sent[key].append(deltas[key].next(seq.text_ids, final=ended, end=seq.stop_at))
            if key == "stopped" and len(seq.tokens) == used - 1:
                sent_before_last = "".join(sent[key])
    stopped = seqs["stopped"]
    assert stopped.finish_reason == "stop" and stopped.tokens == tokens[:used]
    assert session.text(stopped) == text[:at] == "".join(sent["stopped"])
    assert all(stop not in delta for delta in sent["stopped"])
    # the text then ended with the stop's first two characters: they were held back
    assert sent_before_last is not None and text.startswith(sent_before_last)
    assert len(sent_before_last) <= at
    plain = seqs["plain"]
    assert plain.finish_reason == "length" and plain.tokens == tokens
    assert session.text(plain) == text == "".join(sent["plain"])
