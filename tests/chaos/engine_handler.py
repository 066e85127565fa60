"""The real inference handler with every execution recorded, for the kill -9 soak.

``SW_HANDLER=tests.chaos.engine_handler:RecordingInference`` runs jobs through
:class:`workers.inference.InferenceHandler` (the streaming engine over the shared chunk
cache and the loaders) and writes ``start``/``end``/``fail`` JSON lines like
:class:`tests.chaos.handlers.ChunkHandler`, so duplicates can be counted across processes.
Kept apart from :mod:`tests.chaos.handlers` because importing it imports torch.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis.asyncio as aioredis

from sw_core.pipeline.jobs import Job
from sw_core.settings import Settings
from tests.chaos.handlers import calls_key
from workers.inference import InferenceHandler


class RecordingInference(InferenceHandler):
    """:class:`InferenceHandler` that records each batch's start and end."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._recorder = aioredis.Redis.from_url(settings.redis_url)
        self._calls = calls_key(settings.key_prefix)

    async def _record(self, event: str, jobs: list[Job]) -> None:
        now = time.time()
        lines = [
            json.dumps(
                {"event": event, "job_id": j.job_id, "attempt": j.attempt,
                 "pid": os.getpid(), "t": now}
            )
            for j in jobs
        ]  # fmt: skip
        try:
            await self._recorder.rpush(self._calls, *lines)
        except Exception:  # best effort: Redis may be away in a scenario
            pass

    async def run_batch(self, model: str, task: str, jobs: list[Job]) -> list[Any]:
        await self._record("start", jobs)
        try:
            results = await super().run_batch(model, task, jobs)
        except BaseException:
            await self._record("fail", jobs)
            raise
        await self._record("end", jobs)
        return results

    async def close(self) -> None:
        await super().close()
        await self._recorder.aclose()
