"""Hostile and careless requests against a real gateway, Redis and inference worker: each
attempt of the review that found the gateway's defects, replayed, with the safe outcome.

- unauthenticated random paths do not grow the gateway's memory (< 5 MB over 10,000);
- bad input (no text, too long, undecodable) is a 400, queues nothing, counts no error;
- fields the gateway cannot serve are refused by name; harmless values of them pass;
- embedding usage counts the tokens that ran; the access log names keys by id only.
"""

from __future__ import annotations

import asyncio
import json
import random
import string
from typing import Any

import httpx
import openai
import pytest
import redis

from sw_core.keys import Keys
from tests.support.gateway import (  # noqa: F401
    Cluster,
    cluster_fixture,
    raw_requests,
    tinychat_chunked,
)

CHAT = [{"role": "user", "content": "What is the capital of France?"}]
KEY = "hostile-test-key-0123456789"
#: Growth of the keyed gateway's RSS allowed over 10,000 unauthenticated random paths.
RSS_GROWTH_LIMIT_KIB = 5 * 1024

#: One inference worker and one keyless gateway for the whole module.
cluster = cluster_fixture("tinychat", "hostile-requests")


def pipeline_state(cluster: Cluster) -> tuple[int, int, int, int]:
    """(entries in the jobs stream, requests counted, errors counted, dead letters)."""
    keys = Keys(cluster.settings.key_prefix)
    client = redis.Redis.from_url(cluster.settings.redis_url)
    try:
        stats = client.hgetall(keys.stats)
        count = lambda name: int(stats.get(name.encode(), 0))  # noqa: E731
        return (
            client.xlen(keys.jobs),
            count("total_requests"),
            count("errors"),
            client.xlen(keys.dlq),
        )
    finally:
        client.close()


