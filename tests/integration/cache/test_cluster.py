"""The chunk cache sharded over a real Redis Cluster of three masters on loopback.

The fixture starts three ``redis-server --cluster-enabled yes`` (Debian's 7.0 in CI) and joins
them with ``redis-cli --cluster create``; every shard's keys share one hash tag, so each Lua
call stays on one node. Also: the sharded cache on one server (a cluster of one).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sw_core.cache import ChunkCache
from sw_core.cache.shards import shard_of
from sw_core.chunks.manifest import ChunkInfo
from sw_core.engine.io.sources import CachedChunkSource
from sw_core.exceptions import CacheError, ChunkTooLargeError
from sw_core.keys import Keys, keys_of_cache_shard
from sw_core.local.redis_server import RedisServer
from sw_core.settings import Settings
from sw_core.storage.filesystem import FilesystemBackend
from tests.support.cli import redis_cli_binary

KIB = 1 << 10
MIB = 1 << 20
SHARDS = 16
CLUSTER_ARGS = [
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "1000",
    "--cluster-require-full-coverage",
    "no",
]


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too; Redis wants it <= 55535."""
    for _ in range(200):
        port = random.randrange(20_000, 45_000)
        try:
            for candidate in (port, port + 10_000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


class LocalCluster:
    """Three cluster-enabled masters on loopback, joined by ``redis-cli --cluster create``."""

    def __init__(self, root: Path, masters: int = 3) -> None:
        self.nodes = []
        for n in range(masters):
            (root / f"node{n}").mkdir(parents=True)
            self.nodes.append(
                RedisServer(
                    port=_cluster_port(), workdir=root / f"node{n}", extra_args=CLUSTER_ARGS
                )
            )

    def start(self) -> LocalCluster:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        created = subprocess.run(
            [
                redis_cli_binary(),
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=60,
        )
        if created.returncode != 0:
            raise RuntimeError(created.stdout.decode() + created.stderr.decode())
        deadline = time.monotonic() + 30
        while not all(self._state_ok(node) for node in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok in 30 s")
            time.sleep(0.1)
        return self

    @staticmethod
    def _state_ok(node: RedisServer) -> bool:
        with redis.Redis(port=node.port) as client:
            return b"cluster_state:ok" in client.execute_command("CLUSTER", "INFO")

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def close(self) -> None:
        for node in self.nodes:
            node.cleanup()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    if shutil.which("redis-cli") is None and not _in_ci():
        pytest.skip("no redis-cli on PATH (apt-get install redis-tools; CI installs it)")
    group = LocalCluster(tmp_path / "cluster")
    try:
        group.start()
        yield group
    finally:
        group.close()


def chunks(count: int, size_bytes: int, seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    out = {}
    for _ in range(count):
        data = rng.randbytes(size_bytes)
        out[hashlib.sha256(data).hexdigest()] = data
    return out


def cluster_cache(cluster: LocalCluster, cache_mb: int) -> ChunkCache:
    settings = Settings.from_env(
        {},
        cache_redis_url=cluster.url,
        cache_cluster=True,
        cache_shards=SHARDS,
        cache_size_mb=cache_mb,
        cache_part_mb=1,
        timeout_seconds=5,
    )
    return ChunkCache.from_settings(settings)


def part_bytes_by_node(cluster: LocalCluster) -> list[int]:
    totals = []
    for node in cluster.nodes:
        with redis.Redis(port=node.port) as client:
            keys = list(client.scan_iter(match="sw:cache:*:part:*"))
            totals.append(sum(client.strlen(k) for k in keys))
    return totals


def test_chunks_spread_over_all_three_masters(cluster: LocalCluster) -> None:
    data = chunks(48, 100 * KIB, seed=1)
    with cluster_cache(cluster, cache_mb=64) as cache:
        for chunk_id, blob in data.items():
            assert cache.put(chunk_id, blob)
        for chunk_id, blob in data.items():
            assert bytes(cache.get(chunk_id)) == blob
        info = cache.info()
    assert info.chunks == 48 and info.used_bytes == 48 * 100 * KIB and info.hits == 48
    per_node = part_bytes_by_node(cluster)
    assert all(b > 0 for b in per_node), per_node
    assert sum(per_node) == 48 * 100 * KIB


def test_eviction_keeps_each_shards_budget(cluster: LocalCluster) -> None:
    data = chunks(160, 200 * KIB, seed=2)  # 31 MiB into a 16 MiB cache of 1 MiB shards
    with cluster_cache(cluster, cache_mb=16) as cache:
        for chunk_id, blob in data.items():
            cache.put(chunk_id, blob)
        shard_budget = cache.shard_budget_bytes
        per_shard = [cache.shard_info(n) for n in range(SHARDS)]
        info = cache.info()
        present = [c for c in data if cache.contains(c)]
        for chunk_id in present:
            assert bytes(cache.get(chunk_id)) == data[chunk_id]
    assert shard_budget == MIB
    assert all(0 < used <= shard_budget for used, *_ in per_shard), per_shard
    assert info.evictions > 0 and info.used_bytes <= 16 * MIB
    assert info.used_bytes == len(present) * 200 * KIB == sum(part_bytes_by_node(cluster))
    # every shard evicted on its own: each still holds as many chunks as fit its budget
    assert all(chunks_n == shard_budget // (200 * KIB) for *_, chunks_n in per_shard)


def test_a_killed_master_turns_its_shards_reads_into_storage_loads(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    data = chunks(40, 64 * KIB, seed=3)
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    infos = []
    for n, (chunk_id, blob) in enumerate(data.items()):
        (store_dir / f"c{n}.bin").write_bytes(blob)
        infos.append(
            ChunkInfo(f"c{n}", f"c{n}.bin", len(blob), chunk_id, ["w"], "block", "layers", n)
        )
    cache = cluster_cache(cluster, cache_mb=64)
    store = FilesystemBackend(store_dir, timeout_s=5)

    async def fetch_all(source: CachedChunkSource) -> list[bytes]:
        return [bytes(await source.fetch(info)) for info in infos]

    try:
        for chunk_id, blob in data.items():
            cache.put(chunk_id, blob)
        victim = cluster.nodes[2]
        victim_slots = _owned_slots(victim)
        dead = {
            c
            for c in data
            if redis.crc.key_slot(
                keys_of_cache_shard(Keys("sw"), shard_of(c, SHARDS)).cache_lru.encode()
            )
            in victim_slots
        }
        assert 0 < len(dead) < len(data)
        victim.stop(kill=True)

        source = CachedChunkSource(cache, store)
        got = asyncio.run(fetch_all(source))
        assert got == list(data.values())  # never wrong bytes
        assert source.cache_misses == len(dead)  # the dead shards' reads: loaded from storage
        assert source.cache_hits == len(data) - len(dead)
        for chunk_id in dead:
            with pytest.raises(CacheError):
                cache.get(chunk_id)
    finally:
        cache.close()
        asyncio.run(store.close())


def _owned_slots(node: RedisServer) -> set[int]:
    with redis.Redis(port=node.port) as client:
        node_id = client.execute_command("CLUSTER", "MYID").decode()
        slots: set[int] = set()
        for start, end, *owners in client.execute_command("CLUSTER", "SLOTS"):
            if owners[0][2].decode() == node_id:
                slots.update(range(start, end + 1))
    return slots


def test_one_server_is_a_cluster_of_one(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    cache = ChunkCache(client, keys=Keys("sw"), cache_size_bytes=4 * MIB, shards=4)
    data = chunks(24, 300 * KIB, seed=4)
    for chunk_id, blob in data.items():
        cache.put(chunk_id, blob)
    per_shard = [cache.shard_info(n) for n in range(4)]
    assert all(0 < used <= MIB for used, *_ in per_shard), per_shard
    present = [c for c in data if cache.contains(c)]
    assert all(bytes(cache.get(c)) == data[c] for c in present)
    assert cache.info().used_bytes == len(present) * 300 * KIB
    big_id, big = next(iter(chunks(1, MIB + 1, seed=5).items()))
    with pytest.raises(ChunkTooLargeError, match="SW_CACHE_SHARDS=4"):
        cache.put(big_id, big)
    cache.clear()
    assert cache.info().chunks == 0 and client.keys("sw:cache:*:part:*") == []
    client.close()
