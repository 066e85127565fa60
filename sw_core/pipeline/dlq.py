"""Dead letters: list, show, replay and purge the entries of ``sw:dlq``.

Workers write a dead letter (see ``sw_core.pipeline.store.JobStore.dead_letter``) when a job failed
permanently, ran out of retries, was malformed or kept killing workers. Each letter keeps
the job's stream fields (msgpack map in ``fields``), so :meth:`DeadLetterQueue.replay` can
put the job back on ``sw:jobs`` once the fault is fixed: one Lua script adds the entry
(``attempt`` reset to 1, ``total_requests`` not counted again), marks the job hash
``queued``, bumps its ``replays`` count and removes the letter -- all or nothing, and a
letter can be replayed only once.

Example:
    >>> dlq = DeadLetterQueue(redis.Redis.from_url(url), settings)  # doctest: +SKIP
    >>> for letter in dlq.list():  # doctest: +SKIP
    ...     print(letter.id, letter.error_type, letter.error)
    >>> dlq.replay(letter.id)  # doctest: +SKIP
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field
from typing import Any

import msgpack

from sw_core.exceptions import JobError
from sw_core.keys import Keys
from sw_core.lua_scripts import lua_source
from sw_core.pipeline.jobs import now_ms, unpack_limited
from sw_core.settings import Settings

#: Letters of entries that could not be decoded (replaying them fails again) or that carried
#: the job id of another job (replaying one would let it overwrite that job).
UNREPLAYABLE_REASONS = frozenset({"malformed", "duplicate_job_id"})
#: Fields of a replayed entry that are reset or dropped (the rest is kept as written).
_RESET_FIELDS = {"attempt": b"1", "counted": b"1"}
_DROPPED_FIELDS = ("first_failure_ms",)
_ENTRY_ID_CHARS = set("0123456789-")


@dataclass
class DeadLetter:
    """One entry of the dead-letter stream."""

    id: str
    job_id: str
    model: str
    task: str
    attempts: int
    error_type: str
    error: str
    reason: str
    worker: str
    submitted_ms: int | None
    first_failure_ms: int | None
    last_failure_ms: int | None
    truncated: bool
    #: The job's stream fields as they were (empty when the letter had none).
    fields: dict[str, bytes] = field(default_factory=dict)
    #: How often this job was replayed before (from its job hash; 0 when unknown).
    replays: int = 0

    @property
    def replayable(self) -> bool:
        """False for letters cut to size, without fields, or of undecodable entries."""
        return bool(self.fields) and not self.truncated and self.reason not in UNREPLAYABLE_REASONS

    def why_not_replayable(self) -> str | None:
        if self.truncated:
            return "its fields were cut to 64 KiB when it was dead-lettered; resubmit the job"
        if not self.fields:
            return "it holds no job fields to replay"
        if self.reason in UNREPLAYABLE_REASONS:
            return f"it was dead-lettered as {self.reason}: the entry itself is invalid"
        return None

    def payload(self, settings: Settings | None = None) -> Any:
        """The job's decoded ``payload`` field (inputs and params), None if absent or bad.

        Decoded with the workers' own limits (:func:`sw_core.pipeline.jobs.unpack_limited`).
        """
        raw = self.fields.get("payload")
        if raw is None:
            return None
        try:
            return unpack_limited(raw, settings or Settings())
        except JobError:
            return None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view (field values as text)."""
        return {
            "id": self.id,
            "job_id": self.job_id,
            "model": self.model,
            "task": self.task,
            "attempts": self.attempts,
            "replays": self.replays,
            "error_type": self.error_type,
            "error": self.error,
            "reason": self.reason,
            "worker": self.worker,
            "submitted_ms": self.submitted_ms,
            "first_failure_ms": self.first_failure_ms,
            "last_failure_ms": self.last_failure_ms,
            "truncated": self.truncated,
            "replayable": self.replayable,
            "fields": {
                k: v.decode("utf-8", "replace") for k, v in self.fields.items() if k != "payload"
            },
            "payload": self.payload(),
        }


