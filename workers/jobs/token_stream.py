"""Writing a generate job's events to its token stream (``sw:job:<id>:tokens``).

Events are appended with ``XADD ... MAXLEN ~ token_stream_max_len`` and the key's TTL is set
to the result TTL, in one pipeline per decode step for every job that advanced. Appends are
plain writes, no read-modify-write. Streaming is best effort: a failed write is logged and
the job goes on (its result is written as always; a reader then times out or sees ``final``
from the job's status). Event fields are documented in :mod:`producer.streaming`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis

from sw_core.engine.tasks.stopping import pending_stop
from sw_core.keys import Keys
from sw_core.settings import Settings

log = logging.getLogger(__name__)


class TokenStreams:
    """Appends events to the token streams of the jobs of one worker."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.keys = Keys(settings.key_prefix)
        self.max_len = settings.token_stream_max_len
        self.ttl_s = settings.result_ttl_s
        #: Bytes of event fields written (for the serving benchmark).
        self.bytes_written = 0

    async def write(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Append ``(job_id, fields)`` events, in order, in one round trip."""
        if not events:
            return
        touched: set[str] = set()
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id, fields in events:
                    key = self.keys.job_tokens(job_id)
                    clean = {k: str(v) for k, v in fields.items() if v is not None}
                    self.bytes_written += sum(len(k) + len(v.encode()) for k, v in clean.items())
                    # redis-py wants a dict of its own key and value unions (dicts are invariant)
                    pipe.xadd(key, clean, maxlen=self.max_len, approximate=True)  # type: ignore[arg-type]
                    touched.add(key)
                for key in touched:
                    pipe.expire(key, self.ttl_s)
                await pipe.execute()
        except Exception as exc:  # streaming is best effort: the result is what counts
            log.warning("could not write %d token events: %s", len(events), exc)


class TextDeltas:
    """Turns one sequence's growing token list into text deltas whose concatenation is the
    final text. A delta is held back while the text ends in an incomplete character, and
    while its tail could be the beginning of one of ``stops`` (so no part of a stop sequence
    is ever sent; the tail goes out once the next tokens rule the stop sequence out, or at
    the end)."""

    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str] = ()) -> None:
        self.decode = decode
        self.stops = tuple(stops)
        self.sent = ""

    def next(self, token_ids: list[int], *, final: bool = False, end: int | None = None) -> str:
        """The text not sent yet; with ``final``, everything that is left. ``end``: where the
        final text ends (a sequence stopped by a stop sequence: where that begins)."""
        text = str(self.decode(token_ids))[:end]
        if not final:
            if text.endswith("\ufffd") or not text.startswith(self.sent):
                return ""
            text = text[: len(text) - pending_stop(text, self.stops)]
            if len(text) < len(self.sent):
                return ""
        # (at the end, a tokenizer that rewrote earlier text cannot be undone: rare)
        delta = text[len(self.sent) :]
        self.sent += delta
        return delta
