"""Small helpers shared across the library."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import TypeGuard

_HASH_BLOCK_BYTES = 8 << 20


def calculate_chunk_hash(
    path_or_bytes: str | os.PathLike[str] | bytes | bytearray | memoryview,
) -> str:
    """Return the sha256 hex digest of a chunk, given its path or its bytes.

    Example:
        >>> calculate_chunk_hash(b"abc")[:12]
        'ba7816bf8f01'
    """
    digest = hashlib.sha256()
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        digest.update(path_or_bytes)
        return digest.hexdigest()
    with Path(path_or_bytes).open("rb") as handle:
        while block := handle.read(_HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def mib(n_bytes: int) -> float:
    """Bytes as MiB, for messages."""
    return n_bytes / (1 << 20)


def human_bytes(n_bytes: int) -> str:
    """``n_bytes`` for people: ``"512.0 KiB"``, ``"86.7 MiB"``, ``"1.25 GiB"``."""
    if n_bytes < 1 << 20:
        return f"{n_bytes / 1024:.1f} KiB"
    if n_bytes < 1 << 30:
        return f"{mib(n_bytes):.1f} MiB"
    return f"{n_bytes / (1 << 30):.2f} GiB"


def is_int(value: object) -> bool:
    """An ``int`` that is not a ``bool`` (JSON and msgpack payloads may hold either)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: object) -> TypeGuard[int | float]:
    """An ``int`` or ``float``, not a ``bool``, neither infinite nor NaN."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


#: Most ``stop`` sequences in one generate request (OpenAI's limit).
MAX_STOP_SEQUENCES = 4
#: Most characters in one ``stop`` sequence.
MAX_STOP_CHARS = 256


def stop_sequences(value: object) -> list[str]:
    """A ``stop`` value (one string, or a list of up to :data:`MAX_STOP_SEQUENCES` non-empty
    strings of at most :data:`MAX_STOP_CHARS` characters) as a list.

    Raises:
        ValueError: the value breaks the rule; the message reads after the field's name
            (``f"'stop' {exc}"``).
    """
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ValueError(
            f"must be a string or a list of up to {MAX_STOP_SEQUENCES} strings, "
            f"got {type(value).__name__}"
        )
    if len(items) > MAX_STOP_SEQUENCES:
        raise ValueError(f"holds {len(items)} strings; at most {MAX_STOP_SEQUENCES} are allowed")
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"must hold strings only, got {type(item).__name__}")
        if not item:
            raise ValueError("holds an empty string; each stop sequence needs a character")
        if len(item) > MAX_STOP_CHARS:
            raise ValueError(
                f"holds a string of {len(item)} characters; at most {MAX_STOP_CHARS} are allowed"
            )
    return list(items)
