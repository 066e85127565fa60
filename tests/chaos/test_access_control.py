"""Scenario 8: access control -- wrong passwords, ACL users on another prefix, TLS URLs.

A Redis with ``requirepass`` and ACL users. Producers and worker processes given a wrong
password, no password, or a user whose ACL covers another key prefix must be refused with
an error that says authentication/permission -- a worker exits non-zero with a clear line,
not a stack trace -- and a refused password must not be retried as if it were a network
blip. A user restricted to the deployment's prefix (as ``sw_core.keys`` documents) must be
enough to run the pipeline. ``rediss://`` URLs build TLS connections everywhere (the TLS
handshake itself is tested in ``test_tls.py``).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from producer import Producer
from sw_core.exceptions import is_transient
from sw_core.local.redis_server import RedisServer
from sw_core.settings import Settings
from tests.chaos.report import Figures
from tests.support.observe import KEYS
from tests.support.processes import Cluster, WorkerProcess, worker_env
from tests.support.settings import CHAOS, fast_settings
from tests.support.storage import write_chunk_set

pytestmark = [pytest.mark.chaos]

PASSWORD = "right-pw-7f3a"
#: What a clear refusal says (any of these words).
CLEAR = re.compile(r"authenticat|password|permission|NOAUTH|NOPERM|ACL", re.I)


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir=tmp_path / "locked", password=PASSWORD)
    server.workdir.mkdir(parents=True, exist_ok=True)
    with server:
        admin = redis.Redis.from_url(server.url)
        admin.execute_command("ACL", "SETUSER", "other", "on", ">other-pw", "~other:*", "+@all")
        admin.execute_command(
            "ACL", "SETUSER", "swonly", "on", ">sw-pw", "~sw:*", "~arq:*", "&*", "+@all"
        )
        admin.close()
        yield server


def _url(server: RedisServer, auth: str) -> str:
    return f"redis://{auth}127.0.0.1:{server.port}/0"


CASES = {
    "no password": "",
    "wrong password": ":wrong-pw@",
    "user of another prefix": "other:other-pw@",
}


@pytest.mark.parametrize("case", list(CASES))
async def test_a_producer_is_refused_with_a_clear_error(locked_redis, case: str) -> None:
    settings = Settings.from_env({}, redis_url=_url(locked_redis, CASES[case]))
    async with Producer(settings=settings) as producer:
        with pytest.raises(Exception) as caught:
            await producer.submit("m1", "embed", ["x"])
    assert CLEAR.search(str(caught.value)), f"{type(caught.value).__name__}: {caught.value}"
    assert "wrong-pw" not in str(caught.value) and "other-pw" not in str(caught.value)


def test_a_refused_password_is_not_retried_as_a_connection_blip() -> None:
    """redis-py's AuthenticationError subclasses ConnectionError, so is_transient() said
    True: a wrong password was retried with backoff (arq retried it 5 times, the worker's
    Redis steps 4 times) instead of failing at once with the configuration error."""
    assert not is_transient(redis.exceptions.AuthenticationError("invalid password"))
    assert not is_transient(redis.exceptions.AuthenticationWrongNumberOfArgsError("x"))
    assert not is_transient(redis.exceptions.NoPermissionError("NOPERM"))
    assert is_transient(redis.exceptions.ConnectionError("Connection reset by peer"))


@pytest.mark.parametrize("case", ["wrong password", "user of another prefix"])
async def test_a_worker_is_refused_with_one_clear_line_not_a_stack_trace(
    locked_redis, tmp_path: Path, case: str
) -> None:
    settings = fast_settings(_url(locked_redis, CASES[case]), CHAOS, models="m1=/srv/m1")
    worker = WorkerProcess(worker_env(settings), tmp_path / "refused.log", name="refused").start()
    try:
        code = await asyncio.to_thread(worker.wait, 60)
    except subprocess.TimeoutExpired:
        worker.kill()
        pytest.fail(f"the worker kept running with {case}:\n{worker.log_text()[-2000:]}")
    log = worker.log_text()
    assert code != 0
    assert CLEAR.search(log), log[-2000:]
    assert "Traceback" not in log, f"a stack trace instead of a clear error:\n{log[-2500:]}"


async def test_a_user_restricted_to_the_deployment_prefix_can_run_the_pipeline(
    locked_redis, tmp_path: Path, figures
) -> None:
    """An ACL user limited to the deployment's keys (``~sw:*``) and arq's (``~arq:*``, where
    arq keeps the loaders' job state) runs the whole pipeline, as the README documents."""
    started = time.monotonic()
    write_chunk_set(tmp_path / "tiny", n_chunks=2)  # jobs load chunks: loaders' arq jobs run
    settings = fast_settings(
        _url(locked_redis, "swonly:sw-pw@"), CHAOS, models=f"tiny={tmp_path / 'tiny'}"
    )
    group = Cluster(tmp_path / "logs")
    group.log_dir.mkdir()
    try:
        group.add("scoped", worker_env(settings, SW_HANDLER="tests.support.handlers:ChunkHandler"))
        client = redis.asyncio.Redis.from_url(locked_redis.url)
        try:
            await group.wait_registered(client, KEYS, 60)
            await asyncio.sleep(1.0)  # a few arq polls of its queue
            assert group["scoped"].alive, group.logs()
            async with Producer(settings=settings) as producer:
                job_id = await producer.submit("tiny", "embed", ["scoped"])
                result = await producer.result(job_id, timeout_s=30)
        finally:
            await client.aclose()
    finally:
        group.close()
    assert result["job_id"] == job_id
    figures(
        Figures(
            scenario="8 access control",
            produced=1,
            completed=1,
            notes=(
                "no/wrong password and an ACL user of another prefix refused (producer and "
                "worker) with authentication/permission errors; a user limited to ~sw:* ~arq:* "
                "runs the pipeline; rediss:// builds TLS clients (handshakes: scenario 8b)"
            ),
            duration_s=time.monotonic() - started,
        )
    )


async def test_rediss_urls_build_tls_connections_everywhere() -> None:
    from arq.connections import RedisSettings
    from redis.asyncio.connection import SSLConnection as AsyncSSLConnection

    from sw_core.cache import ChunkCache
    from workers.node import worker_options

    url = "rediss://:secret-pw@redis.example.com:6380/0"
    settings = Settings.from_env({}, redis_url=url)
    assert settings.redis_url == url
    assert "secret-pw" not in repr(settings)
    async with Producer(settings=settings) as producer:  # nothing connects until a command
        assert producer.redis.connection_pool.connection_class is AsyncSSLConnection
    cache = ChunkCache.from_settings(settings)
    try:
        assert cache.redis.connection_pool.connection_class is redis.connection.SSLConnection
    finally:
        cache.close()
    options = worker_options(settings, inference=True)
    assert isinstance(options["redis_settings"], RedisSettings)
    assert options["redis_settings"].ssl is True
    assert options["redis_settings"].port == 6380
