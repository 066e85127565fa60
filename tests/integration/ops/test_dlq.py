"""Dead letters: a real outage, the real worker, and ``sw dlq`` list/show/replay/purge."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import threading
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from producer import Producer
from sw_core.exceptions import JobError, StorageError
from sw_core.keys import Keys
from sw_core.local.redis_server import free_port
from sw_core.pipeline.dlq import DeadLetterQueue
from sw_core.pipeline.jobs import decode_entry
from sw_core.pipeline.store import JobStore
from sw_core.settings import Settings
from tests.support.cli import run_sw, run_sw_here
from tests.support.processes import worker_logs, workers
from tests.support.settings import OPS, fast_settings
from tests.support.storage import make_chunk_set

KEYS = Keys("sw")


async def test_dead_letter_replayed_after_the_outage_completes(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """S3 is down: the job dead-letters. S3 comes back with the model: the replay completes."""
    from minio import Minio
    from moto.server import ThreadedMotoServer

    from sw_core.local.redis_server import RedisServer

    port = free_port()
    with RedisServer() as server:
        settings = fast_settings(
            server.url,
            OPS,
            s3_endpoint=f"127.0.0.1:{port}",
            s3_access_key="testing",
            s3_secret_key="testing",
            retry_attempts=1,
        )
        client = redis.Redis.from_url(server.url)
        client.hset(KEYS.models, "smodel", "s3://sw-replay/smodel")
        manifest = make_chunk_set(tmp_path / "smodel", name="smodel")
        moto = None
        with workers(settings, tmp_path, "inference"):
            async with Producer(settings=settings) as producer:
                job_id = await producer.submit(model="smodel", task="embed", inputs=["hello"])
                with pytest.raises(StorageError):
                    await producer.result(job_id, timeout_s=60)
                rc, out, err = run_sw_here(["dlq", "list", "--json"], settings, monkeypatch, capsys)
                assert rc == 0, err
                letters = json.loads(out)
                assert [(x["job_id"], x["error_type"], x["reason"]) for x in letters] == [
                    (job_id, "StorageError", "retries_exhausted")
                ]
                letter_id = letters[0]["id"]

                # the fault goes away: S3 answers on that port and holds the model
                moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
                moto.start()
                try:
                    s3 = Minio(
                        f"127.0.0.1:{port}", "testing", "testing", secure=False, region="us-east-1"
                    )
                    s3.make_bucket("sw-replay")
                    for path in (tmp_path / "smodel").iterdir():
                        data = path.read_bytes()
                        s3.put_object(
                            "sw-replay", f"smodel/{path.name}", io.BytesIO(data), len(data)
                        )

                    replayed = run_sw(["dlq", "replay", letter_id], settings)
                    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
                    assert "replay #1" in replayed.stdout
                    try:
                        result = await producer.result(job_id, timeout_s=60)
                    except Exception as exc:
                        raise AssertionError(f"{exc}\n{worker_logs(tmp_path)}") from None
                    assert result == {
                        "chunks": len(manifest.chunks),
                        "bytes": sum(c.size_bytes for c in manifest.chunks),
                    }
                    status = await producer.status(job_id)
                finally:
                    moto.stop()
        assert status["status"] == "done" and status["replays"] == "1"
        assert client.xlen(KEYS.dlq) == 0
        stats = {k.decode(): int(v) for k, v in client.hgetall(KEYS.stats).items()}
        assert stats["total_requests"] == 1  # a replay is not a new request
        assert stats["completed"] == 1 and stats["dead_lettered"] == 1
        rc, _, err = run_sw_here(["dlq", "replay", letter_id], settings, monkeypatch, capsys)
        assert rc == 1 and "no dead letter" in err
        client.close()


# ---------------------------------------------------------------------------- without workers
async def dead_letters(settings: Settings, texts: list[str]) -> list[str]:
    """Submit jobs and dead-letter them through the pipeline's own JobStore; returns job ids."""
    redis_client = aioredis.Redis.from_url(settings.redis_url)
    store = JobStore(redis_client, settings)
    await store.ensure_group()
    known = dataclasses.replace(settings, models="m=/srv/m")  # the producer checks the model
    async with Producer(settings=known) as producer:
        ids = [await producer.submit(model="m", task="embed", inputs=[t]) for t in texts]
    entries = await store.read("tester", ">", len(texts), None)
    for entry_id, fields in entries:
        job = decode_entry(entry_id, fields, settings)
        await store.dead_letter_job(job, "ModelError", "no such model", "permanent", "tester")
    await redis_client.aclose()
    return ids


def dlq_of(settings: Settings) -> DeadLetterQueue:
    return DeadLetterQueue(redis.Redis.from_url(settings.redis_url), settings)


async def test_list_show_and_replay_keep_the_job(redis_url: str) -> None:
    settings = fast_settings(redis_url, OPS)
    ids = await dead_letters(settings, ["first text", "second text"])
    dlq = dlq_of(settings)
    letters = dlq.list()
    assert [x.job_id for x in letters] == ids
    shown = run_sw(["dlq", "show", letters[0].id, "--json"], settings)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["payload"] == {"inputs": ["first text"], "params": {}}
    assert data["error_type"] == "ModelError" and data["reason"] == "permanent"

    new_id, replays = dlq.replay(letters[0].id)
    assert replays == 1
    client = redis.Redis.from_url(redis_url)
    ((entry_id, fields),) = client.xrange(KEYS.jobs, new_id, new_id)
    job = decode_entry(entry_id, fields, settings)
    assert (job.job_id, job.attempt, job.inputs, job.counted) == (ids[0], 1, ["first text"], True)
    assert client.hget(KEYS.job(ids[0]), "status") == b"queued"
    assert client.exists(KEYS.job_done(ids[0])) == 0
    assert [x.job_id for x in dlq.list()] == [ids[1]]
    with pytest.raises(JobError, match="no dead letter"):
        dlq.replay(letters[0].id)
    client.close()


