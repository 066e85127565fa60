"""Reading a generate job's token stream (``sw:job:<id>:tokens``) as it is written.

The worker appends events as the job runs (see :mod:`workers.jobs.token_stream`): ``start`` at
each attempt, ``token`` text deltas, ``end`` per input and ``final`` when the job ended. A
second ``start`` means a worker took the job over after a crash and generates it again from
the beginning: the reader gets ``{"type": "restart"}`` and should drop what it showed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis

from sw_core.exceptions import JobTimeoutError
from sw_core.keys import Keys
from sw_core.schema import FINAL_STATUSES, StreamEvent

#: Longest single block of one ``XREAD``; the job's status is checked after each.
_READ_SLICE_MS = 1000
_INT_FIELDS = frozenset(
    {
        "index",
        "step",
        "joined_step",
        "attempt",
        "deliveries",
        "inputs",
        "prompt_tokens",
        "completion_tokens",
    }
)

#: Fields that hold JSON (a ``token`` event's ``logprobs`` entries).
_JSON_FIELDS = frozenset({"logprobs"})


def parse_event(fields: dict[bytes, bytes]) -> dict[str, Any]:
    """One stream entry as a dict, with the numeric fields as integers."""
    event: dict[str, Any] = {}
    for name_b, value_b in fields.items():
        name = name_b.decode()
        value: Any = value_b.decode("utf-8", "replace")
        if name in _INT_FIELDS:
            try:
                value = int(value)
            except ValueError:
                pass
        elif name in _JSON_FIELDS:
            try:
                value = json.loads(value)
            except ValueError:
                pass
        event[name] = value
    return event


async def stream_events(
    redis: Redis, keys: Keys, job_id: str, *, timeout_s: float | None = 60
) -> AsyncIterator[dict[str, Any]]:
    """Yield the job's events until its ``final`` one.

    A job that ends without writing a ``final`` event (cancelled while queued, dead-lettered
    before it started, not a generate job) still ends the iteration: ``{"type": "final",
    "status": ...}`` is made from its status.

    Raises:
        JobTimeoutError: no event came for ``timeout_s`` seconds and the job did not end.
    """
    loop = asyncio.get_running_loop()
    key = keys.job_tokens(job_id)
    cursor = "0-0"
    starts = 0
    quiet_since = loop.time()
    while True:
        block_ms = _READ_SLICE_MS
        reply = await redis.xread({key: cursor}, count=256, block=block_ms)
        entries = reply[0][1] if reply else []
        for entry_id, fields in entries:
            cursor = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            event = parse_event(fields)
            if event.get("type") == StreamEvent.START:
                starts += 1
                if starts > 1:
                    yield {"type": StreamEvent.RESTART, "attempt": event.get("attempt")}
                continue
            yield event
            if event.get("type") == StreamEvent.FINAL:
                return
        if entries:
            quiet_since = loop.time()
            continue
        # redis-py types the async client's hash replies as sync|async unions (redis-py #2399)
        status_b = await redis.hget(keys.job(job_id), "status")  # type: ignore[misc]
        status = status_b.decode() if status_b else "unknown"
        if status in FINAL_STATUSES or status == "unknown":
            # a final event written just before the status changed is read first
            reply = await redis.xread({key: cursor}, count=256)
            if reply and reply[0][1]:
                continue
            yield {"type": StreamEvent.FINAL, "status": status}
            return
        if timeout_s is not None and loop.time() - quiet_since > timeout_s:
            raise JobTimeoutError(f"job {job_id}: no token for {timeout_s:g} s (status: {status})")
