"""Stream entries read with every field kept: a field given twice is seen, not overwritten.

Redis lets ``XADD`` repeat a field name (``model nosuchmodel ... model minilm``); redis-py
turns an entry into a dict and silently keeps the last value. :func:`keep_duplicate_fields`
installs parsers for ``XREADGROUP`` and ``XAUTOCLAIM`` on one client that return
:class:`EntryFields` instead: the same dict, plus the names that were repeated, so the decoder
can refuse the entry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis.asyncio as aioredis


class EntryFields(dict[bytes, bytes]):
    """The fields of one stream entry; ``duplicates`` names the fields given more than once."""

    duplicates: tuple[str, ...] = ()


def entry_fields(flat: list[Any] | None) -> EntryFields | None:
    """``[name, value, ...]`` as :class:`EntryFields`; None for a deleted entry."""
    if flat is None:
        return None
    out = EntryFields()
    repeated: list[str] = []
    for name, value in zip(flat[0::2], flat[1::2], strict=True):
        if name in out:
            text = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
            if text not in repeated:
                repeated.append(text)
        out[name] = value
    out.duplicates = tuple(repeated)
    return out


def _entries(raw: list[Any] | None) -> list[tuple[Any, EntryFields | None]]:
    out: list[tuple[Any, EntryFields | None]] = []
    for item in raw or []:
        if item is None:
            out.append((None, None))
        else:
            out.append((item[0], entry_fields(item[1])))
    return out


def parse_xread(response: Any, **options: Any) -> Any:
    """Like redis-py's ``XREAD``/``XREADGROUP`` parser (RESP2), keeping duplicate fields."""
    if response is None:
        return []
    return [[stream, _entries(entries)] for stream, entries in response]


def parse_xautoclaim(response: Any, **options: Any) -> Any:
    """Like redis-py's ``XAUTOCLAIM`` parser (RESP2), keeping duplicate fields."""
    if options.get("parse_justid", False):
        return response[1]
    response[1] = _entries(response[1])
    return response


def keep_duplicate_fields(redis: aioredis.Redis) -> None:
    """Make ``redis`` (one client, RESP2) return :class:`EntryFields` from its stream reads."""
    redis.set_response_callback("XREADGROUP", parse_xread)
    redis.set_response_callback("XAUTOCLAIM", parse_xautoclaim)
