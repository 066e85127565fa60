"""Clients of the queue Redis: ``SW_REDIS_URL``, or its master found through Sentinel.

With ``SW_REDIS_SENTINELS`` (``host:port,host:port,...``) every producer, worker and ``sw``
command asks the sentinels for the master named ``SW_REDIS_MASTER_NAME`` and follows a
failover: redis-py's Sentinel-managed connections look the master up again when they
reconnect. The URL still gives the password, user, database and TLS (its host is ignored).
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.connection import SSLConnection, parse_url
from redis.sentinel import Sentinel

from sw_core.exceptions import ConfigError
from sw_core.settings import Settings


def sentinel_addresses(settings: Settings) -> list[tuple[str, int]]:
    """``SW_REDIS_SENTINELS`` as ``[(host, port), ...]`` (empty when unset)."""
    out: list[tuple[str, int]] = []
    for item in settings.redis_sentinels.split(","):
        item = item.strip()
        if not item:
            continue
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"SW_REDIS_SENTINELS: {item!r} is not host:port")
        out.append((host, int(port)))
    return out


def master_connection_kwargs(settings: Settings) -> dict[str, Any]:
    """Connection options of ``SW_REDIS_URL`` without its address (for Sentinel's master)."""
    kwargs = parse_url(settings.redis_url)
    for name in ("host", "port", "path"):
        kwargs.pop(name, None)
    if kwargs.pop("connection_class", None) is SSLConnection:
        kwargs["ssl"] = True
    return kwargs


def queue_redis(settings: Settings, **options: Any) -> aioredis.Redis:
    """An asyncio client of the queue Redis (through Sentinel when configured)."""
    sentinels = sentinel_addresses(settings)
    if not sentinels:
        return aioredis.Redis.from_url(settings.redis_url, **options)
    sentinel = AsyncSentinel(sentinels, sentinel_kwargs=_sentinel_kwargs(settings))
    return sentinel.master_for(
        settings.redis_master_name, **{**master_connection_kwargs(settings), **options}
    )


def queue_redis_sync(settings: Settings, **options: Any) -> redis.Redis:
    """A synchronous client of the queue Redis (through Sentinel when configured)."""
    sentinels = sentinel_addresses(settings)
    if not sentinels:
        return redis.Redis.from_url(settings.redis_url, **options)
    sentinel = Sentinel(sentinels, sentinel_kwargs=_sentinel_kwargs(settings))
    return sentinel.master_for(
        settings.redis_master_name, **{**master_connection_kwargs(settings), **options}
    )


def _sentinel_kwargs(settings: Settings) -> dict[str, Any]:
    timeout_s = min(settings.timeout_seconds, 5.0)
    return {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
