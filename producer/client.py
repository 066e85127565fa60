"""The producer client: validates and submits jobs, waits for results.

A job is written by one Lua call: its stream entry, its hash (status ``queued``, with the
result TTL, naming that entry as the only one that may run the job) and the ``total_requests``
counter -- or nothing at all when the queue already holds ``max_queued_jobs`` jobs
(:class:`~sw_core.exceptions.QueueFullError`). Results are read from the job hash; a waiter
blocks on the job's done list with ``BLMOVE list list`` (non-destructive, so any number of
waiters wake) instead of polling. A generate job's tokens can be read while it runs with
:meth:`Producer.stream`; :meth:`Producer.cancel` stops a job.
"""

from __future__ import annotations

import asyncio
import enum
import re
import uuid
import warnings
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

from redis.asyncio import Redis

from sw_core.exceptions import (
    JobCancelledError,
    JobError,
    JobExpiredError,
    JobTimeoutError,
    NotReplicatedError,
    QueueFullError,
    SurfingError,
    error_class,
)
from sw_core.keys import Keys
from sw_core.lua_scripts import lua_source
from sw_core.pipeline.jobs import Job, encode_job, now_ms, validate_request
from sw_core.pipeline.registry import ModelRegistry
from sw_core.pipeline.results import unpack_result
from sw_core.queue_redis import queue_redis
from sw_core.schema import JobStatus
from sw_core.settings import Settings


class _Unset(enum.Enum):
    """Marks a keyword argument that was not given."""

    UNSET = enum.auto()


#: Longest single block on the done list; the hash is re-read after each.
_WAIT_SLICE_S = 1.0
_UNSET = _Unset.UNSET
_STREAM_ID_RE = re.compile(r"\d{1,20}-\d{1,20}")
#: How long a (model, task) pair found runnable is trusted before the registry is asked again.
_CHECK_TTL_S = 10.0
#: Fields of the job hash returned by :meth:`Producer.status` as integers.
_INT_FIELDS = ("attempts", "submitted_ms", "started_ms", "finished_ms", "updated_ms")


