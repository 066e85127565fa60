"""The producer client: validates and submits jobs, waits for results.

A job is written in one Lua call: its stream entry, its hash (status ``queued``, with the result
TTL, naming that entry as the only one that may run the job) and the ``total_requests`` counter. Results are read from the job hash; a
waiter blocks on the job's done list with ``BLMOVE list list`` (non-destructive, so any
number of waiters wake) instead of polling.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from types import TracebackType
from typing import Any

from redis.asyncio import Redis

from sw_core.exceptions import JobTimeoutError, SurfingError, error_class
from sw_core.keys import Keys
from sw_core.lua_scripts import lua_source
from sw_core.pipeline.jobs import Job, encode_job, now_ms, validate_request
from sw_core.pipeline.registry import ModelRegistry
from sw_core.pipeline.results import unpack_result
from sw_core.settings import Settings

#: Longest single block on the done list; the hash is re-read after each.
_WAIT_SLICE_S = 1.0
_STREAM_ID_RE = re.compile(r"\d{1,20}-\d{1,20}")
#: How long a (model, task) pair found runnable is trusted before the registry is asked again.
_CHECK_TTL_S = 10.0
#: Fields of the job hash returned by :meth:`Producer.status` as integers.
_INT_FIELDS = ("attempts", "submitted_ms", "started_ms", "finished_ms", "updated_ms")


class Producer:
    """Async client for the job pipeline.

    Args:
        redis_url: Redis to use (default: ``settings.redis_url``).
        settings: limits and key prefix (default: :meth:`Settings.from_env`).
    """

    def __init__(self, redis_url: str | None = None, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.redis: Redis = Redis.from_url(redis_url or self.settings.redis_url)
        self.keys = Keys(self.settings.key_prefix)
        self._submit = self.redis.register_script(lua_source("pipeline_submit"))
        self.registry = ModelRegistry(self.redis, self.settings)
        self._runnable: dict[tuple[str, str], float] = {}

    async def __aenter__(self) -> Producer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the Redis connections."""
        await self.redis.aclose()

    async def submit(self, model: str, task: str, inputs: list[Any], **params: Any) -> str:
        """Validate and enqueue a job; returns its id.

        Args:
            model: a registered model name.
            task: ``embed``, ``generate`` or ``forward``.
            inputs: texts (embed, generate) or lists of token ids (forward).
            params: task parameters, e.g. ``max_new_tokens=20`` for generate.

        Raises:
            JobError: unknown task, bad inputs or params, payload over ``max_payload_bytes``.
            ModelError: the model is not registered, or cannot run ``task`` (``generate`` on
                an encoder); nothing is queued.
            redis.exceptions.ConnectionError: Redis cannot be reached.
        """
        model, task, inputs, clean = validate_request(model, task, inputs, params, self.settings)
        await self._check_model(model, task)
        job = Job(
            job_id=uuid.uuid4().hex,
            model=model,
            task=task,
            inputs=inputs,
            params=clean,
            submitted_ms=now_ms(),
        )
        fields = encode_job(job, max_payload_bytes=self.settings.max_payload_bytes)
        flat: list[Any] = []
        for name, value in fields.items():
            flat += [name, value]
        await self._submit(
            keys=[self.keys.job(job.job_id), self.keys.jobs, self.keys.stats],
            args=[model, task, job.submitted_ms, self.settings.result_ttl_s, *flat],
        )
        return job.job_id

    async def _check_model(self, model: str, task: str) -> None:
        loop = asyncio.get_running_loop()
        if self._runnable.get((model, task), 0.0) > loop.time():
            return
        await self.registry.check(model, task)
        self._runnable[(model, task)] = loop.time() + _CHECK_TTL_S

    async def status(self, job_id: str) -> dict[str, Any]:
        """The job hash: ``status`` (queued, running, retrying, done, dead), ``attempts``,
        ``worker``, times in ms, ``error_type``/``error`` -- without the result bytes.

        A hand-added entry no worker has started yet (its job id is its entry id) is
        ``queued``; an unknown (or expired) job gives ``{"status": "unknown"}``.
        """
        raw = await self.redis.hgetall(self.keys.job(job_id))
        if not raw:
            if _STREAM_ID_RE.fullmatch(job_id) and await self.redis.xrange(
                self.keys.jobs, job_id, job_id
            ):
                return {"job_id": job_id, "status": "queued"}
            return {"job_id": job_id, "status": "unknown"}
        out: dict[str, Any] = {"job_id": job_id}
        for name_b, value_b in raw.items():
            name = name_b.decode()
            if name == "result":
                continue
            value: Any = value_b.decode("utf-8", "replace")
            if name in _INT_FIELDS or name.endswith("_ms"):
                try:
                    value = int(value)
                except ValueError:
                    pass
            out[name] = value
        return out

    async def result(self, job_id: str, timeout: float | None = 30) -> Any:
        """Wait for the job's result.

        Raises:
            SurfingError: the job was dead-lettered -- raised as the class of its error
                (``error_class(error_type)(message)``); errors that are not Surfing errors
                come back as :class:`SurfingError` with the type name in the message.
            JobTimeoutError: the job did not end within ``timeout`` seconds.
            redis.exceptions.ConnectionError: Redis cannot be reached.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        done_key = self.keys.job_done(job_id)
        while True:
            fields = await self.redis.hmget(
                self.keys.job(job_id), ["status", "result", "error_type", "error"]
            )
            status, result, error_type, error = fields
            if status == b"done":
                return unpack_result(result) if result is not None else None
            if status == b"dead":
                raise _job_error(error_type, error)
            remaining = _WAIT_SLICE_S if deadline is None else deadline - loop.time()
            if remaining <= 0:
                state = status.decode() if status else "unknown (never submitted, or expired)"
                raise JobTimeoutError(
                    f"job {job_id} did not finish within {timeout:g} s (status: {state}); "
                    "are inference workers running (arq workers.Settings)?"
                )
            wait_s = max(min(remaining, _WAIT_SLICE_S), 0.01)
            await self.redis.blmove(done_key, done_key, wait_s, "RIGHT", "LEFT")


def _job_error(error_type: bytes | None, error: bytes | None) -> SurfingError:
    """The stored error as its class; non-Surfing types keep their name in the message."""
    type_name = error_type.decode() if error_type else "SurfingError"
    message = error.decode("utf-8", "replace") if error else "no error message stored"
    cls = error_class(type_name)
    if cls.__name__ != type_name:
        message = f"{type_name}: {message}"
    return cls(message)