def post(cluster: Cluster, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    url = cluster.gateways[0].url + path
    return httpx.post(url, content=content, headers=headers, timeout=60, **kwargs)


def refused(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


async def test_random_unauthenticated_paths_do_not_grow_memory(cluster: Cluster) -> None:
    """The review's attack: many distinct long paths, no key (it grew RSS by 70 MB in 6,000
    requests and /api/status to 144 MB)."""
    gateway = cluster.start_gateway("gateway-rss", SW_API_KEYS=KEY)
    rng = random.Random(21)

    def attack(n: int) -> list[str]:
        out = []
        for i in range(n):
            word = "".join(rng.choices(string.ascii_letters + string.digits, k=12))
            prefix = rng.choice(["/v1/", "/v1/models/", "/api/", "/", "/v1/chat/"])
            method = rng.choice(["GET", "POST"])
            out.append(f"{method} {prefix}{i}{word}" + "x" * 4000)  # each path different
        return out

    await raw_requests(gateway.port, attack(1000))  # warm up: allocator arenas, buffers
    before_kib, _ = gateway.rss_kib()
    statuses = await raw_requests(gateway.port, attack(10_000))
    after_kib, _ = gateway.rss_kib()
    auth = {"Authorization": f"Bearer {KEY}"}
    status = httpx.get(gateway.url + "/api/status", headers=auth)
    metrics = httpx.get(gateway.url + "/metrics", headers=auth)
    growth = after_kib - before_kib
    print(
        f"\nkeyed gateway RSS {before_kib / 1024:.1f} -> {after_kib / 1024:.1f} MiB "
        f"(+{growth / 1024:.2f} MiB) over 10,000 random 4 KB paths"
    )
    assert set(statuses) <= {401, 404}, set(statuses)  # a key first, always
    assert statuses.count(401) > 7000  # /v1, /api: 401 before routing; others 404
    assert growth < RSS_GROWTH_LIMIT_KIB, growth
    assert status.status_code == 200 and len(status.content) < 64 << 10
    routes = status.json()["gateway"]["by_route"]
    assert set(routes) <= {"unmatched", "/healthz", "/api/status"}, routes
    assert len(metrics.content) < 64 << 10 and metrics.text.count("route=") < 100


async def test_bad_input_is_refused_before_anything_is_queued(cluster: Cluster) -> None:
    before = pipeline_state(cluster)
    long_prompt = "The sea is wide and deep. " * 120  # about 840 tokens: over 512
    cases = [
        (
            "/v1/chat/completions",
            {"model": "tinychat", "messages": [{"role": "user", "content": ""}]},
            "messages",
        ),
        (
            "/v1/chat/completions",
            {"model": "tinychat", "messages": [{"role": "user", "content": None}]},
            "messages",
        ),
        (
            "/v1/chat/completions",
            {
                "model": "tinychat",
                "messages": [
                    {"role": "system", "content": " "},
                    {"role": "user", "content": [{"type": "text", "text": "\n"}]},
                ],
            },
            "messages",
        ),
        ("/v1/completions", {"model": "tinychat", "prompt": "   "}, "prompt"),
        ("/v1/embeddings", {"model": "minilm", "input": ["ok", " "]}, "input"),
        ("/v1/completions", {"model": "tinychat", "prompt": long_prompt}, "prompt"),
        (
            "/v1/chat/completions",
            {"model": "tinychat", "messages": [{"role": "user", "content": long_prompt}]},
            "messages",
        ),
        (
            "/v1/completions",
            {"model": "tinychat", "prompt": "The sea " * 100, "max_tokens": 400},
            "prompt",
        ),
    ]
    for path, body, param in cases:
        error = refused(post(cluster, path, body))
        assert error["param"] == param, (body, error)
        assert error["type"] == "invalid_request_error"
    assert "accepts at most 512" in refused(post(cluster, *cases[5][:2]))["message"]
    assert "positions" in refused(post(cluster, *cases[7][:2]))["message"]
    assert pipeline_state(cluster) == before  # nothing queued, nothing counted as an error
    # a hand-made entry without text still dead-letters, with its reason
    client = redis.Redis.from_url(cluster.settings.redis_url)
    keys = Keys(cluster.settings.key_prefix)
    try:
        client.xadd(keys.jobs, {"model": "tinychat", "task": "generate", "text": "  "})
        for _ in range(200):
            letters = client.xrange(keys.dlq)
            if letters:
                break
            await asyncio.sleep(0.05)
        letter = {k.decode(): v.decode(errors="replace") for k, v in letters[-1][1].items()}
    finally:
        client.close()
    assert letter["reason"] == "malformed" and "not only whitespace" in letter["error"]


async def test_text_that_is_not_valid_unicode_is_a_400(cluster: Cluster) -> None:
    before = pipeline_state(cluster)
    bodies = [
        b'{"model": "tinychat", "messages": [{"role": "user", "content": "x\\ud800"}]}',
        b'{"model": "tinychat\\udfff", "messages": [{"role": "user", "content": "x"}]}',
        b'{"model": "tinychat", "prompt": "ab", "stop": ["\\ud83d"]}',
        b'{"model": "minilm", "input": "ab\xff\xfecd"}',  # not UTF-8 at all
    ]
    for path, body in zip(
        ["/v1/chat/completions", "/v1/chat/completions", "/v1/completions", "/v1/embeddings"],
        bodies,
        strict=True,
    ):
        error = refused(post(cluster, path, body))
        assert "Unicode" in error["message"] or "JSON" in error["message"], error
    assert pipeline_state(cluster) == before
    assert "Traceback" not in cluster.gateways[0].log()


async def test_fields_the_gateway_cannot_serve_are_refused_by_name(cluster: Cluster) -> None:
    client = openai.AsyncOpenAI(
        base_url=cluster.gateways[0].url + "/v1", api_key="unused", max_retries=0, timeout=120
    )
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    asks = {
        "tools": [tool],
        "tool_choice": "required",
        "logit_bias": {"50256": -100},
    }  # (logprobs, n, the penalties and response_format are served: test_openai_features.py)
    before = pipeline_state(cluster)
    try:
        for field, value in asks.items():
            with pytest.raises(openai.BadRequestError) as caught:
                await client.chat.completions.create(
                    model="tinychat", messages=CHAT, max_tokens=2, **{field: value}
                )
            assert caught.value.body["param"] == field, caught.value.body
            assert caught.value.code == "unsupported_parameter"
            assert f"'{field}'" in caught.value.message
        for field, value in {"echo": True, "suffix": "end", "best_of": 3}.items():
            with pytest.raises(openai.BadRequestError) as caught:
                await client.completions.create(
                    model="tinychat", prompt="x", max_tokens=2, **{field: value}
                )
            assert caught.value.body["param"] == field
        with pytest.raises(openai.BadRequestError, match="'dimensions'"):
            await client.embeddings.create(model="minilm", input="x", dimensions=8)
        assert pipeline_state(cluster) == before
        # what asks for nothing passes: empty tools, false logprobs, n=1, zero penalties
        harmless = await client.chat.completions.create(
            model="tinychat",
            messages=CHAT,
            max_tokens=2,
            tools=[],
            logprobs=False,
            n=1,
            top_logprobs=0,
            response_format={"type": "text"},
            frequency_penalty=0,
            presence_penalty=0.0,
            logit_bias={},
            tool_choice="none",
        )
        assert harmless.choices[0].message.content is not None
    finally:
        await client.close()


async def test_embedding_usage_counts_the_tokens_that_ran(cluster: Cluster) -> None:
    client = openai.AsyncOpenAI(
        base_url=cluster.gateways[0].url + "/v1", api_key="unused", max_retries=0, timeout=120
    )
    try:
        long = await client.embeddings.create(model="minilm", input="word " * 2000)
        both = await client.embeddings.create(model="minilm", input=["word " * 2000, "hi"])
    finally:
        await client.close()
    assert long.usage.prompt_tokens == 256  # cut to MiniLM's max_seq_length, as it ran
    assert both.usage.prompt_tokens == 256 + 3  # [CLS] hi [SEP]


def test_the_access_log_names_keys_by_id_and_metrics_need_one(cluster: Cluster) -> None:
    gateway = cluster.start_gateway("gateway-log", SW_API_KEYS=f"other-key-abc,{KEY}")
    auth = {"Authorization": f"Bearer {KEY}"}
    ok = httpx.post(
        gateway.url + "/v1/chat/completions",
        headers=auth,
        timeout=120,
        json={"model": "tinychat", "messages": CHAT, "max_tokens": 3},
    )
    assert ok.status_code == 200
    assert httpx.get(gateway.url + "/metrics").status_code == 401
    metrics = httpx.get(gateway.url + "/metrics", headers=auth)
    assert metrics.status_code == 200
    assert (
        'sw_gateway_requests_total{method="POST",route="/v1/chat/completions",status="200"} 1.0'
        in metrics.text
    )
    assert "sw_gateway_open_requests 0.0" in metrics.text
    assert "sw_gateway_request_duration_seconds_bucket" in metrics.text
    log = gateway.log()
    [line] = [x for x in log.splitlines() if "POST /v1/chat/completions 200" in x]
    usage = ok.json()["usage"]
    assert "model=tinychat" in line and "key=key2" in line
    assert f"tokens={usage['prompt_tokens']}+{usage['completion_tokens']}" in line
    assert "duration=" in line
    assert KEY not in log and "other-key-abc" not in log
    assert "GET /metrics 401" in log