async def test_concurrent_replays_of_one_letter_add_one_job(redis_url: str) -> None:
    settings = fast_settings(redis_url, OPS)
    await dead_letters(settings, ["only once"])
    letter_id = dlq_of(settings).list()[0].id
    outcomes: list[str] = []

    def replay() -> None:
        try:
            dlq_of(settings).replay(letter_id)
            outcomes.append("ok")
        except JobError:
            outcomes.append("refused")

    threads = [threading.Thread(target=replay) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client = redis.Redis.from_url(redis_url)
    assert outcomes.count("ok") == 1 and outcomes.count("refused") == 7
    assert client.xlen(KEYS.jobs) == 1  # the dead-lettered entry was acked and deleted
    client.close()


async def test_malformed_letters_are_not_replayed(redis_url: str, monkeypatch, capsys) -> None:
    settings = fast_settings(redis_url, OPS)
    await dead_letters(settings, ["fine"])
    redis_client = aioredis.Redis.from_url(redis_url)
    store = JobStore(redis_client, settings)
    await redis_client.xadd(KEYS.jobs, {"model": "m", "task": "embed"})
    ((entry_id, fields),) = await store.read("tester", ">", 1, None)
    await store.dead_letter_raw(
        entry_id, {k.decode(): v for k, v in fields.items()}, "JobError", "no inputs", "tester"
    )
    await redis_client.aclose()
    rc, out, err = run_sw_here(["dlq", "replay", "--all"], settings, monkeypatch, capsys)
    assert rc == 0, err
    assert "1 replayed, 1 left" in out and "malformed" in err
    letters = dlq_of(settings).list()
    assert [x.reason for x in letters] == ["malformed"]
    rc, _, err = run_sw_here(["dlq", "replay", letters[0].id], settings, monkeypatch, capsys)
    assert rc == 1 and "cannot be replayed" in err
    rc, out, _ = run_sw_here(
        ["dlq", "replay", letters[0].id, "--json"], settings, monkeypatch, capsys
    )
    report = json.loads(out)
    assert rc == 1 and report["replayed"] == [] and report["skipped"] == []
    assert [row["id"] for row in report["failed"]] == [letters[0].id]
    assert "cannot be replayed" in report["failed"][0]["error"]
    rc, out, _ = run_sw_here(["dlq", "replay", "--all", "--json"], settings, monkeypatch, capsys)
    report = json.loads(out)
    assert rc == 0 and report["replayed"] == [] and report["failed"] == []
    assert [row["id"] for row in report["skipped"]] == [letters[0].id]
    assert "malformed" in report["skipped"][0]["reason"]


async def test_replay_json_names_each_new_jobs_entry(redis_url: str, monkeypatch, capsys) -> None:
    settings = fast_settings(redis_url, OPS)
    await dead_letters(settings, ["a", "b"])
    letters = dlq_of(settings).list()
    ids = [x.id for x in letters]
    rc, out, err = run_sw_here(["dlq", "replay", *ids, "--json"], settings, monkeypatch, capsys)
    assert rc == 0, err
    report = json.loads(out)
    assert [row["id"] for row in report["replayed"]] == ids
    assert all(row["replays"] == 1 for row in report["replayed"])
    client = redis.Redis.from_url(redis_url)
    entries = [e.decode() for e, _ in client.xrange(KEYS.jobs)]
    client.close()
    assert sorted(row["job_entry"] for row in report["replayed"]) == sorted(entries)


async def test_purge_needs_confirmation(redis_url: str, monkeypatch, capsys) -> None:
    settings = fast_settings(redis_url, OPS)
    await dead_letters(settings, ["a", "b", "c"])
    client = redis.Redis.from_url(redis_url)

    def purge(*flags: str, stdin: str = "") -> tuple[int, str, str]:
        return run_sw_here(["dlq", "purge", *flags], settings, monkeypatch, capsys, stdin=stdin)

    rc, _, err = purge()  # stdin at its end: nobody can answer
    assert rc == 1 and "refusing" in err and client.xlen(KEYS.dlq) == 3
    rc, _, err = purge(stdin="no\n")
    assert rc == 1 and "not confirmed" in err and client.xlen(KEYS.dlq) == 3

    rc, out, err = purge(stdin="yes\n")
    assert rc == 0, err
    assert "purged 3" in out and client.xlen(KEYS.dlq) == 0

    await dead_letters(settings, ["d"])
    rc, out, _ = purge("--yes")
    assert rc == 0 and "purged 1" in out and client.xlen(KEYS.dlq) == 0
    rc, out, _ = purge("--yes")
    assert rc == 0 and "no dead letters" in out
    client.close()


def test_purge_refuses_without_any_stdin(redis_url: str) -> None:
    settings = fast_settings(redis_url, OPS)
    asyncio.run(dead_letters(settings, ["kept"]))
    result = run_sw(["dlq", "purge"], settings)  # stdin is /dev/null
    assert result.returncode == 1 and "refusing" in result.stderr
    assert dlq_of(settings).count() == 1


async def test_purge_keeps_letters_newer_than_the_confirmation(redis_url: str) -> None:
    settings = fast_settings(redis_url, OPS)
    await dead_letters(settings, ["seen 1", "seen 2"])
    dlq = dlq_of(settings)
    seen_up_to = dlq.last_id()
    await dead_letters(settings, ["arrived later"])
    assert dlq.purge(seen_up_to) == 2
    assert [x.payload()["inputs"] for x in dlq.list()] == [["arrived later"]]
