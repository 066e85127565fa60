"""The HTTP gateway driven by the official ``openai`` client: a real ``sw serve`` process, a
real Redis and a real inference worker process with all-MiniLM-L6-v2 and a tiny chat model.

Every error status comes from a real condition: a bad body, an unknown model, a body over
the limit, a wrong key, a gateway at its open-request bound, a worker that hangs (deadline)
and a deployment with no worker at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import redis

from producer import Producer
from sw_core.keys import Keys
from tests.support.gateway import Cluster, cluster_fixture, tinychat_chunked  # noqa: F401
from tests.support.models import ChunkedModel

TEXTS = ["A man plays a guitar.", "Someone is playing an instrument.", "The stock market fell."]
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


#: One inference worker and one keyless gateway for the whole module.
cluster = cluster_fixture("tinychat", "gateway")


OPEN_CLIENTS: list[openai.AsyncOpenAI] = []


def client_of(cluster: Cluster, index: int = 0, key: str = "unused") -> openai.AsyncOpenAI:
    """An openai client of gateway ``index``, closed after the test."""
    client = openai.AsyncOpenAI(
        base_url=cluster.gateways[index].url + "/v1", api_key=key, max_retries=0, timeout=120
    )
    OPEN_CLIENTS.append(client)
    return client


@pytest.fixture(autouse=True)
async def close_clients() -> AsyncIterator[None]:
    yield
    while OPEN_CLIENTS:
        await OPEN_CLIENTS.pop().close()


def queued(cluster: Cluster) -> int:
    client = redis.Redis.from_url(cluster.settings.redis_url)
    try:
        return client.xlen(Keys(cluster.settings.key_prefix).jobs)
    finally:
        client.close()


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
    plain = [c async for c in await client.chat.completions.create(
        model="tinychat", messages=CHAT, max_tokens=4, stream=True)]  # fmt: skip
    assert all(c.usage is None for c in plain) and plain[-1].choices[0].finish_reason
    asked = [c async for c in await client.chat.completions.create(
        model="tinychat", messages=CHAT, max_tokens=4, stream=True,
        stream_options={"include_usage": True})]  # fmt: skip
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
        model="tinychat", messages=CHAT, max_tokens=12, extra_body={"repetition_penalty": 0.5},
        frequency_penalty=0, presence_penalty=0.0,
    )  # fmt: skip
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


# ---------------------------------------------------------------------------- errors
async def test_invalid_requests_are_400_and_queue_nothing(cluster: Cluster) -> None:
    client = client_of(cluster)
    before = queued(cluster)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="tinychat", messages=[])
    assert caught.value.status_code == 400
    assert "messages" in caught.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="'n' must be 1"):
        await client.chat.completions.create(model="tinychat", messages=CHAT, n=2)
    with pytest.raises(openai.BadRequestError, match="max_new_tokens"):  # over the job limit
        await client.chat.completions.create(model="tinychat", messages=CHAT, max_tokens=10**6)
    with pytest.raises(openai.BadRequestError, match="'stop' holds 5 strings; at most 4"):
        await client.chat.completions.create(
            model="tinychat", messages=CHAT, stop=["a", "b", "c", "d", "e"]
        )
    with pytest.raises(openai.BadRequestError, match="'stop' must hold strings only"):
        await client.chat.completions.create(model="tinychat", messages=CHAT, stop=["a", 1])
    with pytest.raises(openai.BadRequestError, match="'stop' must be a string or a list"):
        await client.completions.create(model="tinychat", prompt="x", stop=5)
    with pytest.raises(openai.BadRequestError, match="'frequency_penalty' is not supported"):
        await client.chat.completions.create(model="tinychat", messages=CHAT, frequency_penalty=0.5)
    with pytest.raises(openai.BadRequestError, match="'presence_penalty' is not supported"):
        await client.completions.create(model="tinychat", prompt="x", presence_penalty=-1)
    raw = httpx.post(cluster.gateways[0].url + "/v1/embeddings", content=b"{not json")
    assert raw.status_code == 400
    assert set(raw.json()["error"]) == {"message", "type", "param", "code"}
    assert raw.json()["error"]["type"] == "invalid_request_error"
    assert queued(cluster) == before


async def test_unknown_model_is_404(cluster: Cluster) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client_of(cluster).chat.completions.create(model="gpt-4o", messages=CHAT)
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        await client_of(cluster).embeddings.create(model="nope", input="x")


async def test_oversized_body_is_413(cluster: Cluster) -> None:
    big = "word " * (cluster.settings.max_payload_bytes // 4)
    before = queued(cluster)
    with pytest.raises(openai.APIStatusError) as caught:
        await client_of(cluster).embeddings.create(model="minilm", input=big)
    assert caught.value.status_code == 413
    assert caught.value.code == "request_too_large"

    def chunked():  # no Content-Length: the limit holds while the body is read
        yield b'{"model": "minilm", "input": "'
        for _ in range(cluster.settings.max_payload_bytes // 65536 + 2):
            yield b"x" * 65536
        yield b'"}'

    url = cluster.gateways[0].url + "/v1/embeddings"
    response = httpx.post(url, content=chunked(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert queued(cluster) == before


async def test_keys_are_required_when_configured(cluster: Cluster) -> None:
    cluster.start_gateway("gateway-keys", SW_API_KEYS="first-key, second-key-xyz")
    with pytest.raises(openai.AuthenticationError) as caught:
        await client_of(cluster, 1, key="wrong").models.list()
    assert caught.value.code == "invalid_api_key"
    missing = httpx.get(cluster.gateways[1].url + "/v1/models")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    assert httpx.get(cluster.gateways[1].url + "/api/status").status_code == 401
    assert httpx.get(cluster.gateways[1].url + "/healthz").status_code == 200
    models = await client_of(cluster, 1, key="second-key-xyz").models.list()
    assert len(models.data) == 2
    chat = await client_of(cluster, 1, key="first-key").chat.completions.create(
        model="tinychat", messages=CHAT, max_tokens=2
    )
    assert chat.choices[0].message.content is not None
    log = cluster.gateways[1].log()
    assert "API keys required" in log
    assert "first-key" not in log and "second-key" not in log


async def test_no_inference_worker_is_503(cluster: Cluster) -> None:
    # A deployment (key prefix) where no inference worker heartbeats.
    gateway = cluster.start_gateway("gateway-empty", SW_KEY_PREFIX="nobody")
    assert httpx.get(gateway.url + "/readyz").status_code == 503
    client = client_of(cluster, len(cluster.gateways) - 1)
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model="tinychat", messages=CHAT)
    assert caught.value.status_code == 503 and caught.value.code == "no_worker"
    redis_client = redis.Redis.from_url(cluster.settings.redis_url)
    try:
        assert redis_client.xlen("nobody:jobs") == 0
    finally:
        redis_client.close()


async def test_busy_gateway_is_429_and_a_hung_worker_504(cluster: Cluster) -> None:
    gateway = cluster.start_gateway(
        "gateway-small", SW_GATEWAY_MAX_STREAMS="1", SW_GATEWAY_TIMEOUT_S="3"
    )
    client = client_of(cluster, len(cluster.gateways) - 1)
    worker = cluster.workers[0]
    os.killpg(worker.pid, signal.SIGSTOP)  # the worker hangs (its heartbeat is still fresh)
    try:
        first = asyncio.create_task(
            client.chat.completions.create(model="tinychat", messages=CHAT, max_tokens=2)
        )
        for _ in range(100):
            status = httpx.get(gateway.url + "/api/status").json()
            if status["gateway"]["open_requests"] == 1:
                break
            await asyncio.sleep(0.05)
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model="tinychat", messages=CHAT, max_tokens=2)
        assert caught.value.status_code == 429
        assert caught.value.response.headers["retry-after"] == "1"
        with pytest.raises(openai.APIStatusError) as late:
            await first
        assert late.value.status_code == 504
        assert late.value.code == "deadline_exceeded"
    finally:
        os.killpg(worker.pid, signal.SIGCONT)
    counters = httpx.get(gateway.url + "/api/status").json()["gateway"]
    errors = {k: v for k, v in counters["by_status"].items() if int(k) >= 400}
    assert errors == {"429": 1, "504": 1} and counters["open_requests"] == 0
    assert counters["by_route"]["/v1/chat/completions"] == 2  # the route, as a template
    # the worker came back: the module's gateway (no short deadline) is served again
    ok = await client_of(cluster).chat.completions.create(
        model="tinychat", messages=CHAT, max_tokens=2
    )
    assert ok.choices[0].message.content is not None


async def test_full_queue_is_429(cluster: Cluster) -> None:
    gateway = cluster.start_gateway(
        "gateway-queue", SW_MAX_QUEUED_JOBS="1", SW_GATEWAY_TIMEOUT_S="3"
    )
    client = client_of(cluster, len(cluster.gateways) - 1)
    worker = cluster.workers[0]
    os.killpg(worker.pid, signal.SIGSTOP)  # nothing leaves the queue
    try:
        first = asyncio.create_task(
            client.chat.completions.create(model="tinychat", messages=CHAT, max_tokens=2)
        )
        for _ in range(100):
            if (
                queued(cluster)
                and httpx.get(gateway.url + "/api/status").json()["gateway"]["open_requests"]
            ):
                break
            await asyncio.sleep(0.05)
        with pytest.raises(openai.RateLimitError) as caught:
            await client.embeddings.create(model="minilm", input="one more")
        assert caught.value.code == "queue_full"
        assert "SW_MAX_QUEUED_JOBS=1" in caught.value.message
        assert caught.value.response.headers["retry-after"] == "1"
        with pytest.raises(openai.APIStatusError) as late:
            await first
        assert late.value.status_code == 504
    finally:
        os.killpg(worker.pid, signal.SIGCONT)


async def test_a_client_that_goes_away_cancels_its_job(cluster: Cluster) -> None:
    worker = cluster.workers[0]
    body = {"model": "tinychat", "messages": CHAT, "max_tokens": 8, "stream": True}
    url = cluster.gateways[0].url + "/v1/chat/completions"
    os.killpg(worker.pid, signal.SIGSTOP)  # the job waits in the queue
    try:
        with httpx.stream("POST", url, json=body, timeout=30) as response:
            first = next(line for line in response.iter_lines() if line)
        queued_job = json.loads(first[6:])["id"].removeprefix("chatcmpl-")
        assert await status_becomes(cluster, queued_job, "cancelled")
    finally:
        os.killpg(worker.pid, signal.SIGCONT)

    # a job that is generating stops between two steps
    body["max_tokens"] = 400
    with httpx.stream("POST", url, json=body, timeout=60) as response:
        lines = (line for line in response.iter_lines() if line.startswith("data: {"))
        running_job = json.loads(next(lines)[6:])["id"].removeprefix("chatcmpl-")
        for line in lines:
            if json.loads(line[6:])["choices"][0]["delta"].get("content"):
                break  # the first token came: leave
    assert await status_becomes(cluster, running_job, "cancelled")
    async with Producer(settings=cluster.settings) as producer:
        tokens = await producer.redis.xlen(producer.keys.job_tokens(running_job))
    assert tokens < 400


async def status_becomes(cluster: Cluster, job_id: str, wanted: str, timeout_s: float = 10) -> bool:
    async with Producer(settings=cluster.settings) as producer:
        for _ in range(int(timeout_s / 0.05)):
            status = (await producer.status(job_id))["status"]
            if status == wanted:
                return True
            await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} is {status}, not {wanted}")
