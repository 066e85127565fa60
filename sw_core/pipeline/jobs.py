"""The job model shared by producers and workers: wire format, validation and limits.

A job travels as one entry of the Redis stream ``sw:jobs``. Producers write these fields:

- ``job_id``, ``model``, ``task`` -- text;
- ``payload`` -- msgpack of ``{"inputs": [...], "params": {...}}``;
- ``attempt`` (1-based), ``submitted_ms`` -- decimal text;
- ``counted`` -- ``1``: ``total_requests`` was already counted for this job;
- ``first_failure_ms`` -- set on retries, for the dead-letter record;
- ``deadline_ms`` -- optional: the job is not started after this time (ms since the epoch)
  and a running generate job stops there (status ``expired``). A hand-added entry may give
  ``deadline_s`` instead: seconds after the entry was added.

``attempt``, ``counted``, ``first_failure_ms`` and ``submitted_ms`` are internal: an entry
in the text form (below) may not set them, and ``attempt`` is at most ``retry_attempts``.
``counted`` is believed only for a job a producer registered (see
:meth:`sw_core.pipeline.store.JobStore.start`). A field given twice is refused.

An entry added by hand is accepted too (``XADD sw:jobs '*' model minilm task embed text
"hello"``): ``text`` is one input, ``inputs`` a JSON list, any other field a parameter given
as text and coerced by the task's parameter schema. Its job id is the stream entry id.

Everything read from the stream is untrusted: :func:`decode_entry` checks sizes *before*
parsing, unpacks msgpack with hard limits, and validates the task, inputs and parameters
(rules in :mod:`sw_core.pipeline.job_checks`); any problem is a
:class:`~sw_core.exceptions.JobError` with a reason a user can act on.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from sw_core.exceptions import JobError
from sw_core.pipeline.job_checks import (
    check_inputs,
    check_name,
    check_outputs,
    coerce_params,
    validate_request,
)
from sw_core.schema import (
    MAX_FIELDS,
    MAX_INPUTS,
    MAX_TOKEN_IDS,
    Task,
    check_params,
    check_task,
    short,
)
from sw_core.settings import Settings

#: Deepest nesting a payload may have ({"inputs": [[token, ...]]} is 3 deep).
MAX_DEPTH = 4
#: Room for the small fields of an entry beside its payload.
ENTRY_OVERHEAD_BYTES = 4096

#: Fields with a meaning of their own; every other field of a hand-added entry is a param.
META_FIELDS = frozenset(
    {
        "job_id",
        "model",
        "task",
        "payload",
        "attempt",
        "submitted_ms",
        "counted",
        "first_failure_ms",
        "deadline_ms",
        "deadline_s",
    }
)
#: Fields only producers and workers write: refused in an entry added by hand.
INTERNAL_FIELDS = frozenset({"attempt", "submitted_ms", "counted", "first_failure_ms"})
_INPUT_FIELDS = frozenset({"text", "inputs"})
_JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")

__all__ = [
    "Job",
    "coerce_params",
    "decode_entry",
    "encode_job",
    "job_id_of",
    "now_ms",
    "pack_payload",
    "unpack_limited",
    "validate_request",
]


@dataclass
class Job:
    """One job as a worker sees it.

    ``entry_id`` is the stream entry that carried this attempt; ``job_id`` stays the same
    across retries (for a hand-added entry it is the first entry's id).
    """

    job_id: str
    model: str
    task: str
    inputs: list[Any]
    params: dict[str, Any] = field(default_factory=dict)
    attempt: int = 1
    entry_id: str = ""
    submitted_ms: int = 0
    #: How often the stream delivered this entry (1 unless a worker died holding it).
    deliveries: int = 1
    #: ``total_requests`` was already counted (by the producer or an earlier attempt).
    counted: bool = True
    first_failure_ms: int | None = None
    #: Not started after this time, stopped there when running (ms since the epoch).
    deadline_ms: int | None = None


# ---------------------------------------------------------------------------- encoding
def pack_payload(inputs: list[Any], params: Mapping[str, Any]) -> bytes:
    """msgpack of ``{"inputs", "params"}`` (the ``payload`` field)."""
    return msgpack.packb({"inputs": inputs, "params": dict(params)}, use_bin_type=True)


def encode_job(job: Job, *, max_payload_bytes: int | None = None) -> dict[str, bytes]:
    """Stream fields of ``job`` for ``XADD`` (the producer wire format).

    Raises:
        JobError: the payload is over ``max_payload_bytes``.
    """
    payload = pack_payload(job.inputs, job.params)
    if max_payload_bytes is not None and len(payload) > max_payload_bytes:
        raise JobError(
            f"job payload is {len(payload)} bytes, over max_payload_bytes={max_payload_bytes}; "
            "send fewer or shorter inputs"
        )
    fields = {
        "job_id": job.job_id.encode(),
        "model": job.model.encode(),
        "task": job.task.encode(),
        "payload": payload,
        "attempt": str(job.attempt).encode(),
        "submitted_ms": str(job.submitted_ms or now_ms()).encode(),
    }
    if job.counted:
        fields["counted"] = b"1"
    if job.first_failure_ms is not None:
        fields["first_failure_ms"] = str(job.first_failure_ms).encode()
    if job.deadline_ms is not None:
        fields["deadline_ms"] = str(job.deadline_ms).encode()
    return fields


# ---------------------------------------------------------------------------- decoding
def unpack_limited(data: bytes, settings: Settings) -> Any:
    """msgpack with hard limits on every length and on nesting depth.

    Raises:
        JobError: oversized, not msgpack, or nested deeper than :data:`MAX_DEPTH`.
    """
    if len(data) > settings.max_payload_bytes:
        raise JobError(
            f"payload is {len(data)} bytes, over max_payload_bytes={settings.max_payload_bytes}"
        )
    unpacker = msgpack.Unpacker(
        raw=False,
        strict_map_key=True,
        max_buffer_size=settings.max_payload_bytes,
        max_str_len=settings.max_payload_bytes,
        max_bin_len=settings.max_payload_bytes,
        max_array_len=max(MAX_INPUTS, settings.max_input_tokens or MAX_TOKEN_IDS),
        max_map_len=MAX_FIELDS,
        max_ext_len=0,
    )
    try:
        unpacker.feed(data)
        value = unpacker.unpack()
    except msgpack.StackError:
        raise JobError("payload is nested too deeply") from None
    except msgpack.OutOfData:
        raise JobError("payload is not valid msgpack: it ends too early") from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise JobError(f"payload is not valid msgpack: {exc or type(exc).__name__}") from None
    if unpacker.tell() != len(data):
        raise JobError(f"payload has {len(data) - unpacker.tell()} bytes after its msgpack value")
    if _depth(value) > MAX_DEPTH:
        raise JobError(f"payload is nested deeper than {MAX_DEPTH} levels")
    return value


def _depth(value: Any) -> int:
    """Nesting depth of lists/maps, iteratively (no recursion on untrusted data)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, tuple)):
            children = item
        elif isinstance(item, dict):
            children = list(item.values())
        else:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            return depth
        stack.extend((child, depth + 1) for child in children)
    return deepest


