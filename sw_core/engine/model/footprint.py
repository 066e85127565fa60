"""What each chunk of a packed chunk set holds once materialized: the bytes the budget counts.

For a chunk set without packed tensors the engine counts ``size_bytes * expand`` (widening
narrow floats), as before. With packed tensors the count is per tensor:

- a packed tensor kept packed: its stored parts (used in place in the chunk's buffer) plus
  the kernel's scale tables built on arrival;
- a packed tensor widened: the widened weight (``numel * compute itemsize``);
- float tensors: their stored bytes times the float widening factor; in a chunk whose buffer
  stays alive (it holds a packed tensor kept packed) their converted copies come on top.

A kernel view (:func:`with_kernel_views`) holds no exact scales: they are not counted.
So a budget of 25 % of a packed chunk set means 25 % of the bytes the engine actually holds
computing with it, not of a dequantized model.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from sw_core.chunks.manifest import ChunkInfo, Manifest
from sw_core.engine.model.dtypes import DTYPES, expansion
from sw_core.engine.model.packed import materialized_bytes


def _rows(chunk: ChunkInfo) -> tuple[int, int] | None:
    return (chunk.rows[0], chunk.rows[1]) if chunk.rows is not None else None


def chunk_sizes(
    manifest: Manifest, dtype: torch.dtype | None, kept: frozenset[str]
) -> dict[str, int]:
    """Chunk name -> bytes held once materialized (see the module doc)."""
    formats = manifest.formats
    float_expand = expansion(manifest, dtype)
    stored_float = DTYPES.get(manifest.dtype)
    sizes: dict[str, int] = {}
    for chunk in manifest.chunks:
        packed = [t for t in chunk.tensors if t in formats]
        rows = _rows(chunk)
        # a kernel view holds no exact scales (they lie past its end)
        tail = sum(formats[t].exact_scale_bytes(rows) for t in packed) if chunk.is_prefix else 0
        stored = sum(formats[t].stored_bytes(rows) for t in packed) - tail
        ready = sum(materialized_bytes(formats[t], rows, dtype, packed=t in kept) for t in packed)
        ready -= tail
        floats = max((chunk.param_bytes or chunk.size_bytes) - stored, 0)
        overhead = max(chunk.size_bytes - (chunk.param_bytes or chunk.size_bytes), 0)
        floats_ready = int(floats * float_expand)
        pinned = any(t in kept for t in packed)
        if pinned:
            # the chunk's buffer stays alive under the packed parts (used in place): its
            # floats stay too, and their converted copies (if any) come on top
            converted = 0
            if dtype is not None and stored_float is not None and dtype != stored_float:
                converted = floats * dtype.itemsize // stored_float.itemsize
            floats_ready = floats + converted
        sizes[chunk.name] = overhead + ready + floats_ready
    return sizes


def merged_bytes(shards: list[ChunkInfo], sizes: dict[str, int] | None, expand: float) -> int:
    """Bytes of a row-sharded tensor concatenated whole, as materialized."""
    total = 0
    for chunk in shards:
        data = chunk.param_bytes or chunk.size_bytes
        if sizes is None:
            total += int(data * expand)
        else:
            total += sizes[chunk.name] - max(chunk.size_bytes - data, 0)
    return total


def with_kernel_views(
    manifest: Manifest, dtype: torch.dtype | None, kept: frozenset[str]
) -> Manifest:
    """``manifest`` with each chunk that computes from its kernel prefix alone replaced by
    its kernel view (:meth:`ChunkInfo.kernel_view`): a chunk (not of the embeddings, whose
    row lookups widen rows from the exact scales) whose int4 tensors with stored tables
    are all kept packed and compute with tables of ``dtype``. Such a chunk is read, held
    and counted without its exact scales."""
    if dtype is None or not manifest.packed:
        return manifest
    formats = manifest.formats
    dtype_name = str(dtype).removeprefix("torch.")
    chunks = []
    for chunk in manifest.chunks:
        view = chunk.kernel_view()
        tabled = [t for t in chunk.tensors if t in formats and formats[t].exact_scale_bytes()]
        if (
            view is not None
            and chunk.role != "embeddings"
            and tabled
            and all(t in kept and formats[t].table_dtype == dtype_name for t in tabled)
        ):
            chunk = view
        chunks.append(chunk)
    return replace(manifest, chunks=chunks)
