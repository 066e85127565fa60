"""Running the monitor's batches of Redis commands and reading their replies: each command
may fail on its own (a missing key, a server without a command) without failing the rest;
only a lost connection fails the batch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis as sync_redis
    import redis.asyncio as async_redis


async def execute_async(
    redis: async_redis.Redis, commands: Mapping[str, tuple[Any, ...]]
) -> dict[str, Any]:
    if not commands:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for args in commands.values():
            pipe.execute_command(*args)
        replies = await pipe.execute(raise_on_error=False)
    raise_connection_errors(replies)
    return dict(zip(commands, replies, strict=True))


def execute_sync(
    redis: sync_redis.Redis, commands: Mapping[str, tuple[Any, ...]]
) -> dict[str, Any]:
    if not commands:
        return {}
    with redis.pipeline(transaction=False) as pipe:
        for args in commands.values():
            pipe.execute_command(*args)
        replies = pipe.execute(raise_on_error=False)
    raise_connection_errors(replies)
    return dict(zip(commands, replies, strict=True))


def raise_connection_errors(replies: list[Any]) -> None:
    import redis.exceptions

    for reply in replies:
        if isinstance(reply, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
            raise reply


def ok_or(value: Any, default: Any) -> Any:
    """A pipeline reply, or ``default`` when the command failed (e.g. no such stream)."""
    return default if value is None or isinstance(value, Exception) else value


def find_group(groups: Any, name: str) -> dict[str, Any] | None:
    infos = ({as_text(k): v for k, v in group.items()} for group in ok_or(groups, []))
    return next((info for info in infos if as_text(info.get("name", "")) == name), None)


def group_lag(group: Mapping[str, Any]) -> int | None:
    """XINFO GROUPS ``lag`` (Redis >= 7; None when Redis cannot tell)."""
    value = group.get("lag")
    return None if value is None else as_int(value)


def as_pairs(value: Any) -> list[tuple[Any, float]]:
    """ZRANGE ... WITHSCORES reply as (member, score) pairs, whatever the client parsed."""
    value = ok_or(value, [])
    if value and not isinstance(value[0], (list, tuple)):
        value = list(zip(value[::2], value[1::2], strict=True))
    return [(member, float(score)) for member, score in value]


def as_text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)


def as_num(text: str) -> int | str:
    return int(text) if text.isdigit() and len(text) < 19 else text


def as_int(value: Any) -> int:
    try:
        return int(float(as_text(value)))
    except (TypeError, ValueError):
        return 0
