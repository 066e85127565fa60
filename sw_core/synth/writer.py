"""One safetensors chunk written tensor by tensor, never whole in memory, hashed as it goes.

The header is known from the names and shapes alone, so it is written first; then each
tensor's bytes are made piece by piece (``fill``) into one of two reused buffers while the
other one is hashed (sha256 and BLAKE3, for the manifest) and written by three helper
threads, one per stream so each sees the pieces in order (:class:`Sinks`): hashlib, blake3
and file writes release the GIL, so on two cores the slowest of them -- sha256 at about
1.5 GB/s -- sets the pace. The file is written under a temporary name,
fsynced, dropped from the page cache (a chunk set larger than memory must not evict
everything else, and a benchmark's cold read must be cold) and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sw_core.hashing import new_hasher

#: Bytes made, hashed and written per step.
PIECE_BYTES = 16 << 20
#: safetensors dtype names by numpy itemsize of the raw bits this writer fills.
ST_DTYPES = {
    "bfloat16": ("BF16", 2),
    "float16": ("F16", 2),
    "float32": ("F32", 4),
    "uint8": ("U8", 1),
    "int8": ("I8", 1),
}
#: The data section starts on a multiple of this (as ``save_aligned`` writes packed chunks).
DATA_ALIGN = 64

#: ``fill(name, first_element, out)`` writes the elements of tensor ``name`` from
#: ``first_element`` on into ``out`` (a numpy array of the tensor's raw item type).
Fill = Callable[[str, int, np.ndarray], None]


@dataclass(frozen=True)
class TensorSpec:
    """A tensor of a chunk: its name, shape and stored dtype (``bfloat16``, ``uint8``...)."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "bfloat16"

    @property
    def itemsize(self) -> int:
        return ST_DTYPES[self.dtype][1]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.itemsize


@dataclass(frozen=True)
class WrittenChunk:
    """What the manifest records of a written chunk."""

    size_bytes: int
    param_bytes: int
    sha256: str
    blake3: str
    #: ``kernel_bytes``, ``kernel_sha256``, ``kernel_blake3`` of the manifest entry when
    #: the chunk has a tail (:func:`write_chunk`), else empty.
    kernel: dict[str, int | str] = field(default_factory=dict)


def header_bytes(tensors: list[TensorSpec], metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors header (length prefix included), padded so the data starts 64-aligned."""
    entries: dict[str, object] = {}
    if metadata:
        entries["__metadata__"] = metadata
    offset = 0
    for spec in tensors:
        entries[spec.name] = {
            "dtype": ST_DTYPES[spec.dtype][0],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % DATA_ALIGN)
    return len(text).to_bytes(8, "little") + text


class Sinks:
    """The three helper threads of :func:`write_chunk` (sha256, BLAKE3, the file), each a
    queue of its own so pieces reach it in order; close them with :meth:`close`."""

    def __init__(self) -> None:
        self.sha256, self.blake3, self.file = (
            ThreadPoolExecutor(1, thread_name_prefix=f"sw-synth-{n}")
            for n in ("sha256", "blake3", "write")
        )

    def close(self) -> None:
        for pool in (self.sha256, self.blake3, self.file):
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Sinks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_chunk(
    path: Path,
    tensors: list[TensorSpec],
    fill: Fill,
    *,
    sinks: Sinks,
    metadata: dict[str, str] | None = None,
    on_bytes: Callable[[int], None] | None = None,
    tail: frozenset[str] = frozenset(),
) -> WrittenChunk:
    """Write one chunk to ``path`` atomically; its size and digests.

    ``sinks`` hash and write the pieces; ``on_bytes`` is told how many bytes each step
    wrote (a progress bar). ``tail``: names of tensors that come last in ``tensors`` (the
    exact scales, :func:`aligned_order`); the digests of the bytes before them are taken
    too (the chunk's kernel prefix).
    """
    sha256, blake3 = hashlib.sha256(), new_hasher("blake3")
    head = header_bytes(tensors, metadata)
    buffers = [np.empty(PIECE_BYTES, dtype=np.uint8) for _ in range(2)]
    pending: list[list[Future[object]]] = [[], []]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    size = 0
    kernel: dict[str, int | str] = {}
    try:
        with open(fd, "wb", buffering=0) as handle:

            def emit(data: memoryview, slot: int) -> None:
                nonlocal size
                pending[slot] = [
                    sinks.sha256.submit(sha256.update, data),
                    sinks.blake3.submit(blake3.update, data),
                    sinks.file.submit(_write_all, handle, data),
                ]
                size += data.nbytes
                if on_bytes is not None:
                    on_bytes(data.nbytes)

            emit(memoryview(head), 0)
            slot = 1
            for spec in tensors:
                if spec.name in tail and not kernel:  # every byte before it is hashed
                    _wait(pending[0])
                    _wait(pending[1])
                    kernel = {
                        "kernel_bytes": size,
                        "kernel_sha256": sha256.copy().hexdigest(),
                        "kernel_blake3": blake3.copy().hexdigest(),
                    }
                per_piece = PIECE_BYTES // spec.itemsize
                total = math.prod(spec.shape)
                for first in range(0, total, per_piece):
                    _wait(pending[slot])
                    n = min(per_piece, total - first)
                    raw = buffers[slot][: n * spec.itemsize]
                    fill(spec.name, first, raw.view(_NUMPY[spec.dtype]))
                    emit(memoryview(raw.data), slot)
                    slot ^= 1
            _wait(pending[0])
            _wait(pending[1])
            os.fsync(handle.fileno())
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        os.replace(tmp, path)
    except BaseException:
        for futures in pending:
            for future in futures:
                future.cancel()
        Path(tmp).unlink(missing_ok=True)
        raise
    param_bytes = sum(spec.nbytes for spec in tensors)
    return WrittenChunk(size, param_bytes, sha256.hexdigest(), blake3.hexdigest(), kernel)


_NUMPY = {
    "bfloat16": np.uint16,
    "float16": np.float16,
    "float32": np.float32,
    "uint8": np.uint8,
    "int8": np.int8,
}


def aligned_order(
    tensors: list[TensorSpec], tail: frozenset[str] = frozenset()
) -> list[TensorSpec]:
    """Tensors whose size is a multiple of 16 first, widest dtype first: each of those then
    starts 16-byte aligned (what torch's packed kernels need; ``save_aligned``'s order);
    the ``tail`` ones after all others."""
    return sorted(tensors, key=lambda t: (t.name in tail, t.nbytes % 16 != 0, -t.itemsize, t.name))


def _wait(futures: list[Future[object]]) -> None:
    for future in futures:
        future.result()
    futures.clear()


def _write_all(handle: object, data: memoryview) -> None:
    view = data
    while view:
        view = view[handle.write(view) :]  # type: ignore[attr-defined]
