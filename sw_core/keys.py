"""Every Redis key name Surfing Weights uses, in one place.

All keys start with the configurable prefix (``sw`` by default), so one Redis can host
several deployments and an ACL can restrict a user to ``~sw:* ~arq:*`` (arq keeps the
chunk loaders' job state in its own global ``arq:*`` keys). Operators inspect them with
``redis-cli`` (see the key table in docs/operations.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

#: Width of the slot window a cache shard's hash tag is searched in (see :func:`cache_shard_tag`).
_TAG_WINDOW_SLOTS = 64


@lru_cache(maxsize=4096)
def cache_shard_tag(shard: int) -> str:
    """The hash tag of one chunk-cache shard (``s<shard>-<n>``), the same for any shard count.

    Every key of a shard carries ``{tag}``, so Redis Cluster puts them in one slot and each
    Lua call stays on one node. Shard ``i``'s tag is the first ``s<i>-<n>`` whose slot lies
    near ``vdc(i) * 16384`` (``vdc``: the base-2 van der Corput sequence 0, 1/2, 1/4, 3/4,
    1/8 ...), so the first ``N`` shards spread evenly over the slot range -- and over the
    masters of a cluster, which own equal slot ranges -- whatever ``N`` is.
    """
    if shard < 0:
        raise ValueError(f"a cache shard is >= 0, got {shard}")
    fraction, scale, rest = 0.0, 0.5, shard
    while rest:
        fraction += scale * (rest & 1)
        rest >>= 1
        scale /= 2
    start = int(fraction * REDIS_CLUSTER_HASH_SLOTS)
    n = 0
    while True:
        tag = f"s{shard}-{n}"
        if 0 <= key_slot(tag.encode()) - start < _TAG_WINDOW_SLOTS:
            return tag
        n += 1


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix; the ``cache_*`` names are those of shard ``cache_shard``."""

    prefix: str = "sw"
    #: The chunk-cache shard whose key names the ``cache_*`` members give.
    cache_shard: int = 0

    # ---------------------------------------------------------------- job pipeline
    @property
    def jobs(self) -> str:
        """Stream of submitted jobs (``XADD``), read through :attr:`jobs_group`."""
        return f"{self.prefix}:jobs"

    @property
    def jobs_group(self) -> str:
        """Consumer group of the inference workers on :attr:`jobs`."""
        return "sw-workers"

    @property
    def dlq(self) -> str:
        """Stream of dead letters: payload, error type, message, attempts, worker, times."""
        return f"{self.prefix}:dlq"

    @property
    def retries(self) -> str:
        """Sorted set of jobs waiting for a retry, scored by due time (ms since epoch)."""
        return f"{self.prefix}:retries"

    def retry_job(self, job_id: str) -> str:
        """Hash with the stream fields of a job waiting in :attr:`retries` (re-added when due)."""
        return f"{self.prefix}:retry:{job_id}"

    def job(self, job_id: str) -> str:
        """Hash with one job's status, attempts, result or error (expires after the result TTL)."""
        return f"{self.prefix}:job:{job_id}"

    def job_done(self, job_id: str) -> str:
        """List pushed once when a job ends, so waiters can ``BLPOP`` instead of polling."""
        return f"{self.prefix}:job:{job_id}:done"

    def job_tokens(self, job_id: str) -> str:
        """Stream of a generate job's events: ``start`` (each attempt), ``token`` (text
        deltas), ``end`` (one per input) and ``final``; capped, expires with the result."""
        return f"{self.prefix}:job:{job_id}:tokens"

    # ---------------------------------------------------------------- models
    @property
    def models(self) -> str:
        """Hash: model name -> where its chunks live (``s3://bucket/prefix`` or a folder)."""
        return f"{self.prefix}:models"

    @property
    def model_tasks(self) -> str:
        """Hash: model name -> the tasks it can run (``embed,forward``), from its manifest."""
        return f"{self.prefix}:model-tasks"

    @property
    def model_synthetic(self) -> str:
        """Hash: model name -> what its random weights imitate (``synthetic: random weights
        of the llama-3-8b shape (seed 0)``), for chunk sets written by ``sw synth``."""
        return f"{self.prefix}:model-synthetic"

    # ---------------------------------------------------------------- counters and workers
    @property
    def stats(self) -> str:
        """Hash of counters: ``total_requests``, ``errors``, ``errors:<Type>``, cache and storage."""
        return f"{self.prefix}:stats"

    @property
    def stats_models(self) -> str:
        """Hash of per-model job counters: ``completed:<model>``, ``failed:<model>``, ..."""
        return f"{self.stats}:models"

    @property
    def stats_sweeps(self) -> str:
        """Hash of per-model sweep counters: ``sweeps:<model>``, ``reads:<model>``,
        ``hits:<model>``, ``bytes:<model>``, ``hit_bytes:<model>``."""
        return f"{self.stats}:sweeps"

    def stats_window(self, bucket: int) -> str:
        """Hash of ``total_requests`` and ``errors`` counted in one 10-second bucket
        (``unix seconds // 10``), kept a day: the windowed alert reads the recent ones."""
        return f"{self.stats}:w:{bucket}"

    def latency(self, task: str) -> str:
        """Hash of latency histogram buckets for one task."""
        return f"{self.prefix}:latency:{task}"

    @property
    def latency_tasks(self) -> str:
        """Set of the task names that have a :meth:`latency` histogram."""
        return f"{self.prefix}:latency-tasks"

    @property
    def workers(self) -> str:
        """Sorted set of worker ids scored by last heartbeat (ms since epoch)."""
        return f"{self.prefix}:workers"

    def worker(self, worker_id: str) -> str:
        """Hash describing one worker (kind, host, pid, current job); expires with its heartbeat."""
        return f"{self.prefix}:worker:{worker_id}"

    # ---------------------------------------------------------------- chunk cache
    @property
    def cache_shard_prefix(self) -> str:
        """Start of every key of this cache shard: ``<prefix>:cache:{<tag>}:``."""
        return f"{self.prefix}:cache:{{{cache_shard_tag(self.cache_shard)}}}:"

    @property
    def cache_lru(self) -> str:
        """Sorted set of the shard's cached chunk ids scored by a logical clock of last use."""
        return f"{self.cache_shard_prefix}lru"

    @property
    def cache_meta(self) -> str:
        """Hash of the shard's accounting: ``bytes``, ``clock``, ``hits``, ``misses``,
        ``evictions``, ``corruptions``, ``refusals``, ``ticks``."""
        return f"{self.cache_shard_prefix}meta"

    @property
    def cache_freq(self) -> str:
        """Hash of the shard's use counts: chunk id -> counted lookups (cached or not) in
        the recent window; halved every aging window. Admission compares them."""
        return f"{self.cache_shard_prefix}freq"

    def cache_part(self, chunk_id: str, part: int) -> str:
        """One part (at most ``cache_part_mb``) of a cached chunk's bytes."""
        return f"{self.cache_part_prefix}{chunk_id}:{part}"

    def cache_info(self, chunk_id: str) -> str:
        """Hash describing a cached chunk: ``parts``, ``size_bytes``, ``part_bytes``."""
        return f"{self.cache_info_prefix}{chunk_id}"

    @property
    def cache_part_prefix(self) -> str:
        """Start of every :meth:`cache_part` key; Lua scripts append ``<chunk_id>:<part>``."""
        return f"{self.cache_shard_prefix}part:"

    @property
    def cache_info_prefix(self) -> str:
        """Start of every :meth:`cache_info` key; Lua scripts append ``<chunk_id>``."""
        return f"{self.cache_shard_prefix}info:"

    def cache_staging(self, token: str, part: int) -> str:
        """A part uploaded by one ``put`` (``token``) before its commit; it carries a TTL."""
        return f"{self.cache_shard_prefix}staging:{token}:{part}"

    def chunk_lock(self, chunk_id: str) -> str:
        """Single-flight lease of one chunk load (string: the load's token, with a TTL).

        The waiter that wins ``SET NX`` asks a loader; the loader keeps the lease alive
        while it loads, so a loader killed mid-load frees the chunk within the lease TTL.
        """
        return f"{self.prefix}:lock:chunk:{chunk_id}"

    def chunk_ready(self, chunk_id: str) -> str:
        """Pub/sub channel announcing that a chunk landed in the cache (or failed)."""
        return f"{self.prefix}:chunk-ready:{chunk_id}"

    @property
    def arq_queue(self) -> str:
        """arq queue name of the chunk-loader jobs."""
        return f"{self.prefix}:arq:loads"


def keys_of_cache_shard(keys: Keys, shard: int) -> Keys:
    """The same names, with the ``cache_*`` ones of chunk-cache shard ``shard``."""
    return dataclasses.replace(keys, cache_shard=shard)
