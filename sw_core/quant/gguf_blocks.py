"""GGUF quantized blocks -> :class:`~sw_core.quant.weights.QuantizedWeight`, row block by row block.

Lossless (every value and scale carried over; ``dequantize_parts`` reproduces ``gguf``'s float32
dequantization bit for bit):

============  ==========================================  ===============================
GGUF type     block                                       kept as (int4 format)
============  ==========================================  ===============================
``Q4_0``      ``d * (q - 8)``, 32 values                  1 plane, scale ``d``, zero point 8
``Q4_1``      ``d * q + m``, 32 values                    1 plane, scale ``d``, offset ``m``
``Q4_K``      ``d*sc_j * q - dmin*m_j``, 8 x 32 of 256    1 plane, float32 scale and offset
``Q5_0``      ``d * (q - 16)``, 5-bit                     2 planes, zero point 16
``Q5_1``      ``d * q + m``, 5-bit                        2 planes, offset ``m``
``Q5_K``      as ``Q4_K`` with 5-bit ``q``                2 planes, float32 scale and offset
``Q8_0``      ``d * q``, ``q`` int8                       2 planes (``q + 128``), zero point 128
============  ==========================================  ===============================

Every other quantized type (``Q6_K``: 16-value sub-blocks, which the int4 kernel's groups of
32 or more cannot express; ``Q2_K``, ``Q3_K``, the ``IQ`` types) is dequantized by ``gguf`` a
block of rows at a time and rounded again to 8-bit values in groups of 32 (2 planes,
float16 scale and offset): the nearest packed form, with an error measured by the tests
and documented in ``docs/engine.md``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from sw_core.quant.rtn import quantize_int4
from sw_core.quant.weights import QuantizedWeight

#: Rows decoded at a time (bounds the temporaries).
ROW_BLOCK = 1024
QK_K = 256

Decoded = tuple[np.ndarray, np.ndarray, np.ndarray | None]


def _f16(raw: np.ndarray) -> np.ndarray:
    return raw.copy().view(np.float16).reshape(raw.shape[0])


def _nibbles32(qs: np.ndarray) -> np.ndarray:
    """16 bytes per block -> 32 values: low nibbles first, then high nibbles."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _high_bits32(qh: np.ndarray) -> np.ndarray:
    """4 bytes (a little-endian uint32) per block -> bit ``i`` for value ``i`` (32 values)."""
    bits = qh.copy().view(np.uint32).reshape(-1, 1) >> np.arange(32, dtype=np.uint32)
    return (bits & 1).astype(np.uint8)


def _q4_0(b: np.ndarray) -> Decoded:
    return _nibbles32(b[:, 2:]), _f16(b[:, :2])[:, None], None


def _q4_1(b: np.ndarray) -> Decoded:
    return _nibbles32(b[:, 4:]), _f16(b[:, :2])[:, None], _f16(b[:, 2:4])[:, None]


def _q5_0(b: np.ndarray) -> Decoded:
    v = _nibbles32(b[:, 6:]) | (_high_bits32(b[:, 2:6]) << 4)
    return v, _f16(b[:, :2])[:, None], None


def _q5_1(b: np.ndarray) -> Decoded:
    v = _nibbles32(b[:, 8:]) | (_high_bits32(b[:, 4:8]) << 4)
    return v, _f16(b[:, :2])[:, None], _f16(b[:, 2:4])[:, None]


