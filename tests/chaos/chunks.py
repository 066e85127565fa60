"""Small chunk sets for the chaos scenarios, and the hostile files that replace their chunks.

:func:`write_chunk_set` writes real safetensors chunks (``safetensors.numpy``, no torch)
and a manifest with their sha256. The ``*_bytes`` helpers build what an attacker or a bad
disk would put in a chunk's place: a flipped byte, a pickle whose ``__reduce__`` writes a
canary file if it is ever unpickled, headers that lie about sizes or overlap, and a header
length of many gigabytes.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import pickle
import struct
from pathlib import Path

import numpy as np
from safetensors.numpy import save as save_numpy

from sw_core.chunks.manifest import ChunkInfo, Manifest
from sw_core.hashing import hex_digest

#: Whether :func:`write_chunk_set` records a BLAKE3 digest per chunk (the BLAKE3 variants of
#: the scenarios set it; the default keeps the sha256-only chunk sets of older versions).
RECORD_BLAKE3 = False


def tensor_chunk(seed: int, rows: int = 64, cols: int = 256) -> bytes:
    """A safetensors blob with one weight and one bias (float32), deterministic per seed."""
    rng = np.random.default_rng(seed)
    return save_numpy(
        {
            "weight": rng.standard_normal((rows, cols), dtype=np.float32),
            "bias": rng.standard_normal((cols,), dtype=np.float32),
        }
    )


def write_chunk_set(
    folder: Path, *, name: str = "tiny", n_chunks: int = 4, rows: int = 64, seed: int = 0
) -> Manifest:
    """A chunk set of ``n_chunks`` real safetensors chunks plus its manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    chunks: list[ChunkInfo] = []
    for i in range(n_chunks):
        data = tensor_chunk(seed * 1000 + i, rows=rows)
        chunk_name = f"block_{i:03d}"
        (folder / f"{chunk_name}.safetensors").write_bytes(data)
        chunks.append(
            ChunkInfo(
                name=chunk_name,
                file=f"{chunk_name}.safetensors",
                size_bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                blake3=hex_digest("blake3", data) if RECORD_BLAKE3 else None,
                tensors=["weight", "bias"],
                role="block",
                stack="layers",
                index=i,
                param_bytes=len(data),
            )
        )
    manifest = Manifest(
        name=name, architecture="chaos", model_class="none", dtype="float32", chunks=chunks
    )
    manifest.save(folder)
    return manifest


def replace_chunk(folder: Path, manifest: Manifest, index: int, data: bytes) -> Manifest:
    """Put ``data`` in chunk ``index``'s file AND its manifest entry (a consistent forgery)."""
    old = manifest.chunks[index]
    (folder / old.file).write_bytes(data)
    forged = ChunkInfo(
        **{
            **old.__dict__,
            "size_bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "blake3": hex_digest("blake3", data) if old.blake3 else None,
        }
    )
    chunks = list(manifest.chunks)
    chunks[index] = forged
    updated = Manifest(**{**manifest.__dict__, "chunks": chunks})
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
