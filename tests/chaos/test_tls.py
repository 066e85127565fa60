"""Scenario 8b: TLS to Redis for real -- a ``rediss://`` server with certificates made here.

A throwaway CA (``trustme``) signs a certificate for 127.0.0.1; redis-server listens with TLS
on one port (its plain port is used only to see that it started). Producer and worker
processes (arq pool, consumer, chunk loader and chunk cache) run the pipeline over
``rediss://...?ssl_ca_certs=<ca>``; a client that trusts another CA, or none, is refused.

Skipped only where the server binary has no TLS *and* this is not CI: in CI (``CI=true``,
where Debian's TLS-capable redis-server is installed) a missing capability fails.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import trustme

from producer import Producer
from sw_core.cache import ChunkCache
from sw_core.local.redis_server import RedisServer, free_port
from sw_core.settings import Settings
from tests.chaos.report import Figures
from tests.support.observe import KEYS
from tests.support.processes import Cluster, worker_env
from tests.support.settings import CHAOS, fast_settings
from tests.support.storage import write_chunk_set

pytestmark = [pytest.mark.chaos]


@dataclass
class TlsRedis:
    server: RedisServer
    tls_port: int
    ca_file: Path
    other_ca_file: Path

    def url(self, ca_file: Path | None) -> str:
        query = f"?ssl_cert_reqs=required&ssl_ca_certs={ca_file}" if ca_file else ""
        return f"rediss://127.0.0.1:{self.tls_port}/0{query}"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    ca, other_ca = trustme.CA(), trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "other-ca", "cert", "key")}
    ca.cert_pem.write_to_path(files["ca"])
    other_ca.cert_pem.write_to_path(files["other-ca"])
    cert.private_key_pem.write_to_path(files["key"])
    files["cert"].write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    tls_port = free_port()
    server = RedisServer(
        workdir=tmp_path / "redis",
        extra_args=[
            "--tls-port",
            str(tls_port),
            "--tls-cert-file",
            str(files["cert"]),
            "--tls-key-file",
            str(files["key"]),
            "--tls-ca-cert-file",
            str(files["ca"]),
            "--tls-auth-clients",
            "no",
        ],
    )
    server.workdir.mkdir(parents=True)
    try:
        server.start(timeout_s=10)
    except Exception as exc:
        if _in_ci():
            pytest.fail(f"CI needs a TLS-capable redis-server ({server.binary}): {exc}")
        pytest.skip(f"{server.binary} has no TLS support (not CI): {exc}")
    try:
        yield TlsRedis(server, tls_port, files["ca"], files["other-ca"])
    finally:
        server.cleanup()


def test_clients_that_do_not_trust_the_servers_ca_are_refused(tls_redis: TlsRedis) -> None:
    good = redis.Redis.from_url(tls_redis.url(tls_redis.ca_file), socket_timeout=5)
    assert good.ping()
    assert good.connection_pool.connection_class is redis.connection.SSLConnection
    good.close()
    for ca_file in (tls_redis.other_ca_file, None):
        client = redis.Redis.from_url(tls_redis.url(ca_file), socket_timeout=5)
        with pytest.raises(redis.ConnectionError) as caught:
            client.ping()
        assert "certificate verify failed" in str(caught.value), caught.value
        client.close()
    plain = redis.Redis(host="127.0.0.1", port=tls_redis.tls_port, socket_timeout=3)
    with pytest.raises(redis.RedisError):  # the TLS port speaks nothing but TLS
        plain.ping()
    plain.close()


async def test_a_producer_with_the_wrong_ca_is_refused(tls_redis: TlsRedis) -> None:
    settings = Settings.from_env({}, redis_url=tls_redis.url(tls_redis.other_ca_file))
    async with Producer(settings=settings) as producer:
        with pytest.raises(Exception) as caught:
            await producer.submit("m1", "embed", ["x"])
    assert isinstance(caught.value.__cause__ or caught.value, (ssl.SSLError, redis.RedisError))
    assert "certificate verify failed" in str(caught.value), repr(caught.value)


async def test_producer_and_workers_run_the_pipeline_over_tls(
    tls_redis: TlsRedis, tmp_path: Path, figures
) -> None:
    """The worker's arq pool dropped the URL's ``ssl_ca_certs`` (arq's ``from_dsn``), so
    its loader could not verify a private CA while producer and cache could."""
    started = time.monotonic()
    write_chunk_set(tmp_path / "tiny", n_chunks=2)  # loaders load (and cache) over TLS too
    url = tls_redis.url(tls_redis.ca_file)
    settings = fast_settings(url, CHAOS, models=f"tiny={tmp_path / 'tiny'}")
    group = Cluster(tmp_path / "logs")
    group.log_dir.mkdir()
    try:
        group.add("tls", worker_env(settings, SW_HANDLER="tests.support.handlers:ChunkHandler"))
        client = redis.asyncio.Redis.from_url(url)
        try:
            await group.wait_registered(client, KEYS, 60)
            await asyncio.sleep(0.5)
            assert group["tls"].alive, group.logs()
            async with Producer(settings=settings) as producer:
                job_ids = [await producer.submit("tiny", "embed", [f"t{i}"]) for i in range(3)]
                results = [await producer.result(j, timeout_s=30) for j in job_ids]
            with ChunkCache.from_settings(settings) as cache:
                cached = cache.info().chunks
        finally:
            await client.aclose()
    finally:
        group.close()
    assert [r["job_id"] for r in results] == job_ids
    assert cached == 2, "the loader did not cache the chunks over TLS"
    figures(
        Figures(
            scenario="8b TLS",
            produced=3,
            completed=3,
            notes=(
                "rediss:// with a CA made in the test: producer, worker (arq pool, consumer, "
                "loader, chunk cache) over TLS; another CA or none refused"
            ),
            duration_s=time.monotonic() - started,
        )
    )
