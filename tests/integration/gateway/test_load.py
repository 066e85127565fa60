"""Load: 200 concurrent streaming chats through httpx against one gateway and two worker
processes (the tiny chat model). Every stream ends in a full answer or a 429 with
``Retry-After`` (the queue is capped at 120 jobs so both happen), and the gateway's memory
stays bounded: its peak RSS is measured from /proc while the streams run.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sw_core.local.redis_server import RedisServer
from tests.support.gateway import Cluster, running_cluster, tinychat_chunked  # noqa: F401

STREAMS = 200
MAX_TOKENS = 12
QUEUE_CAP = 120
#: Growth of the gateway's RSS allowed over its idle size while 200 streams are open.
RSS_GROWTH_LIMIT_KIB = 150 * 1024


@pytest.fixture
def cluster(
    redis_server: RedisServer,
    tinychat_chunked: Path,  # noqa: F811
    tmp_path: Path,
) -> Iterator[Cluster]:
    with running_cluster(
        redis_server.url,
        f"tinychat={tinychat_chunked}",
        tmp_path,
        workers=2,
        max_queued_jobs=QUEUE_CAP,
    ) as cluster:
        yield cluster


async def one_chat(client: httpx.AsyncClient, i: int) -> tuple[int, str, dict | None]:
    """(status, answer, final chunk) of one streamed chat."""
    body = {
        "model": "tinychat",
        "messages": [{"role": "user", "content": f"Question number {i}: what is the sea?"}],
        "max_tokens": MAX_TOKENS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            assert response.status_code == 429, response.text
            assert response.headers["retry-after"] == "1"
            assert response.json()["error"]["code"] == "queue_full"
            return 429, "", None
        text, final, lines = "", None, []
        async for line in response.aiter_lines():
            if not line or line.startswith(":"):  # SSE comments: the gateway's keep-alives
                continue
            lines.append(line)
            if line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            if not chunk["choices"]:  # the usage chunk, last
                assert final is not None
                final["usage"] = chunk["usage"]
                continue
            choice = chunk["choices"][0]
            text += choice["delta"].get("content") or ""
            if choice["finish_reason"]:
                final = chunk
        assert lines[-1] == "data: [DONE]"
        return 200, text, final


@pytest.mark.slow
async def test_200_concurrent_streams_end_in_an_answer_or_429(cluster: Cluster) -> None:
    gateway = cluster.gateways[0]
    idle_kib, _ = gateway.rss_kib()
    peak = [idle_kib]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], gateway.rss_kib()[0])
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    limits = httpx.Limits(max_connections=STREAMS + 10, max_keepalive_connections=STREAMS)
    started = time.monotonic()
    try:
        async with httpx.AsyncClient(base_url=gateway.url, limits=limits, timeout=300) as client:
            outcomes = await asyncio.gather(*(one_chat(client, i) for i in range(STREAMS)))
    finally:
        stop.set()
        sampler.join(5)
    elapsed = time.monotonic() - started
    answered = [o for o in outcomes if o[0] == 200]
    refused = [o for o in outcomes if o[0] == 429]
    assert len(answered) + len(refused) == STREAMS
    assert len(answered) >= QUEUE_CAP // 2 and refused, (len(answered), len(refused))
    for _, text, final in answered:
        assert final is not None and text
        usage = final["usage"]
        assert final["choices"][0]["finish_reason"] in ("stop", "length")
        if final["choices"][0]["finish_reason"] == "length":
            assert usage["completion_tokens"] == MAX_TOKENS
    growth = peak[0] - idle_kib
    print(
        f"\n{STREAMS} streams in {elapsed:.1f} s: {len(answered)} answered, {len(refused)} "
        f"x 429; gateway RSS idle {idle_kib / 1024:.0f} MiB, peak {peak[0] / 1024:.0f} MiB "
        f"(+{growth / 1024:.0f} MiB)"
    )
    assert growth < RSS_GROWTH_LIMIT_KIB
    status = httpx.get(gateway.url + "/api/status").json()["gateway"]
    assert status["open_requests"] == 0
