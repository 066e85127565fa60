"""Everything that depends on arq beyond its documented API, in one place.

Written against arq 0.28.0 (``pyproject.toml`` allows ``arq>=0.28,<0.29``); a new arq is
checked here first: :func:`arq_changes` names the methods below whose source differs from
the one recorded in :data:`ARQ_SOURCE_SHA256` (a test fails on it, a worker logs it).

- :func:`tolerate_redis_outages` keeps an arq worker up through Redis errors. arq has no
  error handling in its job loop: one Redis error -- a restart, a dropped connection, an
  out-of-memory refusal of its own bookkeeping (every command of a ``MULTI`` is refused
  then) -- ended the whole process. And arq offers no way to change that: its command line
  (``arq workers.Settings``) builds ``arq.worker.Worker(**get_kwargs(settings))`` itself,
  no setting names another class, none of its hooks (``on_startup``, ``on_job_start``,
  ``--custom-log-dict``) sees the worker or its loop, and the ``retry`` of its
  ``RedisSettings`` (redis-py's) repeats one command on a connection error only. So three
  methods of ``Worker`` are adapted, in this process, when a worker's settings are built:

  * ``_poll_iteration`` (one step of the job loop): an error is logged and the step
    retried after :data:`REDIS_RETRY_S` (redis-py's pool reconnects on the next command);
  * ``start_jobs``: an error between taking a job's slot and starting its task gave the
    slot back to nobody; after ``max_jobs`` of them the worker never took a job again;
  * ``run_job``: a Redis error in a job's bookkeeping (its opening transaction,
    ``finish_job``) is logged instead of failing the job's task, so that ``close()``,
    which gathers those tasks, still reaches ``on_shutdown`` (the consumer's drain).

  Jobs are never at risk either way (pending stream entries and the AOF keep them); this
  keeps the *service* up.
- :data:`JOB_KEY_PREFIX` and :data:`IN_PROGRESS_KEY_PREFIX`: the key prefixes arq keeps a
  queued job and a running job under (a chunk waiter reads them to tell the two apart).
- :class:`LazyWorkerSettings`: ``arq MODULE.NAME`` accepts a dict of ``Worker`` keyword
  arguments (``get_kwargs`` checks ``isinstance(settings, dict)``, then reads ``items()``);
  this one builds them when first read, so that importing ``workers`` reads no settings
  and touches no server.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.version import VERSION as ARQ_VERSION
from arq.worker import Worker
from redis.exceptions import AuthenticationError, AuthorizationError, NoPermissionError, RedisError

log = logging.getLogger(__name__)

#: Pause after a failed arq loop step before the next one (seconds).
REDIS_RETRY_S = 0.5

#: arq's key of a queued job is this prefix + the job id.
JOB_KEY_PREFIX: str = job_key_prefix
#: arq's key of a job a worker is running is this prefix + the job id.
IN_PROGRESS_KEY_PREFIX: str = in_progress_key_prefix

#: sha256 (first 16 hex digits) of the source of each ``Worker`` method the adaptation
#: wraps or relies on, in arq 0.28.0: ``main`` runs the loop step and goes on after it
#: returns, ``close`` gathers the job tasks before ``on_shutdown``, and
#: ``_release_sem_dec_counter_on_complete`` gives a job slot back.
ARQ_SOURCE_SHA256 = {
    "main": "45ca1591c9717466",
    "_poll_iteration": "f8d39d823a0a59f2",
    "start_jobs": "b45797cfa40bed7f",
    "run_job": "589a19059ff84ee7",
    "_release_sem_dec_counter_on_complete": "0ed101482e942c33",
    "close": "5bcc9cb356680829",
}

#: Errors that are not an outage but a refusal to fix (password, ACL): they still end it.
_FATAL = (AuthenticationError, AuthorizationError, NoPermissionError)

_Step = Callable[..., Awaitable[None]]


def arq_changes() -> list[str]:
    """The ``Worker`` methods :func:`tolerate_redis_outages` depends on whose installed
    source is not the one it was written against (empty: safe to adapt)."""
    return [
        name
        for name, recorded in ARQ_SOURCE_SHA256.items()
        if _source_sha256(getattr(Worker, name, None)) != recorded
    ]


def _source_sha256(step: Any) -> str | None:
    while _adapted(step):  # arq's own method, not the wrapper put around it here
        step = step.__wrapped__
    try:
        source = inspect.getsource(step)
    except (OSError, TypeError):  # gone, or no source to read
        return None
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def _adapted(step: object) -> bool:
    return bool(getattr(step, "sw_adapted", False))


def _logged(what: str, exc: BaseException) -> None:
    log.warning("Redis error in %s (%s: %s)", what, type(exc).__name__, exc)


def _guard_loop_step(step: _Step) -> _Step:
    @functools.wraps(step)
    async def poll_iteration(self: Worker) -> None:
        try:
            await step(self)
        except _FATAL:
            raise
        except (RedisError, OSError) as exc:
            _logged(f"the worker loop; retrying in {REDIS_RETRY_S:.1f}s", exc)
            await asyncio.sleep(REDIS_RETRY_S)

    return poll_iteration


def _guard_start_jobs(step: _Step) -> _Step:
    @functools.wraps(step)
    async def start_jobs(self: Worker, job_ids: list[bytes]) -> None:
        try:
            await step(self, job_ids)
        except Exception:
            # Raised between counting the job it was starting (job_counter + 1, a semaphore
            # slot) and creating its task -- by its WATCH/EXISTS/ZSCORE/EXEC: nothing else
            # gives that slot back. (After a skipped job gave its slot back, only the
            # pipeline's reset runs, and redis-py swallows its connection errors.)
            self._release_sem_dec_counter_on_complete()
            raise

    return start_jobs


def _guard_run_job(step: _Step) -> _Step:
    @functools.wraps(step)
    async def run_job(self: Worker, job_id: str, score: int) -> None:
        try:
            await step(self, job_id, score)
        except _FATAL:
            raise
        except (RedisError, OSError) as exc:
            # arq runs it again once its in-progress key expires, or drops it as
            # over max_tries: loads are single flight by their lease, not by arq
            _logged(f"the bookkeeping of arq job {job_id}", exc)

    return run_job


_ADAPTERS: dict[str, Callable[[_Step], _Step]] = {
    "_poll_iteration": _guard_loop_step,
    "start_jobs": _guard_start_jobs,
    "run_job": _guard_run_job,
}


def tolerate_redis_outages() -> None:
    """Make arq workers in this process survive Redis errors in their job loop and their
    bookkeeping (idempotent). Logs a warning when the installed arq is not the one this was
    written against."""
    if redis_outages_tolerated():
        return
    changed = arq_changes()
    if changed:
        log.warning(
            "arq %s differs from 0.28.0 in Worker.%s: its adaptation to Redis outages "
            "(workers.arq_compat) is unverified for it",
            ARQ_VERSION,
            ", Worker.".join(changed),
        )
    for name, adapt in _ADAPTERS.items():
        step = getattr(Worker, name)
        if not _adapted(step):
            adapted = adapt(step)
            adapted.sw_adapted = True  # type: ignore[attr-defined]
            setattr(Worker, name, adapted)


def redis_outages_tolerated() -> bool:
    """Whether :func:`tolerate_redis_outages` has adapted arq in this process."""
    return all(_adapted(getattr(Worker, name)) for name in _ADAPTERS)


if TYPE_CHECKING:
    _MappingDict = dict[str, Any]
else:

    class _MappingDict(Mapping, dict):
        """A ``dict`` (arq's ``get_kwargs`` checks ``isinstance(settings, dict)``, and reads
        any other object's ``__dict__``) whose reads are ``Mapping``'s: ``items()``,
        ``keys()``, ``get()``, ``in``, ``==`` ... all built on ``__getitem__``, ``__iter__``
        and ``__len__``. Type checkers are told "a dict": typeshed makes ``dict`` a
        ``MutableMapping``, so they cannot order these two bases."""


class LazyWorkerSettings(_MappingDict):
    """arq worker settings built on first read, by ``build()``, when a worker starts.

    Every read goes through the three methods below (see ``_MappingDict``). ``repr`` does
    not build, so ``print(workers.Settings)`` reads nothing.
    """

    def __init__(self, description: str, build: Callable[[], dict[str, Any]]) -> None:
        super().__init__()
        self._description = description
        self._build: Callable[[], dict[str, Any]] | None = build

    def _ensure_built(self) -> None:
        if self._build is not None:
            build, self._build = self._build, None
            dict.update(self, build())

    def __getitem__(self, key: str) -> Any:
        self._ensure_built()
        return dict.__getitem__(self, key)

    def __iter__(self) -> Iterator[str]:
        self._ensure_built()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self._ensure_built()
        return dict.__len__(self)

    def __repr__(self) -> str:
        state = "built" if self._build is None else "read from SW_* when a worker starts"
        return f"<arq worker settings: {self._description} ({state})>"
