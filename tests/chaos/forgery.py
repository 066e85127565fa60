"""The hostile files that replace the chunks of a chaos chunk set
(:func:`tests.support.storage.write_chunk_set`).

The ``*_bytes`` helpers build what an attacker or a bad disk would put in a chunk's place: a
flipped byte, a pickle whose ``__reduce__`` writes a canary file if it is ever unpickled,
headers that lie about sizes or overlap, and a header length of many gigabytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import pickle
import struct
from pathlib import Path

from sw_core.chunks.manifest import Manifest
from sw_core.hashing import hex_digest


def replace_chunk(folder: Path, manifest: Manifest, index: int, data: bytes) -> Manifest:
    """Put ``data`` in chunk ``index``'s file AND its manifest entry (a consistent forgery)."""
    old = manifest.chunks[index]
    (folder / old.file).write_bytes(data)
    forged = dataclasses.replace(
        old,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        blake3=hex_digest("blake3", data) if old.blake3 else None,
    )
    chunks = list(manifest.chunks)
    chunks[index] = forged
    updated = dataclasses.replace(manifest, chunks=chunks)
    updated.save(folder)
    return updated


def flip_byte(data: bytes, offset: int | None = None) -> bytes:
    """``data`` with one bit flipped (in the tensor data, by default near the end)."""
    at = len(data) - 17 if offset is None else offset
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


class _Canary:
    """Unpickling this calls ``Path(canary).write_text(...)``: proof that pickle ran."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (pathlib.Path.write_text, (pathlib.Path(self.canary), "unpickled: code ran"))


def pickle_bomb_bytes(canary: Path) -> bytes:
    """A pickle that writes ``canary`` when loaded (``torch.load``/``pickle.loads``)."""
    return pickle.dumps(_Canary(canary), protocol=4)


def _with_header(header: dict[str, object], body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def lying_size_bytes() -> bytes:
    """A header whose shape needs 16 KiB of data while its offsets hold 64 bytes."""
    return _with_header(
        {"w": {"dtype": "F32", "shape": [64, 64], "data_offsets": [0, 64]}}, b"\0" * 64
    )


def overlapping_bytes() -> bytes:
    """Two tensors whose byte ranges overlap (a classic aliasing trick)."""
    return _with_header(
        {
            "a": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]},
            "b": {"dtype": "F32", "shape": [16], "data_offsets": [32, 96]},
        },
        b"\0" * 96,
    )


def past_the_end_bytes() -> bytes:
    """Offsets that point past the end of the data."""
    return _with_header(
        {"w": {"dtype": "F32", "shape": [1024], "data_offsets": [0, 4096]}}, b"\0" * 64
    )


def oversized_header_bytes() -> bytes:
    """A header length field of 8 GiB in front of a few bytes."""
    return struct.pack("<Q", 8 << 30) + b'{"w": {}}'
