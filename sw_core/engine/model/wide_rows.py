"""Packed int4 matrices times many rows (a prompt, a wide batch): dequantized, then GEMM.

torch's CPU int4 kernel is built for a few rows: it dequantizes the weights again for every
block of 4 activation rows, so its time grows with the rows (1536 x 576, one thread: 0.1 ms
for 1 row, 1.0 ms for 38, 17 ms for 640). The prefill of 16 prompts (640 rows) spent more
than the whole decode in it. From :data:`WIDE_ROWS` rows on, the plane is dequantized once
-- a tile of rows at a time, so the temporary stays small (:data:`TILE_WEIGHTS`) -- and
multiplied with oneDNN's GEMM in the activations' dtype (AMX on this CPU): 3.6 ms for the
640 rows above. The weights are the kernel's own values (``(v - 8) * scale + zero``, from
the same table) rounded once to the activations' dtype, as the GEMM takes them.

Only the AVX-512 nibble layout in whole blocks of 64 rows is read here
(:mod:`sw_core.quant.int4_layout`); other layouts keep the kernel.
"""

from __future__ import annotations

import torch

from sw_core.quant import int4_layout

#: Activation rows from which dequantizing beats the kernel (measured on 2 cores, 1 and 2
#: threads, SmolLM2's matrices: even between 96 and 192 rows, 3-5x faster at 640).
WIDE_ROWS = 192
#: Weights dequantized at once: bounds the temporary float32 tile (4 MiB).
TILE_WEIGHTS = 1 << 20


def takes(x: torch.Tensor, plane: torch.Tensor) -> bool:
    """Whether ``x @ plane`` goes through the dequantized path."""
    return (
        x.shape[0] >= WIDE_ROWS
        and x.device.type == "cpu"
        and plane.shape[0] % int4_layout.WIDE == 0
        and int4_layout.native_block_n() == int4_layout.WIDE
    )


def dequantized_mm(
    x: torch.Tensor, plane: torch.Tensor, group_size: int, sz: torch.Tensor
) -> torch.Tensor:
    """``x @ W.T`` for one stored plane ``[N, K/2]`` and its ``[K/group, N, 2]`` table, as
    ``torch._weight_int4pack_mm_for_cpu`` computes it, for many rows of ``x``."""
    n, k = plane.shape[0], plane.shape[1] * 2
    out = torch.empty(x.shape[0], n, dtype=x.dtype)
    step = max(int4_layout.WIDE, TILE_WEIGHTS // k // int4_layout.WIDE * int4_layout.WIDE)
    for start in range(0, n, step):
        stop = min(n, start + step)
        tile = _dequantized_t(plane[start:stop], sz[:, start:stop], group_size, k)
        torch.mm(x, tile.to(x.dtype), out=out[:, start:stop])
    return out


def _dequantized_t(rows: torch.Tensor, sz: torch.Tensor, group_size: int, k: int) -> torch.Tensor:
    """``W.T`` ``[K, n]`` in float32 for ``n`` rows (whole blocks of 64) of a plane."""
    n = rows.shape[0]
    values = _nibbles_t(rows, k)
    scale = sz[..., 0].to(torch.float32)
    zero = sz[..., 1].to(torch.float32) - 8 * scale
    groups = k // group_size
    weights = torch.empty(groups, group_size, n, dtype=torch.float32)
    torch.addcmul(
        zero.view(groups, 1, n),
        values.view(groups, group_size, n),
        scale.view(groups, 1, n),
        out=weights,
    )
    return weights.view(k, n)


def _nibbles_t(rows: torch.Tensor, k: int) -> torch.Tensor:
    """The values ``[K, n]`` (uint8, 0..15) of ``n`` rows in whole blocks of 64.

    A block's byte ``(k, d)`` holds rows ``d`` (low nibble) and ``d + 32`` (high), ``d`` in
    0..31, so the low nibbles of a block's 32 bytes at ``k`` are its rows 0..31 in order and
    the high ones rows 32..63. Read 4 bytes at a time where the plane is 4-byte aligned."""
    n = rows.shape[0]
    blocks_n = n // int4_layout.WIDE
    if rows.data_ptr() % 4 == 0 and rows.is_contiguous():
        words = rows.view(torch.int32).reshape(blocks_n, k, 8).permute(1, 0, 2)
        out = torch.empty(k, blocks_n, 16, dtype=torch.int32)
        torch.bitwise_and(words, 0x0F0F0F0F, out=out[:, :, :8])
        torch.bitwise_right_shift(words, 4, out=out[:, :, 8:]).bitwise_and_(0x0F0F0F0F)
        return out.view(torch.uint8).view(k, n)
    blocks = rows.reshape(blocks_n, k, 32).permute(1, 0, 2)
    values = torch.empty(k, blocks_n, int4_layout.WIDE, dtype=torch.uint8)
    torch.bitwise_and(blocks, 0x0F, out=values[:, :, :32])
    torch.bitwise_right_shift(blocks, 4, out=values[:, :, 32:])
    return values.view(k, n)
