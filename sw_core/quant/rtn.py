"""Round-to-nearest weight quantization (``sw chunk --quantize``), a block of rows at a time.

- :func:`quantize_int8`: symmetric, one scale per output channel (``scale = max|w| / 127``),
  the int8 kernel's form.
- :func:`quantize_int4`: asymmetric per group of ``group_size`` inputs
  (``scale = (max - min) / 15``, ``offset = min``, both rounded to float16 first and the values
  rounded against the rounded pair), the int4 kernel's form; ``planes=2`` does the same with
  255 levels (8-bit values in two 4-bit planes: how GGUF types that cannot be repacked
  losslessly, such as ``Q6_K``, are re-rounded).

Rows are processed in blocks so that the temporaries stay a small fraction of the weight.
"""

from __future__ import annotations

import torch

from sw_core.quant.weights import QuantizedWeight

#: Rows per block: bounds the float temporaries to a few MB.
ROW_BLOCK = 1024


def _matrix(weight: torch.Tensor, transposed: bool) -> torch.Tensor:
    return weight.transpose(-1, -2) if transposed else weight


def quantize_int8(
    weight: torch.Tensor, *, transposed: bool = False, source: str = "rtn"
) -> QuantizedWeight:
    """``weight`` ``[*lead, N, K]`` (or ``[K, N]`` with ``transposed``) -> int8 per channel."""
    matrix = _matrix(weight, transposed)
    *lead, n, k = matrix.shape
    flat = matrix.reshape(-1, k)
    values = torch.empty(flat.shape, dtype=torch.int8)
    scales = torch.empty(flat.shape[0], dtype=torch.float32)
    for start in range(0, flat.shape[0], ROW_BLOCK):
        block = flat[start : start + ROW_BLOCK].to(torch.float32)
        scale = block.abs().amax(dim=1) / 127
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        values[start : start + ROW_BLOCK] = torch.round(block / scale[:, None]).clamp(-127, 127)
        scales[start : start + ROW_BLOCK] = scale
    return QuantizedWeight.int8(
        values.view(*lead, n, k), scales.view(*lead, n), transposed=transposed, source=source
    )


def quantize_int4(
    weight: torch.Tensor,
    group_size: int,
    *,
    planes: int = 1,
    transposed: bool = False,
    scale_dtype: torch.dtype = torch.float16,
    source: str = "rtn",
) -> QuantizedWeight:
    """``weight`` ``[*lead, N, K]`` -> asymmetric ``4 * planes``-bit values per group."""
    matrix = _matrix(weight, transposed)
    *lead, n, k = matrix.shape
    if k % group_size:
        raise ValueError(f"K = {k} is not a multiple of the group size {group_size}")
    groups = k // group_size
    levels = 16**planes - 1
    flat = matrix.reshape(-1, k)
    rows = flat.shape[0]
    values = torch.empty(rows, k, dtype=torch.uint8)
    scales = torch.empty(rows, groups, dtype=scale_dtype)
    offsets = torch.empty(rows, groups, dtype=scale_dtype)
    for start in range(0, rows, ROW_BLOCK):
        block = flat[start : start + ROW_BLOCK].to(torch.float32).view(-1, groups, group_size)
        low, high = block.amin(dim=2), block.amax(dim=2)
        scale = ((high - low) / levels).to(scale_dtype).to(torch.float32)
        offset = low.to(scale_dtype).to(torch.float32)
        inverse = torch.where(scale > 0, 1 / scale, torch.zeros_like(scale))
        q = torch.round((block - offset[..., None]) * inverse[..., None]).clamp(0, levels)
        values[start : start + ROW_BLOCK] = q.view(-1, k).to(torch.uint8)
        scales[start : start + ROW_BLOCK] = scale.to(scale_dtype)
        offsets[start : start + ROW_BLOCK] = offset.to(scale_dtype)
    by_group = (*lead, n, groups)
    return QuantizedWeight.int4(
        values.view(*lead, n, k),
        scales.view(by_group).transpose(-1, -2).contiguous(),
        offsets.view(by_group).transpose(-1, -2).contiguous(),
        group_size=group_size,
        planes=planes,
        transposed=transposed,
        source=source,
    )
