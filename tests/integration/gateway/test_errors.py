"""The HTTP gateway's errors, each from a real condition, seen by the official ``openai``
client: a bad body, an unknown model, a body over the limit, a wrong key, a gateway at its
open-request bound, a worker that hangs (deadline), a full queue, a deployment with no
worker at all and a client that goes away. A real ``sw serve`` process, a real Redis and a
real inference worker process with all-MiniLM-L6-v2 and a tiny chat model.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
import redis

from producer import Producer
from tests.support.gateway import (  # noqa: F401
    Cluster,
    client_of,
    close_open_clients,
    cluster_fixture,
    queued,
    tinychat_chunked,
)

CHAT = [{"role": "user", "content": "What is the capital of France?"}]

#: One inference worker and one keyless gateway for the whole module.
cluster = cluster_fixture("tinychat", "gateway-errors")


@pytest.fixture(autouse=True)
async def close_clients() -> AsyncIterator[None]:
    yield
    await close_open_clients()


async def test_invalid_requests_are_400_and_queue_nothing(cluster: Cluster) -> None:
    client = client_of(cluster)
    before = queued(cluster)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="tinychat", messages=[])
    assert caught.value.status_code == 400
    assert "messages" in caught.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="'n' must be an integer from 1 to 16"):
        await client.chat.completions.create(model="tinychat", messages=CHAT, n=17)
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
    with pytest.raises(openai.BadRequestError, match="'frequency_penalty' must be a number"):
        await client.chat.completions.create(model="tinychat", messages=CHAT, frequency_penalty=2.5)
    with pytest.raises(openai.BadRequestError, match="'presence_penalty' must be a number"):
        await client.completions.create(model="tinychat", prompt="x", presence_penalty=-3)
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
