"""The real inference handler with every execution recorded, for the kill -9 soak.

``SW_HANDLER=tests.support.engine_handler:RecordingInference`` runs jobs through
:class:`workers.jobs.inference.InferenceHandler` (the streaming engine over the shared chunk
cache and the loaders) and records ``start``/``end``/``fail`` like
:class:`tests.support.handlers.ChunkHandler`, so duplicates can be counted across processes.
Kept apart from :mod:`tests.support.handlers` because importing it imports torch.
"""

from __future__ import annotations

from typing import Any

from sw_core.pipeline.jobs import Job
from sw_core.settings import Settings
from tests.support.handlers import Recorder
from workers.jobs.inference import InferenceHandler


class RecordingInference(InferenceHandler):
    """:class:`InferenceHandler` that records each batch's start and end (best effort)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._recorder = Recorder(settings, best_effort=True)

    async def run_batch(self, model: str, task: str, jobs: list[Job]) -> list[Any]:
        await self._recorder.record("start", jobs)
        try:
            results = await super().run_batch(model, task, jobs)
        except BaseException:
            await self._recorder.record("fail", jobs)
            raise
        await self._recorder.record("end", jobs)
        return results

    async def close(self) -> None:
        await super().close()
        await self._recorder.close()
