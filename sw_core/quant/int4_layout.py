"""The nibble layout of torch's CPU int4 kernel, in both directions, without the kernel.

``torch._convert_weight_to_int4pack_for_cpu(v [N, K] int32, 2)`` returns ``[N, K/2]`` uint8
in which rows come in blocks of ``BLOCK_N`` (64 on AVX-512 builds, 32 otherwise), each block
stored column by column (``k`` outer):

- a full block of 64 (AVX-512): for ``k`` and ``d < 16``, byte ``k*32 + d`` holds rows ``d``
  (low nibble) and ``d + 32`` (high), byte ``k*32 + 16 + d`` rows ``d + 16`` and ``d + 48``;
- otherwise (a block of 32 on other CPUs, the last 16/32/48 rows on AVX-512): byte
  ``k*nb/2 + n/2`` holds rows ``n`` (low) and ``n + 1`` (high).

The functions here rebuild that layout with plain tensor ops, so the chunker writes it
without the kernel's int32 input (4 bytes per weight), the engine reads single rows out of
it (embedding lookups) and dequantizes it, and a test keeps them equal to torch's converter.
"""

from __future__ import annotations

import functools

import torch

#: Blocks of the AVX-512 layout and of the others.
WIDE, NARROW = 64, 32


def _blocks(n: int, block_n: int) -> tuple[int, int]:
    """``(rows in full wide blocks, rows after them)``; the rest uses the pair layout."""
    if block_n == WIDE:
        full = n // WIDE * WIDE
        return full, n - full
    return 0, n


def pack(values: torch.Tensor, block_n: int) -> torch.Tensor:
    """``[N, K]`` values in 0..15 (any integer dtype) -> ``[N, K/2]`` uint8 in the layout."""
    n, k = values.shape
    if n % 16 or k % 2:
        raise ValueError(f"int4 packing needs N % 16 == 0 and an even K, got {n} x {k}")
    v = values.to(torch.uint8)
    out = torch.empty(n * k // 2, dtype=torch.uint8)
    full, _ = _blocks(n, block_n)
    if full:
        blocks = v[:full].view(full // WIDE, 4, 16, k)
        data = blocks[:, 0:2] | (blocks[:, 2:4] << 4)  # [NB, 2, 16, K]
        out[: full * k // 2] = data.permute(0, 3, 1, 2).reshape(-1)
    start = full
    while start < n:
        nb = min(NARROW, n - start) if block_n == NARROW else n - start
        rows = v[start : start + nb].view(nb // 2, 2, k)
        data = rows[:, 0] | (rows[:, 1] << 4)  # [nb/2, K]
        out[start * k // 2 : (start + nb) * k // 2] = data.t().reshape(-1)
        start += nb
    return out.view(n, k // 2)


def unpack(packed: torch.Tensor, block_n: int) -> torch.Tensor:
    """Inverse of :func:`pack`: ``[N, K/2]`` uint8 -> ``[N, K]`` uint8 values in 0..15."""
    n, half = packed.shape
    k = half * 2
    flat = packed.reshape(-1)
    out = torch.empty(n, k, dtype=torch.uint8, device=packed.device)
    full, _ = _blocks(n, block_n)
    if full:
        data = flat[: full * half].view(full // WIDE, k, 2, 16).permute(0, 2, 3, 1)
        blocks = out[:full].view(full // WIDE, 4, 16, k)
        blocks[:, 0:2] = data & 0x0F
        blocks[:, 2:4] = data >> 4
    start = full
    while start < n:
        nb = min(NARROW, n - start) if block_n == NARROW else n - start
        data = flat[start * half : (start + nb) * half].view(k, nb // 2).t()
        rows = out[start : start + nb].view(nb // 2, 2, k)
        rows[:, 0] = data & 0x0F
        rows[:, 1] = data >> 4
        start += nb
    return out


def gather_rows(packed: torch.Tensor, rows: torch.Tensor, block_n: int) -> torch.Tensor:
    """Values of some rows: ``[len(rows), K]`` uint8, reading only their bytes."""
    n, half = packed.shape
    k = half * 2
    rows = rows.to(torch.long)
    full, _ = _blocks(n, block_n)
    cols = torch.arange(k, device=packed.device)
    in_wide = rows < full
    # byte index = base + col * stride + offset, nibble chosen by shift
    j = rows % WIDE
    wide_base = (rows // WIDE) * WIDE * half + ((j // 16) % 2) * 16 + j % 16
    wide_shift = (j // 32) * 4
    if block_n == NARROW:
        first = (rows // NARROW) * NARROW
        nb = torch.clamp(n - first, max=NARROW)
    else:
        first = torch.full_like(rows, full)
        nb = torch.full_like(rows, n - full)
    local = rows - first
    pair_base = first * half + local // 2
    pair_shift = (local % 2) * 4
    base = torch.where(in_wide, wide_base, pair_base)
    stride = torch.where(in_wide, torch.full_like(rows, 32), nb // 2)
    shift = torch.where(in_wide, wide_shift, pair_shift)
    index = base[:, None] + cols[None, :] * stride[:, None]
    data = packed.reshape(-1)[index]
    return (data >> shift[:, None].to(torch.uint8)) & 0x0F


@functools.cache
def native_block_n() -> int | None:
    """The block size of this torch build's CPU layout (64 or 32), or None when it matches
    neither (then packed int4 chunks are converted on arrival)."""
    probe = torch.arange(64 * 32, dtype=torch.int32).view(64, 32) % 16
    probe = (probe + torch.arange(64, dtype=torch.int32)[:, None]) % 16
    try:
        native = torch._convert_weight_to_int4pack_for_cpu(probe, 2)
    except (RuntimeError, AttributeError):
        return None
    for block_n in (WIDE, NARROW):
        if torch.equal(native.view(-1), pack(probe, block_n).view(-1)):
            return block_n
    return None
