"""Every Redis key name Surfing Weights uses, in one place.

All keys start with the configurable prefix (``sw`` by default), so one Redis can host
several deployments and an ACL can restrict a user to ``~sw:* ~arq:*`` (arq keeps the
chunk loaders' job state in its own global ``arq:*`` keys). Operators inspect them with
``redis-cli`` (see the key table in docs/operations.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix."""

    prefix: str = "sw"

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

    # ---------------------------------------------------------------- models
    @property
    def models(self) -> str:
        """Hash: model name -> where its chunks live (``s3://bucket/prefix`` or a folder)."""
        return f"{self.prefix}:models"

    @property
    def model_tasks(self) -> str:
        """Hash: model name -> the tasks it can run (``embed,forward``), from its manifest."""
        return f"{self.prefix}:model-tasks"

    # ---------------------------------------------------------------- counters and workers
    @property
    def stats(self) -> str:
        """Hash of counters: ``total_requests``, ``errors``, ``errors:<Type>``, cache and storage."""
        return f"{self.prefix}:stats"

    @property
    def stats_models(self) -> str:
        """Hash of per-model job counters: ``completed:<model>``, ``failed:<model>``, ..."""
        return f"{self.stats}:models"

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
    def cache_lru(self) -> str:
        """Sorted set of cached chunk ids scored by a logical clock of last use."""
        return f"{self.prefix}:cache:lru"

    @property
    def cache_meta(self) -> str:
        """Hash of cache accounting: ``bytes``, ``clock``, ``hits``, ``misses``, ``evictions``,
        ``corruptions``."""
        return f"{self.prefix}:cache:meta"

    def cache_part(self, chunk_id: str, part: int) -> str:
        """One part (at most ``cache_part_mb``) of a cached chunk's bytes."""
        return f"{self.cache_part_prefix}{chunk_id}:{part}"

    def cache_info(self, chunk_id: str) -> str:
        """Hash describing a cached chunk: ``parts``, ``size_bytes``, ``part_bytes``."""
        return f"{self.cache_info_prefix}{chunk_id}"

    @property
    def cache_part_prefix(self) -> str:
        """Start of every :meth:`cache_part` key; Lua scripts append ``<chunk_id>:<part>``."""
        return f"{self.prefix}:cache:part:"

    @property
    def cache_info_prefix(self) -> str:
        """Start of every :meth:`cache_info` key; Lua scripts append ``<chunk_id>``."""
        return f"{self.prefix}:cache:info:"

    def cache_staging(self, token: str, part: int) -> str:
        """A part uploaded by one ``put`` (``token``) before its commit; it carries a TTL."""
        return f"{self.prefix}:cache:staging:{token}:{part}"

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