class DeadLetterQueue:
    """Operations on ``sw:dlq`` through a synchronous ``redis.Redis`` client (typed Any:
    redis-py types its replies as sync|async unions)."""

    def __init__(self, redis: Any, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self._replay = redis.register_script(lua_source("dlq_replay"))

    def count(self) -> int:
        """Number of dead letters."""
        return int(self.redis.xlen(self.keys.dlq))

    def list(self, count: int = 100, *, newest_first: bool = False) -> list[DeadLetter]:
        """Up to ``count`` letters, oldest first (``newest_first`` for the latest)."""
        if newest_first:
            entries = self.redis.xrevrange(self.keys.dlq, count=count)
        else:
            entries = self.redis.xrange(self.keys.dlq, count=count)
        letters = [_letter(entry_id, fields) for entry_id, fields in entries]
        self._add_replays(letters)
        return letters

    def show(self, entry_id: str) -> DeadLetter:
        """One letter by its entry id.

        Raises:
            JobError: no such letter.
        """
        entry_id = _check_id(entry_id)
        entries = self.redis.xrange(self.keys.dlq, entry_id, entry_id)
        if not entries:
            raise JobError(f"no dead letter {entry_id} in {self.keys.dlq} (see `sw dlq list`)")
        letter = _letter(*entries[0])
        self._add_replays([letter])
        return letter

    def replay(self, entry_id: str) -> tuple[str, int]:
        """Put a letter's job back on the jobs stream; returns ``(new entry id, replays)``.

        Raises:
            JobError: no such letter (or replayed/purged meanwhile), or it cannot be
                replayed (see :meth:`DeadLetter.why_not_replayable`).
        """
        letter = self.show(entry_id)
        why = letter.why_not_replayable()
        if why is not None:
            raise JobError(f"dead letter {letter.id} cannot be replayed: {why}")
        fields = {k: v for k, v in letter.fields.items() if k not in _DROPPED_FIELDS}
        fields.update(_RESET_FIELDS)
        if "job_id" not in fields:
            # a hand-added entry's job id was its first entry id: keep it across the replay
            fields["job_id"] = letter.job_id.encode()
        args: list[Any] = [letter.id, now_ms(), self.settings.result_ttl_s]
        for name, value in fields.items():
            args += [name, value]
        reply = self._replay(
            keys=[
                self.keys.dlq,
                self.keys.jobs,
                self.keys.job(letter.job_id),
                self.keys.job_done(letter.job_id),
            ],
            args=args,
        )
        if not reply:
            raise JobError(f"dead letter {letter.id} was replayed or purged meanwhile")
        new_id, replays = reply
        return _text(new_id), int(replays)

    # ``list`` is a method from here on: annotations in the class body say builtins.list
    def replay_all(
        self, batch: int = 100
    ) -> tuple[builtins.list[tuple[str, str]], builtins.list[DeadLetter]]:
        """Replay every replayable letter; returns ``([(letter id, new entry id)], skipped)``.

        Letters that cannot be replayed stay in the stream and are returned as skipped.
        """
        done: list[tuple[str, str]] = []
        skipped: list[DeadLetter] = []
        start = "-"
        while True:
            entries = self.redis.xrange(self.keys.dlq, start, "+", count=batch)
            if not entries:
                break
            for entry_id, fields in entries:
                letter = _letter(entry_id, fields)
                if not letter.replayable:
                    skipped.append(letter)
                    continue
                try:
                    new_id, _ = self.replay(letter.id)
                except JobError:
                    continue  # replayed by someone else meanwhile
                done.append((letter.id, new_id))
            start = "(" + _text(entries[-1][0])
        return done, skipped

    def last_id(self) -> str | None:
        """Id of the newest letter, None when there is none."""
        entries = self.redis.xrevrange(self.keys.dlq, count=1)
        return _text(entries[0][0]) if entries else None

    def purge(self, up_to_id: str | None = None) -> int:
        """Delete every letter with an id up to ``up_to_id`` (all of them when None).

        Pass the newest id the operator saw, so letters written after the confirmation
        are kept. Returns the number deleted.
        """
        if up_to_id is None:
            up_to_id = self.last_id()
            if up_to_id is None:
                return 0
        ms, _, seq = _check_id(up_to_id).partition("-")
        # XTRIM MINID keeps ids >= the threshold: the id right after up_to_id.
        threshold = f"{ms}-{int(seq or 0) + 1}"
        return int(self.redis.xtrim(self.keys.dlq, minid=threshold, approximate=False))

    def _add_replays(self, letters: builtins.list[DeadLetter]) -> None:
        if not letters:
            return
        with self.redis.pipeline(transaction=False) as pipe:
            for letter in letters:
                pipe.hget(self.keys.job(letter.job_id), "replays")
            values = pipe.execute()
        for letter, value in zip(letters, values, strict=True):
            letter.replays = int(value) if value is not None else 0


# ---------------------------------------------------------------------------- parsing
def _letter(entry_id: Any, raw: dict[Any, Any]) -> DeadLetter:
    data = {_text(k): v for k, v in raw.items()}

    def text(name: str) -> str:
        value = data.get(name)
        return "" if value is None else _text(value)

    def number(name: str) -> int | None:
        try:
            return int(text(name))
        except ValueError:
            return None

    fields: dict[str, bytes] = {}
    packed = data.get("fields")
    if packed:
        try:
            unpacked = msgpack.unpackb(packed, raw=False, max_ext_len=0, strict_map_key=True)
        except Exception:
            unpacked = None
        if isinstance(unpacked, dict):
            fields = {
                str(k): v if isinstance(v, bytes) else str(v).encode() for k, v in unpacked.items()
            }
    entry = _text(entry_id)
    return DeadLetter(
        id=entry,
        job_id=text("job_id") or entry,
        model=text("model"),
        task=text("task"),
        attempts=number("attempts") or 0,
        error_type=text("error_type"),
        error=text("error"),
        reason=text("reason"),
        worker=text("worker"),
        submitted_ms=number("submitted_ms"),
        first_failure_ms=number("first_failure_ms"),
        last_failure_ms=number("last_failure_ms"),
        truncated=text("truncated") == "1",
        fields=fields,
    )


def _check_id(entry_id: str) -> str:
    entry_id = entry_id.strip()
    ms, sep, seq = entry_id.partition("-")
    if not ms.isdigit() or (sep and not seq.isdigit()) or not set(entry_id) <= _ENTRY_ID_CHARS:
        raise JobError(f"{entry_id!r} is not a stream entry id (like 1712345678901-0)")
    return entry_id


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)