class _Fields(dict[str, bytes]):
    duplicates: tuple[str, ...] = ()


def decode_fields(fields: Mapping[Any, Any]) -> dict[str, bytes]:
    """Stream entry fields with text names and bytes values (as redis-py returns them).

    The names of repeated fields (:class:`~sw_core.pipeline.stream_fields.EntryFields`) are
    kept, so :func:`decode_entry` can refuse them.
    """
    out = _Fields()
    for key, value in fields.items():
        name = key.decode("utf-8", "replace") if isinstance(key, (bytes, bytearray)) else str(key)
        out[name] = value if isinstance(value, bytes) else str(value).encode()
    out.duplicates = tuple(getattr(fields, "duplicates", ()))
    return out


def job_id_of(entry_id: str, fields: Mapping[str, bytes]) -> str:
    """The job id an entry stands for: its ``job_id`` field if sane, else the entry id."""
    raw = fields.get("job_id")
    if raw is not None:
        text = raw.decode("utf-8", "replace")
        if _JOB_ID_RE.fullmatch(text):
            return text
    return entry_id


def decode_entry(entry_id: str | bytes, fields: Mapping[Any, Any], settings: Settings) -> Job:
    """Turn a stream entry into a validated :class:`Job`.

    Raises:
        JobError: the entry is oversized, malformed, or asks for something unsupported;
            the message says which field is wrong and why.
    """
    entry = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    size = sum(len(k) + len(v) for k, v in fields.items())
    if size > settings.max_payload_bytes + ENTRY_OVERHEAD_BYTES:
        raise JobError(
            f"entry is {size} bytes, over max_payload_bytes={settings.max_payload_bytes}"
        )
    if len(fields) > MAX_FIELDS:
        raise JobError(f"entry has {len(fields)} fields; at most {MAX_FIELDS} are allowed")
    raw = decode_fields(fields)
    duplicates: tuple[str, ...] = getattr(raw, "duplicates", ())
    if duplicates:
        names = ", ".join(name[:40] for name in duplicates[:5])
        raise JobError(f"field(s) {names} given more than once; give each field once")
    job_id = entry
    if "job_id" in raw:
        job_id = _text(raw, "job_id")
        if not _JOB_ID_RE.fullmatch(job_id):
            raise JobError(f"job_id {short(job_id)} is not a valid id")
    if "model" not in raw or "task" not in raw:
        missing = [name for name in ("model", "task") if name not in raw]
        raise JobError(f"entry lacks the field(s) {', '.join(missing)}")
    model = check_name(_text(raw, "model"), "model")
    task = check_task(_text(raw, "task"))
    if "payload" in raw:
        extra = sorted(set(raw) - META_FIELDS)
        if extra:
            raise JobError(f"unexpected field(s) beside payload: {', '.join(extra)}")
        body = unpack_limited(raw["payload"], settings)
        if not isinstance(body, dict) or "inputs" not in body:
            raise JobError("payload must be a map with 'inputs' (and optional 'params')")
        unknown = sorted(repr(key) for key in set(body) - {"inputs", "params"})
        if unknown:
            raise JobError(f"payload has unknown key(s): {', '.join(unknown)[:200]}")
        inputs = check_inputs(task, body["inputs"], settings)
        params = check_params(task, body.get("params") or {}, settings)
    else:
        inputs = _hand_inputs(task, raw, settings)
        text_params = {k: v for k, v in raw.items() if k not in META_FIELDS | _INPUT_FIELDS}
        params = check_params(task, text_params, settings, from_text=True)
    check_outputs(len(inputs), params)
    attempt = _int_field(raw, "attempt", 1, low=1)
    submitted = _int_field(raw, "submitted_ms", _entry_ms(entry), low=0)
    first_failure = _int_field(raw, "first_failure_ms", 0, low=0) or None
    deadline = _deadline(raw, _entry_ms(entry))
    internal = sorted(INTERNAL_FIELDS & set(raw))
    if internal and "payload" not in raw:
        raise JobError(
            f"field(s) {', '.join(internal)} are set by producers and workers only, "
            "not in an entry added by hand"
        )
    if attempt > settings.retry_attempts:
        raise JobError(f"field attempt={attempt} is over retry_attempts={settings.retry_attempts}")
    return Job(
        job_id=job_id,
        model=model,
        task=task,
        inputs=inputs,
        params=params,
        attempt=attempt,
        entry_id=entry,
        submitted_ms=submitted,
        counted=raw.get("counted") == b"1",
        first_failure_ms=first_failure,
        deadline_ms=deadline,
    )


