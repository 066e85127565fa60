"""Everything that depends on arq beyond its documented API, in one place.

Tested with the arq versions that ``pyproject.toml`` allows (``arq>=0.28,<0.29``); a new arq
release is checked here first.

- :func:`tolerate_redis_outages` wraps arq's job-loop step (``Worker._poll_iteration``, a
  private method): arq has no error handling there, so one Redis error -- a restart, a
  dropped connection, an out-of-memory refusal of its bookkeeping -- would end the whole
  process. Wrapped, the error is logged and the step retried after :data:`REDIS_RETRY_S`
  (redis-py's pool reconnects on the next command). Jobs are never at risk either way
  (pending stream entries and the AOF keep them); this keeps the *service* up.
- :data:`JOB_KEY_PREFIX` and :data:`IN_PROGRESS_KEY_PREFIX`: the key prefixes arq keeps a
  queued job and a running job under (a chunk waiter reads them to tell the two apart).
- :class:`LazyWorkerSettings`: arq's ``arq MODULE.NAME`` command accepts a dict of ``Worker``
  keyword arguments as well as a class; this dict builds them the first time arq reads it,
  so that importing ``workers`` reads no settings and touches no server.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.worker import Worker
from redis.exceptions import AuthenticationError, AuthorizationError, NoPermissionError, RedisError

log = logging.getLogger(__name__)

#: Pause after a failed arq loop step before the next one (seconds).
REDIS_RETRY_S = 0.5

#: arq's key of a queued job is this prefix + the job id.
JOB_KEY_PREFIX: str = job_key_prefix
#: arq's key of a job a worker is running is this prefix + the job id.
IN_PROGRESS_KEY_PREFIX: str = in_progress_key_prefix


#: ``Worker._poll_iteration``'s type.
_Step = Callable[[Worker], Coroutine[Any, Any, None]]


def _guard(step: _Step) -> _Step:
    @functools.wraps(step)
    async def guarded(self: Worker) -> None:
        try:
            await step(self)
        except (AuthenticationError, AuthorizationError, NoPermissionError):
            raise
        except (RedisError, OSError) as exc:
            log.warning(
                "Redis error in the worker loop (%s); retrying in %.1fs", exc, REDIS_RETRY_S
            )
            await asyncio.sleep(REDIS_RETRY_S)

    guarded.sw_guarded = True  # type: ignore[attr-defined]  # a marker on a function object
    return guarded


def tolerate_redis_outages() -> None:
    """Make arq workers in this process survive Redis errors in their job loop (idempotent)."""
    step = Worker._poll_iteration
    if not getattr(step, "sw_guarded", False):
        # the patch itself (mypy sees a method replaced on its class)
        Worker._poll_iteration = _guard(step)  # type: ignore[method-assign,assignment]


def redis_outages_tolerated() -> bool:
    """Whether :func:`tolerate_redis_outages` has adapted arq in this process."""
    return bool(getattr(Worker._poll_iteration, "sw_guarded", False))


class LazyWorkerSettings(dict[str, Any]):
    """arq worker settings built on first read, by ``build()``, when a worker starts.

    ``repr`` does not build them, so ``print(workers.Settings)`` reads nothing.
    """

    def __init__(self, description: str, build: Callable[[], dict[str, Any]]) -> None:
        super().__init__()
        self._description = description
        self._build: Callable[[], dict[str, Any]] | None = build

    def _ensure(self) -> None:
        if self._build is not None:
            build, self._build = self._build, None
            super().update(build())

    def __repr__(self) -> str:
        state = "built" if self._build is None else "read from SW_* when a worker starts"
        return f"<arq worker settings: {self._description} ({state})>"

    def __getitem__(self, key: str) -> Any:
        self._ensure()
        return super().__getitem__(key)

    def __iter__(self) -> Iterator[str]:
        self._ensure()
        return super().__iter__()

    def __len__(self) -> int:
        self._ensure()
        return super().__len__()

    def __contains__(self, key: object) -> bool:
        self._ensure()
        return super().__contains__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self._ensure()
        return super().get(key, default)

    def keys(self) -> Any:
        self._ensure()
        return super().keys()

    def items(self) -> Any:
        self._ensure()
        return super().items()

    def values(self) -> Any:
        self._ensure()
        return super().values()
