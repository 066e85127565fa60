"""The HTTP gateway driven by the official ``openai`` client: a real ``sw serve`` process, a
real Redis and a real inference worker process with all-MiniLM-L6-v2 and a tiny chat model.
What a client gets when all goes well (the errors: ``test_errors.py``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from producer import Producer
from tests.support.gateway import (  # noqa: F401
    Cluster,
    client_of,
    close_open_clients,
    cluster_fixture,
    tinychat_chunked,
)
from tests.support.models import ChunkedModel

TEXTS = ["A man plays a guitar.", "Someone is playing an instrument.", "The stock market fell."]
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


#: One inference worker and one keyless gateway for the whole module.
cluster = cluster_fixture("tinychat", "gateway")


@pytest.fixture(autouse=True)
async def close_clients() -> AsyncIterator[None]:
    yield
    await close_open_clients()


async def test_models_and_probes(cluster: Cluster) -> None:
    client = client_of(cluster)
    models = await client.models.list()
    assert sorted(m.id for m in models.data) == ["minilm", "tinychat"]
    assert (await client.models.retrieve("minilm")).id == "minilm"
    url = cluster.gateways[0].url
    assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(url + "/readyz")
    assert ready.status_code == 200 and ready.json()["inference_workers"] == 1


async def test_embeddings_equal_the_producers_vectors(
    cluster: Cluster, minilm_chunked: ChunkedModel
) -> None:
    client = client_of(cluster)
    as_base64 = await client.embeddings.create(model="minilm", input=TEXTS)  # the default
    as_float = await client.embeddings.create(model="minilm", input=TEXTS, encoding_format="float")
    async with Producer(settings=cluster.settings) as producer:
        expected = await producer.result(await producer.submit("minilm", "embed", TEXTS), 120)
    want = np.asarray(expected, dtype=np.float32)
    for response in (as_base64, as_float):
        got = np.asarray([d.embedding for d in response.data], dtype=np.float32)
        assert [d.index for d in response.data] == [0, 1, 2]
        assert got.shape == (3, 384)
        np.testing.assert_allclose(got, want, atol=1e-6)
    tokens = sum(len(minilm_chunked.tokenizer(t)["input_ids"]) for t in TEXTS)
    assert as_float.usage.prompt_tokens == tokens == as_float.usage.total_tokens
    single = await client.embeddings.create(model="minilm", input=TEXTS[0])
    np.testing.assert_allclose(single.data[0].embedding, want[0], atol=1e-6)


async def test_chat_without_and_with_stream(cluster: Cluster) -> None:
    client = client_of(cluster)
    whole = await client.chat.completions.create(model="tinychat", messages=CHAT, max_tokens=12)
    choice = whole.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert whole.usage.prompt_tokens > 0
    if choice.finish_reason == "length":
        assert whole.usage.completion_tokens == 12
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    deltas, finishes, usage = await _chat_stream(
        client, messages=CHAT, max_tokens=12, stream_options={"include_usage": True}
    )
    assert "".join(deltas) == choice.message.content
    assert 1 < len(deltas) <= whole.usage.completion_tokens  # token by token, not in one piece
    assert finishes == [choice.finish_reason]
    assert usage is not None and usage.model_dump() == whole.usage.model_dump()

    async with Producer(settings=cluster.settings) as producer:
        job = await producer.submit("tinychat", "generate", [CHAT], max_new_tokens=12)
        (direct,) = await producer.result(job, 120)
    assert direct["text"] == choice.message.content


async def test_usage_comes_as_its_own_last_chunk_only_when_asked(cluster: Cluster) -> None:
    client = client_of(cluster)
    plain = [
        c
        async for c in await client.chat.completions.create(
            model="tinychat", messages=CHAT, max_tokens=4, stream=True
        )
    ]
    assert all(c.usage is None for c in plain) and plain[-1].choices[0].finish_reason
    asked = [
        c
        async for c in await client.chat.completions.create(
            model="tinychat",
            messages=CHAT,
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    ]
    *chunks, last = asked
    assert last.choices == [] and last.usage.completion_tokens == 4
    assert last.usage.total_tokens == last.usage.prompt_tokens + 4
    assert all(c.usage is None and c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    text = await client.completions.create(
        model="tinychat",
        prompt="The sea",
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    *_, usage_chunk = [c async for c in text]
    assert usage_chunk.choices == [] and usage_chunk.usage.completion_tokens == 3
    with pytest.raises(openai.BadRequestError, match="stream_options"):
        await client.chat.completions.create(
            model="tinychat", messages=CHAT, stream_options={"include_usage": True}
        )


async def test_completions_use_the_raw_prompt(cluster: Cluster) -> None:
    client = client_of(cluster)
    whole = await client.completions.create(model="tinychat", prompt="The capital", max_tokens=8)
    stream = await client.completions.create(
        model="tinychat", prompt="The capital", max_tokens=8, stream=True
    )
    text = "".join([c.choices[0].text async for c in stream if c.choices])
    assert text == whole.choices[0].text
    async with Producer(settings=cluster.settings) as producer:
        job = await producer.submit(
            "tinychat", "generate", ["The capital"], max_new_tokens=8, chat=False
        )
        (direct,) = await producer.result(job, 120)
    assert whole.choices[0].text == direct["text"]
    assert whole.usage.prompt_tokens == direct["prompt_tokens"]


async def _chat_stream(
    client: openai.AsyncOpenAI, **kwargs: Any
) -> tuple[list[str], list[str], Any]:
    """The content deltas, finish reasons and usage of a streamed chat completion."""
    stream = await client.chat.completions.create(model="tinychat", stream=True, **kwargs)
    deltas, finishes, usage = [], [], None
    async for chunk in stream:
        for c in chunk.choices:
            if c.delta.content:
                deltas.append(c.delta.content)
            if c.finish_reason:
                finishes.append(c.finish_reason)
        usage = chunk.usage or usage
    return deltas, finishes, usage


async def test_stop_sequences_cut_the_answer_streamed_or_not(cluster: Cluster) -> None:
    client = client_of(cluster)
    whole = await client.chat.completions.create(model="tinychat", messages=CHAT, max_tokens=12)
    content = whole.choices[0].message.content
    assert whole.choices[0].finish_reason == "length" and content
    # a stop sequence across two tokens: the end of one word, the space, the next word's start
    words = content.split(" ")
    at = len(" ".join(words[: len(words) // 2]))
    stop = content[at - 2 : at + 3]
    cut = content.find(stop)
    assert cut > 0 and " " in stop, (content, stop)
    stops = ["\u2603never\u2603", stop]
    stopped = await client.chat.completions.create(
        model="tinychat", messages=CHAT, max_tokens=12, stop=stops
    )
    assert stopped.choices[0].message.content == content[:cut]
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens < whole.usage.completion_tokens
    deltas, finishes, _ = await _chat_stream(client, messages=CHAT, max_tokens=12, stop=stops)
    assert "".join(deltas) == content[:cut] and len(deltas) > 1
    # the text before the last token ended with the stop's beginning: it was held back, or
    # the deltas would add up to more than the cut text
    assert not any(stop in d for d in deltas)
    assert finishes == ["stop"]
    one, _, _ = await _chat_stream(client, messages=CHAT, max_tokens=12, stop=stop)  # one string
    assert "".join(one) == content[:cut]


async def test_repetition_penalty_reaches_the_engine(cluster: Cluster) -> None:
    client = client_of(cluster)
    # below 1 it favours tokens already seen: the tiny model's answer then repeats itself
    penalized = await client.chat.completions.create(
        model="tinychat",
        messages=CHAT,
        max_tokens=12,
        extra_body={"repetition_penalty": 0.5},
        frequency_penalty=0,
        presence_penalty=0.0,
    )
    async with Producer(settings=cluster.settings) as producer:
        jobs = [
            await producer.submit("tinychat", "generate", [CHAT], max_new_tokens=12, **extra)
            for extra in ({"repetition_penalty": 0.5}, {})
        ]
        (direct,), (plain,) = [await producer.result(job, 120) for job in jobs]
    assert penalized.choices[0].message.content == direct["text"] != plain["text"]


def test_a_stream_is_server_sent_events_ending_with_done(cluster: Cluster) -> None:
    body = {"model": "tinychat", "messages": CHAT, "max_tokens": 4, "stream": True}
    url = cluster.gateways[0].url + "/v1/chat/completions"
    with httpx.stream("POST", url, json=body, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0][6:])
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"]["role"] == "assistant"
