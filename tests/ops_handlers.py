"""Batch handlers for the operations tests (``SW_HANDLER=tests.ops_handlers:ChunkReadingHandler``).

:class:`ChunkReadingHandler` does the I/O of a real inference run without a transformer: it
reads the job's model manifest and every chunk through :class:`workers.chunk_source.
RemoteChunkSource` (shared Redis chunk cache, loader workers, storage with failover and
sha256 checks). A storage outage therefore fails jobs through the same code path as in
production. A job whose first input holds ``fail=<ErrorType>`` fails with that error type
(for tests that need error counts without an outage).
"""

from __future__ import annotations

from typing import Any

from sw_core.chunks.manifest import MANIFEST_FILE, Manifest
from sw_core.exceptions import error_class
from sw_core.pipeline.jobs import Job
from sw_core.settings import Settings
from workers.chunk_source import RemoteChunkSource


def injected_failure(job: Job) -> str | None:
    """The ``fail=<ErrorType>`` word of the job's first input, if any."""
    first = job.inputs[0] if job.inputs and isinstance(job.inputs[0], str) else ""
    for word in first.split():
        if word.startswith("fail="):
            return word[len("fail=") :]
    return None


class ChunkReadingHandler:
    """Reads every chunk of the batch's model through the worker's real chunk path."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def run_batch(self, model: str, task: str, jobs: list[Job]) -> list[Any]:
        source = RemoteChunkSource(model, self.settings)
        try:
            manifest = Manifest.from_json(await source.fetch_file(MANIFEST_FILE))
            total_bytes = 0
            for chunk in manifest.chunks:
                total_bytes += len(await source.fetch(chunk))
        finally:
            await source.close()
        out: list[Any] = []
        for job in jobs:
            failure = injected_failure(job)
            if failure:
                out.append(error_class(failure)(f"injected {failure} for job {job.job_id}"))
            else:
                out.append({"chunks": len(manifest.chunks), "bytes": total_bytes})
        return out
