"""Keep a worker process alive through Redis outages, and refuse bad credentials clearly.

arq's job loop (``Worker._poll_iteration``) has no error handling: one Redis error -- a
restart, a dropped connection, an out-of-memory refusal of its bookkeeping -- ends the whole
process, with nothing running until someone restarts it. :func:`tolerate_redis_outages`
wraps that loop step so a Redis error is logged and retried after
:data:`REDIS_RETRY_S`; redis-py's pool reconnects on the next command. Jobs are never at
risk either way (pending stream entries and the AOF keep them); this keeps the *service* up.

:func:`check_access` runs at import of ``workers`` so that a wrong password or an ACL user
without access to the deployment's keys ends the process with one clear line (exit 2)
instead of a traceback after arq's five connection retries.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import redis
from arq.worker import Worker
from redis.exceptions import AuthenticationError, AuthorizationError, NoPermissionError, RedisError

from sw_core.keys import Keys
from sw_core.settings import Settings, redact_url

log = logging.getLogger(__name__)

#: Pause after a failed arq loop step before the next one (seconds).
REDIS_RETRY_S = 0.5


def _guard(step: Callable[[Worker], Awaitable[None]]) -> Callable[[Worker], Awaitable[None]]:
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

    guarded.sw_guarded = True  # type: ignore[attr-defined]
    return guarded


def tolerate_redis_outages() -> None:
    """Make arq workers in this process survive Redis errors in their job loop (idempotent)."""
    step: Any = Worker._poll_iteration
    if not getattr(step, "sw_guarded", False):
        Worker._poll_iteration = _guard(step)  # type: ignore[method-assign]


def check_access(settings: Settings) -> None:
    """Exit with one line (status 2) when Redis refuses these credentials or this prefix.

    Connection failures are left to arq (it retries, and Redis may come up later).
    """
    keys = Keys(settings.key_prefix)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
        client.exists(keys.jobs)
        client.exists(f"arq:job:{keys.prefix}:access-check")
    except (AuthenticationError, AuthorizationError, NoPermissionError) as exc:
        print(
            f"sw worker: Redis at {redact_url(settings.redis_url)} refused access: {exc} "
            f"(check the password in SW_REDIS_URL, and that the ACL user may use the keys "
            f"'{keys.prefix}:*' and 'arq:*')",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    except RedisError:
        pass
    finally:
        client.close()
