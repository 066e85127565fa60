"""Continuous batching and token streaming with real worker processes and real Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from producer import Producer
from tests.support.serving import (
    TinyChat,
    events_of,
    first_token,
    reference_tokens,
    serving_settings,
    text_after_last_restart,
    workers,
)

pytestmark = pytest.mark.slow


async def test_a_job_joins_while_another_generates(
    redis_url: str, tiny_chat: TinyChat, tmp_path: Path
) -> None:
    settings = serving_settings(redis_url, tiny_chat)
    prompts = {"long": ("Tell me a long story about the sea.", 200), "short": ("Hi!", 12)}
    with workers(settings, tmp_path):
        async with Producer(settings=settings) as producer:
            long_id = await producer.submit(
                "tiny", "generate", [prompts["long"][0]], max_new_tokens=prompts["long"][1]
            )
            seen = [e async for e in first_token(producer, long_id)]
            assert seen[-1]["type"] == "token", seen
            short_id = await producer.submit(
                "tiny", "generate", [prompts["short"][0]], max_new_tokens=prompts["short"][1]
            )
            long_events, short_events = await asyncio.gather(
                events_of(producer, long_id), events_of(producer, short_id)
            )
            results = {
                "long": await producer.result(long_id, timeout_s=60),
                "short": await producer.result(short_id, timeout_s=60),
            }
    long_end = next(e for e in long_events if e["type"] == "end")
    short_end = next(e for e in short_events if e["type"] == "end")
    # the short job joined after the long one started and left before the long one ended
    assert long_end["joined_step"] < short_end["joined_step"] < long_end["step"]
    assert short_end["step"] < long_end["step"]
    assert short_end["step"] - short_end["joined_step"] + 1 == short_end["completion_tokens"]
    for name, events in (("long", long_events), ("short", short_events)):
        [result] = results[name]
        assert result["token_ids"] == reference_tokens(tiny_chat, *prompts[name]), name
        assert text_after_last_restart(events) == result["text"], name
        steps = [e["step"] for e in events if e["type"] == "token"]
        assert steps == sorted(steps) and len(steps) >= 2, name
        final = events[-1]
        assert final["type"] == "final" and final["status"] == "done", final
        assert final["finish_reason"] == result["finish_reason"]
        assert final["completion_tokens"] == len(result["token_ids"])
        assert final["prompt_tokens"] == result["prompt_tokens"]