def _q8_0(b: np.ndarray) -> Decoded:
    v = (b[:, 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return v, _f16(b[:, :2])[:, None], None


def _k_scales(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``Q4_K``/``Q5_K``: float32 ``d * sc_j`` and ``dmin * m_j`` for the 8 sub-blocks,
    computed as ``gguf`` computes them."""
    from gguf.quants import Q4_K

    d = _f16(b[:, :2]).astype(np.float32)[:, None]
    dmin = _f16(b[:, 2:4]).astype(np.float32)[:, None]
    sc, m = Q4_K.get_scale_min(b[:, 4:16])
    return d * sc.astype(np.float32), dmin * m.astype(np.float32)


def _k_low(qs: np.ndarray) -> np.ndarray:
    """128 bytes -> 256 values: for each 64, 32 low nibbles then 32 high nibbles."""
    q = qs.reshape(-1, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    return (q & 0x0F).reshape(-1, QK_K)


def _q4_k(b: np.ndarray) -> Decoded:
    scale, dm = _k_scales(b)
    return _k_low(b[:, 16:]), scale, -dm


def _q5_k(b: np.ndarray) -> Decoded:
    scale, dm = _k_scales(b)
    qh = b[:, 16:48].reshape(-1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    v = _k_low(b[:, 48:]) | ((qh & 1).reshape(-1, QK_K) << 4)
    return v, scale, -dm


#: GGUF type name -> (decoder, planes, zero point, scale dtype).
LOSSLESS: dict[str, tuple[Callable[[np.ndarray], Decoded], int, int | None, torch.dtype]] = {
    "Q4_0": (_q4_0, 1, 8, torch.float16),
    "Q4_1": (_q4_1, 1, None, torch.float16),
    "Q4_K": (_q4_k, 1, None, torch.float32),
    "Q5_0": (_q5_0, 2, 16, torch.float16),
    "Q5_1": (_q5_1, 2, None, torch.float16),
    "Q5_K": (_q5_k, 2, None, torch.float32),
    "Q8_0": (_q8_0, 2, 128, torch.float16),
}
#: The group of values sharing a scale and offset in the packed form.
GROUP = 32


def kept_packed(type_name: str) -> str:
    """How a GGUF type is kept: ``lossless``, ``rounded`` (8-bit, 2 planes) or ``float``."""
    if type_name in LOSSLESS:
        return "lossless"
    if type_name in ("F32", "F16", "BF16", "F64"):
        return "float"
    return "rounded"


def decode(
    data: np.ndarray,
    type_name: str,
    shape: tuple[int, int],
    done: Callable[[int, int], None] | None = None,
) -> QuantizedWeight:
    """A 2-D GGUF tensor's raw rows (``[N, bytes per row]``, e.g. a memory map) -> packed
    values, a block of rows at a time; ``done(start, end)`` after each block's rows are read
    (to let their mapped pages go)."""
    n, k = shape
    if type_name not in LOSSLESS:
        return _rounded(data, type_name, shape, done)
    decoder, planes, zero_point, scale_dtype = LOSSLESS[type_name]
    groups = k // GROUP
    values = torch.empty(n, k, dtype=torch.uint8)
    scales = torch.empty(groups, n, dtype=scale_dtype)
    offsets = None if zero_point is not None else torch.empty(groups, n, dtype=scale_dtype)
    for start in range(0, n, ROW_BLOCK):
        rows = np.asarray(data[start : start + ROW_BLOCK])
        count = rows.shape[0]
        blocks = rows.reshape(count * k // _block_size(type_name), -1)
        v, scale, offset = decoder(blocks)
        values[start : start + count] = torch.from_numpy(np.ascontiguousarray(v)).view(count, k)
        scales[:, start : start + count] = _by_group(scale, count, groups, scale_dtype)
        if offsets is not None and offset is not None:
            offsets[:, start : start + count] = _by_group(offset, count, groups, scale_dtype)
        if done is not None:
            done(start, start + count)
    return QuantizedWeight.int4(
        values,
        scales,
        offsets,
        group_size=GROUP,
        planes=planes,
        zero_point=zero_point,
        source=f"gguf:{type_name}",
    )


def _block_size(type_name: str) -> int:
    return QK_K if type_name.endswith("_K") else 32


def _by_group(x: np.ndarray, rows: int, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """Per-block scales ``[blocks, sub-blocks]`` -> ``[groups, rows]``."""
    tensor = torch.from_numpy(np.ascontiguousarray(x)).view(rows, groups)
    return tensor.t().to(dtype)


def _rounded(
    data: np.ndarray,
    type_name: str,
    shape: tuple[int, int],
    done: Callable[[int, int], None] | None = None,
) -> QuantizedWeight:
    """A type with no lossless packed form: dequantized by ``gguf`` and rounded again to 8-bit
    values in groups of 32, a block of rows at a time."""
    from gguf import GGMLQuantizationType, dequantize

    qtype = GGMLQuantizationType[type_name]
    n, k = shape
    parts: list[QuantizedWeight] = []
    for start in range(0, n, ROW_BLOCK):
        rows = np.asarray(data[start : start + ROW_BLOCK])
        floats = torch.from_numpy(dequantize(rows, qtype).reshape(rows.shape[0], k))
        parts.append(quantize_int4(floats, GROUP, planes=2, source=f"gguf:{type_name}"))
        if done is not None:
            done(start, start + rows.shape[0])
    first = parts[0]
    values = torch.cat([p.values for p in parts])
    scales = torch.cat([p.scales for p in parts], dim=1)
    offsets = torch.cat([p.offsets for p in parts if p.offsets is not None], dim=1)
    return QuantizedWeight.int4(
        values, scales, offsets, group_size=GROUP, planes=2, source=first.fmt.source
    )
