"""Refuse bad credentials clearly, before arq's connection retries.

:func:`check_access` runs when arq starts a worker (``arq workers.Settings``), so that a wrong
password or an ACL user without access to the deployment's keys ends the process with one
clear line (exit 2) instead of a traceback after arq's five connection retries.
"""

from __future__ import annotations

import sys

from redis.exceptions import AuthenticationError, AuthorizationError, NoPermissionError, RedisError

from sw_core.keys import Keys
from sw_core.queue_redis import queue_redis_sync
from sw_core.settings import Settings, redact_url
from workers.arq_compat import JOB_KEY_PREFIX


def check_access(settings: Settings) -> None:
    """Exit with one line (status 2) when Redis refuses these credentials or this prefix.

    Connection failures are left to arq (it retries, and Redis may come up later).
    """
    keys = Keys(settings.key_prefix)
    client = queue_redis_sync(settings, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
        client.exists(keys.jobs)
        client.exists(f"{JOB_KEY_PREFIX}{keys.prefix}:access-check")
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
