"""The jobs stream as one consumer group sees it: the group, new entries and a consumer's
own pending ones, idle entries claimed from dead workers, claims kept alive.

:class:`JobStream` only reads and claims; the job-state transitions (start, results,
retries, dead letters, hand-back) are :class:`~sw_core.pipeline.store.JobStore`'s, which
builds on it.
"""

from __future__ import annotations

import contextlib

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from sw_core.keys import Keys
from sw_core.lua_scripts import lua_source
from sw_core.settings import Settings


def as_text(value: bytes | str) -> str:
    """A Redis reply value as text."""
    return value.decode() if isinstance(value, bytes) else value


class JobStream:
    """Reads and claims of the jobs stream through its consumer group.

    Args:
        redis: an asyncio client with ``decode_responses=False``.
        settings: ``claim_idle_ms`` and the key prefix.
    """

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self._refresh = redis.register_script(lua_source("pipeline_refresh"))

    @property
    def group(self) -> str:
        return self.keys.jobs_group

    async def ensure_group(self) -> None:
        """Create the consumer group (and the stream) unless it exists. Looked up first: a
        Redis out of memory refuses the create even of a group that exists."""
        with contextlib.suppress(ResponseError):  # no stream yet
            groups = await self.redis.xinfo_groups(self.keys.jobs)
            if any(as_text(group["name"]) == self.group for group in groups):
                return
        try:
            await self.redis.xgroup_create(self.keys.jobs, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # ------------------------------------------------------------------ reading
    async def read(
        self, consumer: str, start_id: str, count: int, block_ms: int | None
    ) -> list[tuple[str, dict[bytes, bytes] | None]]:
        """``XREADGROUP``: ``start_id`` ``>`` for new entries, an id for this consumer's own
        pending history. Deleted entries come back with ``None`` fields."""
        reply = await self.redis.xreadgroup(
            self.group, consumer, {self.keys.jobs: start_id}, count=count, block=block_ms
        )
        if not reply:
            return []
        return [(as_text(entry_id), fields or None) for entry_id, fields in reply[0][1]]

    async def autoclaim(
        self, consumer: str, cursor: str, count: int
    ) -> tuple[str, list[tuple[str, dict[bytes, bytes] | None]]]:
        """``XAUTOCLAIM`` entries idle longer than ``claim_idle_ms``; returns the next cursor."""
        reply = await self.redis.xautoclaim(
            self.keys.jobs,
            self.group,
            consumer,
            min_idle_time=self.settings.claim_idle_ms,
            start_id=cursor,
            count=count,
        )
        next_cursor, entries = as_text(reply[0]), reply[1]
        out: list[tuple[str, dict[bytes, bytes] | None]] = []
        for item in entries:
            # Redis 6.2 answers nil for a claimed entry deleted behind the group's back
            # (only an outside XDEL/XTRIM does that: workers delete after the ack).
            if item is None or item[0] is None:
                continue
            entry_id, fields = item
            out.append((as_text(entry_id), fields or None))
        return next_cursor, out

    async def ack_missing(self, entry_id: str) -> None:
        """Ack a pending entry whose data is gone (deleted): nothing can run it."""
        await self.redis.xack(self.keys.jobs, self.group, entry_id)

    async def refresh(self, entry_ids: list[str], consumer: str) -> list[str]:
        """Reset the idle time of entries still ours; returns those another worker owns."""
        if not entry_ids:
            return []
        lost = await self._refresh(keys=[self.keys.jobs], args=[self.group, consumer, *entry_ids])
        return [as_text(x) for x in lost]
