"""Chaos-specific parts of the reliability suite; the rest is shared (:mod:`tests.support`:
worker processes, S3 server, settings profile ``CHAOS``, the poller, what is read back).

- :func:`chaos_long` -- whether the long versions of the scenarios run.
- :class:`PublishedModel`, :func:`publish_model`, :func:`publish_folder` -- a chunk set in
  a fresh S3 bucket with a backup copy on disk.
- :class:`LoadGenerator` -- a steady job stream through the real :class:`~producer.Producer`;
  a submit that fails (Redis away) is counted as refused, not as produced.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from producer import Producer
from sw_core.chunks.manifest import Manifest
from sw_core.settings import Settings
from sw_core.storage import S3Backend
from tests.support.servers import S3Server
from tests.support.storage import write_chunk_set

#: Environment variable that turns on the long versions (``make chaos`` sets it).
LONG_ENV = "CHAOS_LONG"


def chaos_long() -> bool:
    """Whether the long versions of the scenarios run (``CHAOS_LONG=1``)."""
    return os.environ.get(LONG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


# ---------------------------------------------------------------------------- chunk set
@dataclass
class PublishedModel:
    """A chunk set in a bucket (``location``) with a backup copy in ``backup_dir/name``."""

    name: str
    bucket: str
    location: str
    folder: Path
    backup_dir: Path
    manifest: Manifest

    @property
    def backup_folder(self) -> Path:
        return self.backup_dir / self.name


async def publish_model(
    s3: S3Server, tmp_path: Path, *, name: str = "tiny", n_chunks: int = 4, rows: int = 64
) -> PublishedModel:
    """Write a chunk set of random tensors, upload it to a fresh bucket, copy it to a backup."""
    folder = tmp_path / "source" / name
    write_chunk_set(folder, name=name, n_chunks=n_chunks, rows=rows)
    return await publish_folder(s3, tmp_path, folder, name)


async def publish_folder(s3: S3Server, tmp_path: Path, folder: Path, name: str) -> PublishedModel:
    """Upload the chunk set in ``folder`` to a fresh bucket (``s3://BUCKET/<name>``) and copy
    it to ``tmp_path/backup/<name>``."""
    from sw_core.chunks.verify import publish_chunk_set

    bucket = f"chaos-{uuid.uuid4().hex[:12]}"
    s3.client().make_bucket(bucket)
    settings = Settings.from_env({}, **s3.settings_overrides(), retry_initial_delay_s=0.05)
    backend = S3Backend.from_settings(settings, name, bucket_name=bucket)
    try:
        report = await publish_chunk_set(folder, backend)
    finally:
        await backend.close()
    assert report.ok, report.bad
    backup_dir = tmp_path / "backup"
    shutil.copytree(folder, backup_dir / name)
    manifest = Manifest.load(folder)
    return PublishedModel(name, bucket, f"s3://{bucket}/{name}", folder, backup_dir, manifest)


# ---------------------------------------------------------------------------- load
@dataclass
class LoadGenerator:
    """Submits jobs at ``rate_per_s`` until stopped, through one :class:`Producer`.

    A submit that raises (Redis away, connection killed) is counted in ``refused`` and the
    generator carries on: the caller was told, so it is not a lost job. ``ids`` holds only
    the jobs whose submit returned.
    """

    settings: Settings
    rate_per_s: float = 20.0
    model: str = "tiny"
    task: str = "embed"
    text: str = "chaos"
    #: Inputs of job ``n`` (default: one text ``"<text> <n>"``).
    make_inputs: Callable[[int], list[Any]] | None = None
    ids: list[str] = field(default_factory=list)
    submitted_at: dict[str, float] = field(default_factory=dict)
    refused: int = 0
    refusals: list[str] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    producer: Producer | None = None

    async def __aenter__(self) -> LoadGenerator:
        self.producer = Producer(settings=self.settings)
        self._task = asyncio.create_task(self._run(), name="chaos-load")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        if self.producer is not None:
            await self.producer.close()

    async def submit_one(self) -> str | None:
        assert self.producer is not None
        n = len(self.ids) + self.refused
        inputs = self.make_inputs(n) if self.make_inputs else [f"{self.text} {n}"]
        try:
            job_id = await self.producer.submit(self.model, self.task, inputs)
        except Exception as exc:
            self.refused += 1
            if len(self.refusals) < 20:
                self.refusals.append(f"{type(exc).__name__}: {exc}")
            return None
        self.ids.append(job_id)
        self.submitted_at[job_id] = time.time()
        return job_id

    async def _run(self) -> None:
        period_s = 1.0 / self.rate_per_s
        next_at = time.monotonic()
        while not self._stop.is_set():
            await self.submit_one()
            next_at += period_s
            delay_s = next_at - time.monotonic()
            if delay_s < -1.0:  # far behind (Redis was away): do not burst to catch up
                next_at = time.monotonic()
                delay_s = 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(delay_s, 0))

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
