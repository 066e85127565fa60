"""Queue Redis clients: Sentinel options from the settings, and submits that wait for replicas."""

from __future__ import annotations

import time

import pytest
import redis

from producer import Producer
from sw_core.cache import ChunkCache
from sw_core.exceptions import ConfigError, NotReplicatedError
from sw_core.keys import Keys
from sw_core.queue_redis import master_connection_kwargs, queue_redis_sync, sentinel_addresses
from sw_core.settings import Settings
from workers.arq_redis import arq_redis_settings

KEYS = Keys("sw")


def test_sentinel_settings_reach_every_kind_of_client() -> None:
    settings = Settings.from_env(
        {},
        redis_url="rediss://:pw-9@ignored:1/2?ssl_ca_certs=/ca.pem",
        redis_sentinels="10.0.0.1:26379, 10.0.0.2:26380",
        redis_master_name="sw-queues",
    )
    assert sentinel_addresses(settings) == [("10.0.0.1", 26379), ("10.0.0.2", 26380)]
    kwargs = master_connection_kwargs(settings)
    assert kwargs["password"] == "pw-9" and kwargs["db"] == 2 and kwargs["ssl"] is True
    assert kwargs["ssl_ca_certs"] == "/ca.pem" and "host" not in kwargs
    arq = arq_redis_settings(settings)
    assert arq.sentinel and arq.sentinel_master == "sw-queues"
    assert arq.host == [("10.0.0.1", 26379), ("10.0.0.2", 26380)]
    assert (arq.password, arq.database, arq.ssl, arq.ssl_ca_certs) == ("pw-9", 2, True, "/ca.pem")
    client = queue_redis_sync(settings)
    assert client.connection_pool.service_name == "sw-queues"
    client.close()
    with ChunkCache.from_settings(settings) as cache:  # no cache URL: the queues' master
        assert cache.redis.connection_pool.service_name == "sw-queues"
    with ChunkCache.from_settings(settings.replace(cache_redis_url="redis://c:1/0")) as cache:
        assert cache.redis.connection_pool.connection_kwargs["host"] == "c"
    with pytest.raises(ConfigError, match="host:port"):
        sentinel_addresses(settings.replace(redis_sentinels="10.0.0.1"))


async def test_a_submit_that_waits_for_a_missing_replica_is_refused(redis_url: str) -> None:
    settings = Settings.from_env(
        {},
        redis_url=redis_url,
        submit_wait_replicas=1,
        submit_wait_timeout_ms=200,
        models="m=/srv/m",  # submits check the model
    )
    async with Producer(settings=settings) as producer:
        started = time.monotonic()
        with pytest.raises(NotReplicatedError, match="0 of 1 replicas"):
            await producer.submit("m", "embed", ["x"])
        assert time.monotonic() - started >= 0.19  # WAIT blocked for its timeout
    client = redis.Redis.from_url(redis_url)
    try:  # the job is queued on the master all the same (the error says so)
        assert client.xlen(KEYS.jobs) == 1
        entry = client.xrange(KEYS.jobs)[0][1]
        assert client.hget(KEYS.job(entry[b"job_id"].decode()), "status") == b"queued"
    finally:
        client.close()


async def test_without_waiting_a_submit_is_one_transaction(redis_url: str) -> None:
    settings = Settings.from_env({}, redis_url=redis_url, models="m=/srv/m")
    async with Producer(settings=settings) as producer:
        job_id = await producer.submit("m", "embed", ["x"])
        assert (await producer.status(job_id))["status"] == "queued"
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.xlen(KEYS.jobs) == 1 and client.hget(KEYS.stats, "total_requests") == b"1"
        assert 0 < client.ttl(KEYS.job(job_id)) <= settings.result_ttl_s
    finally:
        client.close()