def _deadline(raw: Mapping[str, bytes], added_ms: int) -> int | None:
    """``deadline_ms`` as given, or ``deadline_s`` counted from when the entry was added."""
    if "deadline_ms" in raw:
        return _int_field(raw, "deadline_ms", 0, low=1)
    if "deadline_s" not in raw:
        return None
    try:
        seconds = float(raw["deadline_s"])
    except ValueError:
        raise JobError(f"field deadline_s={short(raw['deadline_s'])} is not a number") from None
    if not seconds > 0 or seconds > 10**9:
        raise JobError(f"field deadline_s={seconds:g} must be > 0")
    return added_ms + int(seconds * 1000)


def _hand_inputs(task: Task, raw: Mapping[str, bytes], settings: Settings) -> list[Any]:
    if "text" in raw and "inputs" in raw:
        raise JobError("give either 'text' (one input) or 'inputs' (a JSON list), not both")
    size = len(raw.get("text", b"")) + len(raw.get("inputs", b""))
    if size > settings.max_payload_bytes:
        raise JobError(
            f"inputs are {size} bytes, over max_payload_bytes={settings.max_payload_bytes}"
        )
    if "text" in raw:
        if task == "forward":
            raise JobError("a forward job takes token ids: give 'inputs' as a JSON list of lists")
        return check_inputs(task, [_text(raw, "text")], settings)
    if "inputs" not in raw:
        raise JobError("entry has no inputs: give 'payload', 'text' or 'inputs'")
    try:
        value = json.loads(raw["inputs"])
    except (ValueError, RecursionError) as exc:
        raise JobError(f"'inputs' is not a JSON list: {exc}") from None
    if _depth(value) > MAX_DEPTH:
        raise JobError(f"'inputs' is nested deeper than {MAX_DEPTH} levels")
    return check_inputs(task, value, settings)


def _text(raw: Mapping[str, bytes], name: str) -> str:
    try:
        return raw[name].decode("utf-8")
    except UnicodeDecodeError:
        raise JobError(f"field {name} is not valid UTF-8 text") from None


def _int_field(raw: Mapping[str, bytes], name: str, default: int, *, low: int) -> int:
    if name not in raw:
        return default
    try:
        value = int(raw[name])
    except ValueError:
        raise JobError(f"field {name}={short(raw[name])} is not a whole number") from None
    if value < low:
        raise JobError(f"field {name}={value} must be >= {low}")
    return value


def _entry_ms(entry_id: str) -> int:
    head = entry_id.split("-", 1)[0]
    return int(head) if head.isdigit() else now_ms()


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch (what Redis stream ids use)."""
    return int(time.time() * 1000)
