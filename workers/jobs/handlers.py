"""The batch handler a worker runs jobs through, and how it is found from settings.

A handler takes a batch of jobs of one ``(model, task)`` and returns one result -- or one
exception -- per job, in order. Results must be msgpack-able. Heavy work (inference) must
run off the event loop (a thread or process), so heartbeats, claims and chunk loads keep
flowing while it runs.

The setting ``handler`` (``SW_HANDLER``) is an import path ``"module:attr"``. ``attr`` may be
an object with ``run_batch``, or a callable (a class or a factory function, sync or async)
taking the :class:`~sw_core.settings.Settings` and returning one.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from sw_core.exceptions import BatchTimeoutError, ConfigError, JobError, SurfingError
from sw_core.pipeline.jobs import Job
from sw_core.settings import Settings

if TYPE_CHECKING:
    from sw_core.engine.tasks.continuous import DecodeSession

log = logging.getLogger(__name__)


@runtime_checkable
class BatchHandler(Protocol):
    """Runs a batch of jobs of one model and task."""

    async def run_batch(self, model: str, task: str, jobs: list[Job]) -> list[Any | BaseException]:
        """One msgpack-able result or one exception per job, in the order of ``jobs``."""
        ...


#: Handler modules that moved: old import path -> new one (the old one still works, logged).
MOVED_MODULES = {"workers.inference": "workers.jobs.inference"}


@runtime_checkable
class DecodingHandler(BatchHandler, Protocol):
    """A handler that runs generate jobs by continuous batching (see
    :mod:`workers.jobs.decode_loop`)."""

    async def decode_session(self, model: str) -> DecodeSession | None:
        """The model's continuous decode batch; None for a model that runs static batches."""
        ...

    async def sequence_requests(self, model: str, job: Job) -> list[dict[str, Any]]:
        """The engine requests of a generate job, one per input, defaults applied."""
        ...

    async def after_step(self, model: str) -> None:
        """Called after each decode step of ``model``."""
        ...


def import_object(path: str) -> Any:
    """The object named by ``"package.module:attr"`` (or ``"package.module.attr"``)."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if module_name in MOVED_MODULES:
        log.warning(
            "handler module %r moved to %r: update SW_HANDLER",
            module_name,
            MOVED_MODULES[module_name],
        )
        module_name = MOVED_MODULES[module_name]
    if not module_name or not attr:
        raise ConfigError(f"handler {path!r} is not an import path like 'package.module:name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import the handler module {module_name!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(
                f"module {module_name!r} has no {attr!r} (handler {path!r})"
            ) from None
    return obj


async def load_handler(settings: Settings, path: str | None = None) -> BatchHandler:
    """Build the handler named by ``path`` (default: ``settings.handler``).

    Raises:
        ConfigError: the path does not import, or does not give a handler.
    """
    path = path or settings.handler
    obj = import_object(path)
    if not (hasattr(obj, "run_batch") and not inspect.isclass(obj)):
        if not callable(obj):
            raise ConfigError(f"handler {path!r} is neither a handler nor a factory of one")
        obj = obj(settings)
        if inspect.isawaitable(obj):
            obj = await obj
    if not inspect.iscoroutinefunction(getattr(obj, "run_batch", None)):
        raise ConfigError(f"handler {path!r} gave {obj!r}, which has no async run_batch()")
    return obj


async def close_handler(handler: BatchHandler) -> None:
    """Call the handler's optional ``close()`` (sync or async)."""
    close = getattr(handler, "close", None)
    if close is None:
        return
    result = close()
    if inspect.isawaitable(result):
        await result


async def run_batch_bounded(
    handler: BatchHandler,
    model: str,
    task: str,
    jobs: list[Job],
    *,
    batch_timeout_s: float,
    worker: str,
) -> list[Any]:
    """One result (or exception) per job: the handler's, cut off after ``batch_timeout_s``
    (0 = no limit) with :class:`BatchTimeoutError`; a handler that fails or returns the
    wrong number of results fails every job of the batch."""
    scope = asyncio.timeout(batch_timeout_s if batch_timeout_s > 0 else None)
    try:
        async with scope:
            results = await handler.run_batch(model, task, list(jobs))
    except Exception as exc:
        failure: Exception = exc
        if scope.expired():
            log.warning(
                "worker %s: a batch of %d %s/%s jobs ran past batch_timeout_s=%g; cancelled",
                worker,
                len(jobs),
                model,
                task,
                batch_timeout_s,
            )
            failure = BatchTimeoutError(
                f"the batch of {len(jobs)} {model}/{task} jobs ran longer than "
                f"SW_BATCH_TIMEOUT_S={batch_timeout_s:g} s and was cancelled"
            )
        elif not isinstance(exc, SurfingError):
            log.exception("handler failed on a batch of %d %s/%s jobs", len(jobs), model, task)
        return [failure] * len(jobs)
    if not isinstance(results, list) or len(results) != len(jobs):
        count = len(results) if isinstance(results, list) else type(results).__name__
        bug = JobError(f"the handler returned {count} results for {len(jobs)} jobs")
        return [bug] * len(jobs)
    return results
