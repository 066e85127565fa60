"""Batch handlers for the chaos workers (``SW_HANDLER=tests.chaos.handlers:ChunkHandler``).

:class:`ChunkHandler` does what the inference handler does with its weights, without the
model math: it reads the model's manifest from storage once, then fetches every chunk of
the model through :class:`~workers.chunk_source.RemoteChunkSource` -- a hit in the shared
Redis cache (verified against its sha256), or a load by a loader worker from S3 with the
backup folder behind it. So killing loaders, stopping S3, filling Redis or corrupting the
cache all reach the jobs. Every execution is recorded (``start``/``end``/``fail`` JSON lines
with job id, attempt, pid and wall time) in ``<prefix>:test:calls`` so a test can count
duplicates across processes. ``CHAOS_HANDLER_SLEEP_S`` adds a pause (off the event loop)
per batch so kills find jobs in flight.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from typing import Any

from sw_core.chunks.manifest import MANIFEST_FILE, Manifest
from sw_core.pipeline.jobs import Job
from sw_core.queue_redis import queue_redis
from sw_core.settings import Settings
from workers.chunk_source import RemoteChunkSource


def calls_key(prefix: str) -> str:
    """Redis list the chaos handlers record executions in."""
    return f"{prefix}:test:calls"


class ChunkHandler:
    """Fetches every chunk of the job's model per batch; returns a digest per job."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = queue_redis(settings)  # through Sentinel when configured
        self.key = calls_key(settings.key_prefix)
        self.sleep_s = float(os.environ.get("CHAOS_HANDLER_SLEEP_S", "0"))
        self._sources: dict[str, RemoteChunkSource] = {}
        self._manifests: dict[str, Manifest] = {}

    async def _record(self, event: str, jobs: list[Job], **extra: Any) -> None:
        now = time.time()
        lines = [
            json.dumps(
                {"event": event, "job_id": j.job_id, "attempt": j.attempt,
                 "pid": os.getpid(), "t": now, **extra}
            )
            for j in jobs
        ]  # fmt: skip
        try:
            await self.redis.rpush(self.key, *lines)
        except Exception:  # recording is best effort: Redis may be away in a scenario
            pass

    def _source(self, model: str) -> RemoteChunkSource:
        if model not in self._sources:
            self._sources[model] = RemoteChunkSource(model, self.settings)
        return self._sources[model]

    async def _manifest(self, model: str) -> Manifest:
        if model not in self._manifests:
            raw = await self._source(model).fetch_file(MANIFEST_FILE)
            self._manifests[model] = Manifest.from_json(raw)
        return self._manifests[model]

    async def run_batch(self, model: str, task: str, jobs: list[Job]) -> list[Any]:
        await self._record("start", jobs)
        try:
            manifest = await self._manifest(model)
            digest = hashlib.sha256()
            total_bytes = 0
            source = self._source(model)
            for chunk in manifest.chunks:
                data = await source.fetch(chunk)
                total_bytes += len(data)
                digest.update(chunk.sha256.encode())
            if self.sleep_s:
                await asyncio.to_thread(time.sleep, self.sleep_s)
        except Exception as exc:
            await self._record("fail", jobs, error=f"{type(exc).__name__}: {exc}"[:300])
            return [exc] * len(jobs)
        await self._record("end", jobs)
        return [
            {"job_id": j.job_id, "bytes": total_bytes, "digest": digest.hexdigest()} for j in jobs
        ]

    async def close(self) -> None:
        for source in self._sources.values():
            await source.close()
        await self.redis.aclose()


class SmallEcho:
    """Answers each job at once with a small result (no chunks): for input fuzzing."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def run_batch(self, model: str, task: str, jobs: list[Job]) -> list[Any]:
        return [{"job_id": j.job_id, "n_inputs": len(j.inputs)} for j in jobs]
