"""Text a job cannot run is refused before anything is queued: a lone surrogate or an
undecodable byte (Producer: JobError, not msgpack's UnicodeEncodeError; ``sw submit``: one
line, exit 2), a prompt, embed text or chat without any text. An entry added by hand with
such text still dead-letters with its reason. ``sw result`` has its own exit status for a
cancelled and an expired job."""

from __future__ import annotations

import subprocess

import pytest
import redis.asyncio as aioredis

from producer import Producer
from sw_core.cli import main
from sw_core.cli.pipeline_cmds import EXIT_CANCELLED, EXIT_EXPIRED
from sw_core.exceptions import JobError
from tests.support.cli import sw_command
from tests.support.handlers import EchoHandler
from tests.support.observe import KEYS, dead_letters
from tests.support.pipeline import consumers
from tests.support.processes import REPO, worker_env
from tests.support.settings import fast_settings
from tests.support.waiting import wait_until

CHAT_WITHOUT_TEXT = [{"role": "system", "content": ""}, {"role": "user", "content": " \n"}]


@pytest.mark.parametrize(
    ("task", "inputs", "params", "refusal"),
    [
        ("embed", ["x\ud800"], {}, r"inputs\[0\] is not valid Unicode text: character 1"),
        ("generate", [[{"role": "user", "content": "a\udcff"}]], {}, "not valid Unicode"),
        ("generate", ["hi"], {"stop": ["\ud83d"]}, r"params\['stop'\]\[0\] is not valid"),
        ("generate", ["   "], {}, "not only whitespace"),
        ("generate", [CHAT_WITHOUT_TEXT], {}, "the chat holds no text"),
        ("embed", ["ok", "\t"], {}, "input 1 of an embed job must be a non-empty string"),
    ],
)
async def test_the_producer_refuses_text_a_job_cannot_run(
    redis_url: str,
    redis_client: aioredis.Redis,
    task: str,
    inputs: list,
    params: dict,
    refusal: str,
) -> None:
    async with Producer(settings=fast_settings(redis_url)) as producer:
        with pytest.raises(JobError, match=refusal):
            await producer.submit("m1", task, inputs, **params)
    assert await redis_client.xlen(KEYS.jobs) == 0
    assert not await redis_client.hget(KEYS.stats, "total_requests")


def test_sw_submit_with_an_undecodable_byte_says_so_in_one_line(redis_url: str) -> None:
    settings = fast_settings(redis_url)
    argv = [*sw_command(), "submit", "m1", "--task", "embed", "--text"]
    done = subprocess.run(
        [*(a.encode() for a in argv), b"ab\xffcd"],  # as bash passes $'ab\xffcd'
        cwd=REPO,
        env=worker_env(settings),
        capture_output=True,
        timeout=60,
    )
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("sw submit: JobError: inputs[0] is not valid Unicode text"), err
    assert done.stdout == b""


async def test_a_hand_added_entry_without_text_dead_letters_with_its_reason(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    settings = fast_settings(redis_url)
    async with consumers(settings, [EchoHandler(settings)]):
        await redis_client.xadd(KEYS.jobs, {"model": "m1", "task": "generate", "text": "  "})
        letters = await wait_until_letters(redis_client)
    assert letters[0]["reason"] == "malformed" and letters[0]["error_type"] == "JobError"
    assert "not only whitespace" in letters[0]["error"]


async def wait_until_letters(redis_client: aioredis.Redis) -> list[dict[str, str]]:
    found: list[dict[str, str]] = []

    async def some() -> bool:
        found[:] = await dead_letters(redis_client)
        return bool(found)

    await wait_until(some, 10, "a dead letter")
    return found


def test_sw_result_exits_6_for_cancelled_and_7_for_expired(redis_url: str, capsys) -> None:
    import asyncio

    settings = fast_settings(redis_url)

    async def two_jobs() -> tuple[str, str]:
        async with Producer(settings=settings) as producer:  # no worker: both stay queued
            cancelled = await producer.submit("m1", "embed", ["a"])
            await producer.cancel(cancelled)
            expired = await producer.submit("m1", "embed", ["b"])
            await producer.redis.hset(KEYS.job(expired), "status", "expired")  # as a worker
        return cancelled, expired

    cancelled, expired = asyncio.run(two_jobs())
    for job_id, status in ((cancelled, EXIT_CANCELLED), (expired, EXIT_EXPIRED)):
        for wait in ([], ["--wait", "--timeout", "5"]):
            assert main(["result", job_id, "--redis-url", redis_url, *wait]) == status
    assert (EXIT_CANCELLED, EXIT_EXPIRED) == (6, 7)
    capsys.readouterr()
