"""The OpenAI features that need the engine, through the official ``openai`` client against a
real ``sw serve``, Redis and an inference worker: ``logprobs`` (within 1e-4 of transformers'
log-softmax), ``n=2`` (streamed chunks carry their index), the additive penalties (equal to
transformers with OpenAI's formula), ``include_usage`` with them, ``response_format`` and the
context length in ``/v1/models``. The reference is the tiny chat model in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
import torch

from sw_core.engine.tasks.chat import chat_ids
from sw_core.engine.tasks.logprobs import TokenText
from tests.support.engine import reference_penalized
from tests.support.gateway import Cluster, cluster_fixture, tiny_chat_model, tinychat_chunked  # noqa: F401

CHAT = [{"role": "user", "content": "What is the capital of France?"}]
NEW = 12

cluster = cluster_fixture("tinychat", "openai-features")


@pytest.fixture(scope="module")
def reference() -> Iterator[tuple[Any, Any]]:
    yield tiny_chat_model()


@pytest.fixture
async def client(cluster: Cluster) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=cluster.gateways[0].url + "/v1", api_key="unused", max_retries=0, timeout=300
    ) as client:
        yield client


def greedy_reference(model: Any, prompt: list[int], new: int) -> tuple[list[int], torch.Tensor]:
    """transformers' greedy tokens (cut after EOS) and the log-softmax at each step."""
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    tokens = out.sequences[0, len(prompt) :].tolist()
    eos = model.generation_config.eos_token_id
    if eos in tokens:
        tokens = tokens[: tokens.index(eos) + 1]
    logprobs = torch.log_softmax(torch.stack(out.logits)[:, 0].float(), dim=-1)
    return tokens, logprobs


async def test_logprobs_equal_transformers_log_softmax(
    client: openai.AsyncOpenAI, reference: tuple[Any, Any]
) -> None:
    model, tokenizer = reference
    prompt = chat_ids(tokenizer, CHAT)
    tokens, want = greedy_reference(model, prompt, NEW)
    names = TokenText(tokenizer)
    answer = await client.chat.completions.create(
        model="tinychat", messages=CHAT, max_tokens=NEW, logprobs=True, top_logprobs=4
    )
    content = answer.choices[0].logprobs.content
    shown = tokens[:-1] if tokens[-1] == model.generation_config.eos_token_id else tokens
    assert len(content) == len(shown)
    for step, (entry, token) in enumerate(zip(content, shown, strict=True)):
        assert entry.token == names(token)[0] and entry.bytes == names(token)[1]
        assert abs(entry.logprob - float(want[step, token])) < 1e-4, step
        values, ids = torch.topk(want[step], 4)
        assert [t.token for t in entry.top_logprobs] == [names(i)[0] for i in ids.tolist()]
        for alt, value in zip(entry.top_logprobs, values.tolist(), strict=True):
            assert abs(alt.logprob - value) < 1e-4
    # streamed: the chunks' entries add up to the same list
    streamed: list[Any] = []
    async for chunk in await client.chat.completions.create(
        model="tinychat", messages=CHAT, max_tokens=NEW, logprobs=True, top_logprobs=4, stream=True
    ):
        if chunk.choices and chunk.choices[0].logprobs:
            streamed += chunk.choices[0].logprobs.content or []
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]
    # the legacy completions shape
    text = await client.completions.create(
        model="tinychat", prompt="The capital of France is", max_tokens=4, logprobs=2
    )
    legacy = text.choices[0].logprobs
    assert len(legacy.tokens) == len(legacy.token_logprobs) == len(legacy.top_logprobs)
    assert all(len(top) <= 2 for top in legacy.top_logprobs)
    assert legacy.text_offset[0] == 0


async def test_n_answers_with_their_indices_and_usage(client: openai.AsyncOpenAI) -> None:
    base: dict[str, Any] = {"model": "tinychat", "messages": CHAT, "max_tokens": NEW}
    sampled = {**base, "temperature": 1.0, "seed": 21}
    two = await client.chat.completions.create(**sampled, n=2)
    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[0].message.content != two.choices[1].message.content
    one = await client.chat.completions.create(**sampled)
    assert one.choices[0].message.content == two.choices[0].message.content  # completion 0
    assert two.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counts once
    texts = {0: "", 1: ""}
    usage = None
    async for chunk in await client.chat.completions.create(
        **sampled, n=2, stream=True, stream_options={"include_usage": True}
    ):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage
    assert texts == {i: c.message.content for i, c in enumerate(two.choices)}
    assert usage is not None and usage.completion_tokens == two.usage.completion_tokens
    assert usage.prompt_tokens == two.usage.prompt_tokens


async def test_additive_penalties_equal_transformers(
    client: openai.AsyncOpenAI, reference: tuple[Any, Any]
) -> None:
    model, tokenizer = reference
    prompt = chat_ids(tokenizer, CHAT)
    got = await client.chat.completions.create(
        model="tinychat",
        messages=CHAT,
        max_tokens=24,
        frequency_penalty=1.5,
        presence_penalty=0.5,
        logprobs=True,
    )
    want = reference_penalized(model, prompt, 24, 1.5, 0.5)
    names = TokenText(tokenizer)
    eos = model.generation_config.eos_token_id
    want = want[: want.index(eos)] if eos in want else want
    assert [e.token for e in got.choices[0].logprobs.content] == [names(t)[0] for t in want]
    plain, _ = greedy_reference(model, prompt, 24)
    assert plain[: len(want)] != want  # the penalties change the answer


async def test_response_format_and_the_context_length(client: openai.AsyncOpenAI) -> None:
    models = {m.id: m for m in (await client.models.list()).data}
    assert models["tinychat"].model_extra["context_length"] == 512
    assert models["tinychat"].model_extra["max_model_len"] == 512
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    # the tiny model speaks MiniLM's WordPiece tokenizer, which llguidance cannot decode:
    # a clear 400 naming the field (SmolLM2's byte-level one works:
    # tests/integration/engine/test_json_schema.py)
    with pytest.raises(openai.BadRequestError) as wordpiece:
        await client.chat.completions.create(
            model="tinychat",
            messages=CHAT,
            max_tokens=20,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "ok", "schema": schema},
            },
        )
    assert "json_schema" in str(wordpiece.value) and "tokenizer" in str(wordpiece.value)
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(
            model="tinychat",
            messages=CHAT,
            response_format={"type": "json_schema", "json_schema": {"schema": {"type": "x"}}},
        )
    assert "response_format" in str(bad.value)
    with pytest.raises(openai.BadRequestError) as too_long:
        await client.completions.create(model="tinychat", prompt="word " * 600, max_tokens=4)
    assert "512" in str(too_long.value)