class Producer:
    """Async client for the job pipeline.

    Args:
        redis_url: Redis to use (default: ``settings.redis_url``, or the master that
            ``settings.redis_sentinels`` name).
        settings: limits and key prefix (default: :meth:`Settings.from_env`).
        client: an asyncio Redis client to use instead (``decode_responses=False``); the
            producer leaves it open.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        settings: Settings | None = None,
        *,
        client: Redis | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env()
        #: Whether :meth:`close` closes the client (not one handed in as ``client``).
        self._owns_client = client is None
        if client is None:
            client = Redis.from_url(redis_url) if redis_url else queue_redis(self.settings)
        self.redis: Redis = client
        self.keys = Keys(self.settings.key_prefix)
        self._submit = self.redis.register_script(lua_source("job_submit"))
        self._cancel = self.redis.register_script(lua_source("job_cancel"))
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
        """Close the Redis connections (a ``client`` handed in stays open)."""
        if self._owns_client:
            await self.redis.aclose()

    async def submit(
        self,
        model: str,
        task: str,
        inputs: list[Any],
        *,
        deadline_s: float | None = None,
        **params: Any,
    ) -> str:
        """Validate and enqueue a job; returns its id.

        Args:
            model: a registered model name.
            task: ``embed``, ``generate`` or ``forward``.
            inputs: texts (embed, generate) or lists of token ids (forward).
            deadline_s: the job must end within this many seconds: not started later, and a
                running generate job stops then (status ``expired``).
            params: task parameters, e.g. ``max_new_tokens=20`` for generate.

        Raises:
            QueueFullError: ``max_queued_jobs`` jobs are queued or pending; nothing was written.
            JobError: unknown task, bad inputs or params, payload over ``max_payload_bytes``.
            ModelError: the model is not registered, or cannot run ``task`` (``generate`` on
                an encoder); nothing is queued.
            NotReplicatedError: ``submit_wait_replicas`` replicas did not acknowledge the job
                within ``submit_wait_timeout_ms`` (it is queued on the master).
            redis.exceptions.ConnectionError: Redis cannot be reached.
        """
        model, task, inputs, clean = validate_request(model, task, inputs, params, self.settings)
        await self._check_model(model, task)
        submitted_ms = now_ms()
        deadline_ms = None
        if deadline_s is not None:
            if not 0 < deadline_s <= 10**9:
                raise JobError(f"deadline_s={deadline_s!r} must be > 0")
            deadline_ms = submitted_ms + int(deadline_s * 1000)
        job = Job(
            job_id=uuid.uuid4().hex,
            model=model,
            task=task,
            inputs=inputs,
            params=clean,
            submitted_ms=submitted_ms,
            deadline_ms=deadline_ms,
        )
        fields = encode_job(job, max_payload_bytes=self.settings.max_payload_bytes)
        flat: list[Any] = []
        for name, value in fields.items():
            flat += [name, value]
        cap = self.settings.max_queued_jobs
        keys = [self.keys.jobs, self.keys.job(job.job_id), self.keys.stats]
        args = [
            cap,
            self.settings.result_ttl_s,
            submitted_ms,
            model,
            task,
            "" if deadline_ms is None else deadline_ms,
            *flat,
        ]
        if self.settings.submit_wait_replicas > 0:
            entry = await self._submit_replicated(keys, args)
        else:
            entry = await self._submit(keys=keys, args=args)
        if not entry:
            raise QueueFullError(
                f"the jobs queue holds SW_MAX_QUEUED_JOBS={cap} jobs (queued or running); "
                "nothing was submitted: try again later or add workers"
            )
        return job.job_id

    async def _submit_replicated(self, keys: list[str], args: list[Any]) -> Any:
        """The submit script, then ``WAIT`` on the same connection (``WAIT`` counts the
        replicas that acknowledged this connection's writes)."""
        wanted = self.settings.submit_wait_replicas
        async with self.redis.client() as conn:
            entry = await self._submit(keys=keys, args=args, client=conn)
            acked = int(
                await conn.execute_command("WAIT", wanted, self.settings.submit_wait_timeout_ms)
            )
        if entry and acked < wanted:
            raise NotReplicatedError(
                f"the job reached {acked} of {wanted} replicas within "
                f"{self.settings.submit_wait_timeout_ms} ms (SW_SUBMIT_WAIT_REPLICAS)"
            )
        return entry

    async def cancel(self, job_id: str) -> str:
        """Cancel a job: a queued one never runs, a running generate job stops at its next
        step (a running embed or forward batch, which has no steps, finishes).

        Returns:
            ``cancelled`` (it will not run), ``cancelling`` (running: its worker stops it
            and then marks it ``cancelled``), ``unknown``, or the status the job had already
            ended with (``done``, ``dead``, ``expired``, ``cancelled``).
        """
        keys = [
            self.keys.job(job_id),
            self.keys.job_done(job_id),
            self.keys.retries,
            self.keys.retry_job(job_id),
            self.keys.stats,
        ]
        reply = await self._cancel(keys=keys, args=[now_ms(), self.settings.result_ttl_s, job_id])
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    def stream(
        self, job_id: str, timeout_s: float | None = 60, *, timeout: float | _Unset | None = _UNSET
    ) -> AsyncIterator[dict[str, Any]]:
        """The events of a generate job as it runs (see :func:`producer.streaming.stream_events`):
        ``{"type": "token", "index", "text", "step"}`` text deltas (with ``logprobs``: also
        the entries of the tokens the text came from, which add up to the result's
        ``logprobs``), ``{"type": "restart"}`` when a worker took the job over after a crash
        (start over), ``{"type": "end", "index", "finish_reason", "prompt_tokens",
        "completion_tokens"}`` per output (``eos``, ``stop`` -- a ``stop`` sequence, of which
        no delta shows any part -- or ``length``; with ``n`` > 1 the outputs of input i are
        ``i * n`` to ``i * n + n - 1``) and a last ``{"type": "final", "status"}`` -- for a
        job that ended ``done`` with its ``finish_reason`` (one per output, comma-separated)
        and token counts (summed; a prompt counted once however many completions it has).
        ``timeout_s``: most seconds without an event (None: no limit)."""
        from producer.streaming import stream_events

        timeout_s = _renamed_timeout(timeout_s, timeout, "stream")
        return stream_events(self.redis, self.keys, job_id, timeout_s=timeout_s)

    async def _check_model(self, model: str, task: str) -> None:
        loop = asyncio.get_running_loop()
        if self._runnable.get((model, task), 0.0) > loop.time():
            return
        await self.registry.check(model, task)
        self._runnable[(model, task)] = loop.time() + _CHECK_TTL_S

    async def status(self, job_id: str) -> dict[str, Any]:
        """The job hash: ``status`` (queued, running, retrying, done, dead, cancelled,
        expired), ``attempts``,
        ``worker``, times in ms, ``error_type``/``error`` -- without the result bytes.

        A hand-added entry no worker has started yet (its job id is its entry id) is
        ``queued``; an unknown (or expired) job gives ``{"status": "unknown"}``.
        """
        # redis-py types the async client's hash replies as sync|async unions (redis-py #2399)
        raw = await self.redis.hgetall(self.keys.job(job_id))  # type: ignore[misc]
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

    async def result(
        self, job_id: str, timeout_s: float | None = 30, *, timeout: float | _Unset | None = _UNSET
    ) -> Any:
        """Wait for the job's result.

        Raises:
            SurfingError: the job was dead-lettered -- raised as the class of its error
                (``error_class(error_type)(message)``); errors that are not Surfing errors
                come back as :class:`SurfingError` with the type name in the message.
            JobTimeoutError: the job did not end within ``timeout_s`` seconds.
            redis.exceptions.ConnectionError: Redis cannot be reached.
        """
        timeout_s = _renamed_timeout(timeout_s, timeout, "result")
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        done_key = self.keys.job_done(job_id)
        while True:
            # redis-py types the async client's hash replies as sync|async unions (redis-py #2399)
            fields = await self.redis.hmget(  # type: ignore[misc]
                self.keys.job(job_id), ["status", "result", "error_type", "error"]
            )
            status, result, error_type, error = fields
            state = JobStatus(status.decode()) if status else None
            if state is JobStatus.DONE:
                return unpack_result(result) if result is not None else None
            if state is JobStatus.DEAD:
                raise _job_error(error_type, error)
            if state is JobStatus.CANCELLED:
                raise JobCancelledError(f"job {job_id} was cancelled")
            if state is JobStatus.EXPIRED:
                raise JobExpiredError(f"job {job_id} passed its deadline before it ended")
            remaining = _WAIT_SLICE_S if deadline is None else deadline - loop.time()
            if remaining <= 0:
                shown = state or "unknown (never submitted, or expired)"
                raise JobTimeoutError(
                    f"job {job_id} did not finish within {timeout_s:g} s (status: {shown}); "
                    "are inference workers running (arq workers.Settings)?"
                )
            wait_s = max(min(remaining, _WAIT_SLICE_S), 0.01)
            # BLMOVE takes fractional seconds (int() would make a wait under 1 s block for
            # ever); redis-py types the timeout as int
            await self.redis.blmove(done_key, done_key, wait_s, "RIGHT", "LEFT")  # type: ignore[arg-type]


def _renamed_timeout(
    timeout_s: float | None, timeout: float | _Unset | None, method: str
) -> float | None:
    """``timeout_s``, or the deprecated ``timeout=`` keyword when it was given."""
    if timeout is _UNSET:
        return timeout_s
    warnings.warn(
        f"Producer.{method}(timeout=...) is deprecated; use timeout_s=",
        DeprecationWarning,
        stacklevel=3,
    )
    return timeout


def _job_error(error_type: bytes | None, error: bytes | None) -> SurfingError:
    """The stored error as its class; non-Surfing types keep their name in the message."""
    type_name = error_type.decode() if error_type else "SurfingError"
    message = error.decode("utf-8", "replace") if error else "no error message stored"
    cls = error_class(type_name)
    if cls.__name__ != type_name:
        message = f"{type_name}: {message}"
    return cls(message)
