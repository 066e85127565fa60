"""A quantized weight before and after it is laid out in a chunk.

:class:`QuantizedWeight` is what a tensor source hands the chunk writer in place of a float
tensor: integer values in matrix order plus their scales, with the :class:`PackedFormat` that
says how they combine. :meth:`QuantizedWeight.parts` lays them out for storage (the nibble
layout of the int4 kernel); :func:`dequantize_parts` turns stored parts back into the float
weight the model would hold, with the same float32 arithmetic as ``gguf``'s dequantization
(``scale * value + offset``), so a chunk set widened to float32 equals the dequantized model
bit for bit where the format is lossless.

A synthetic writer (no real model) builds weights with :meth:`QuantizedWeight.int4` /
:meth:`QuantizedWeight.int8` and hands them to :func:`sw_core.chunks.writer.write_chunks`
through any :class:`~sw_core.chunks.tensor_sources.TensorSource`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from sw_core.quant import int4_layout
from sw_core.quant.formats import PackedFormat

_SCALE_NAMES = {torch.float16: "float16", torch.float32: "float32"}
#: Rows packed at a time (bounds the temporaries of :meth:`QuantizedWeight.parts`).
PACK_ROWS = 4096


@dataclass
class QuantizedWeight:
    """Values, scales and offsets of one weight (or of some rows of it), in matrix order.

    - int4: ``values`` uint8 ``[*lead, N, K]`` in ``0 .. 16**planes - 1``, ``scales`` and
      ``offsets`` ``[*lead, K/group_size, N]`` (``offsets`` None when the format has a
      ``zero_point``);
    - int8: ``values`` int8 ``[*lead, N, K]``, ``scales`` ``[*lead, N]``.

    ``fmt.shape`` is the whole tensor's; :meth:`rows` keeps it and slices the rest.
    """

    fmt: PackedFormat
    values: torch.Tensor
    scales: torch.Tensor
    offsets: torch.Tensor | None = None

    # ---------------------------------------------------------------- constructors
    @classmethod
    def int4(
        cls,
        values: torch.Tensor,
        scales: torch.Tensor,
        offsets: torch.Tensor | None = None,
        *,
        group_size: int,
        planes: int = 1,
        zero_point: int | None = None,
        block_n: int | None = None,
        transposed: bool = False,
        source: str = "",
    ) -> QuantizedWeight:
        """An int4-format weight. ``values`` ``[*lead, N, K]`` (``0 .. 16**planes - 1``),
        ``scales``/``offsets`` ``[*lead, K/group_size, N]``; without ``offsets`` a
        ``zero_point`` gives ``offset = -zero_point * scale``. ``block_n`` defaults to this
        CPU's layout (64 on AVX-512)."""
        if (offsets is None) == (zero_point is None):
            raise ValueError("give either offsets or a zero_point")
        n, k = values.shape[-2:]
        shape = [*values.shape[:-2], k, n] if transposed else list(values.shape)
        fmt = PackedFormat(
            kind="int4",
            shape=shape,
            group_size=group_size,
            planes=planes,
            block_n=block_n or int4_layout.native_block_n() or int4_layout.WIDE,
            scale_dtype=_SCALE_NAMES[scales.dtype],
            zero_point=zero_point,
            transposed=transposed,
            source=source,
        )
        return cls(fmt, values, scales, offsets)

    @classmethod
    def int8(
        cls,
        values: torch.Tensor,
        scales: torch.Tensor,
        *,
        transposed: bool = False,
        source: str = "",
    ) -> QuantizedWeight:
        """An int8-format weight: ``values`` int8 ``[*lead, N, K]``, ``scales`` ``[*lead, N]``."""
        n, k = values.shape[-2:]
        shape = [*values.shape[:-2], k, n] if transposed else list(values.shape)
        fmt = PackedFormat(
            kind="int8",
            shape=shape,
            scale_dtype=_SCALE_NAMES[scales.dtype],
            transposed=transposed,
            source=source,
        )
        return cls(fmt, values, scales, None)

    # ---------------------------------------------------------------- slicing and layout
    def rows(self, start: int, end: int) -> QuantizedWeight:
        """Rows ``[start, end)`` of the first dimension (matrix rows, or experts)."""
        if self.fmt.lead:
            return replace(
                self,
                values=self.values[start:end],
                scales=self.scales[start:end],
                offsets=None if self.offsets is None else self.offsets[start:end],
            )
        if self.fmt.transposed:
            raise ValueError("row shards of a transposed packed weight are not supported")
        if self.fmt.kind == "int8":
            return replace(self, values=self.values[start:end], scales=self.scales[start:end])
        return replace(
            self,
            values=self.values[start:end],
            scales=self.scales[:, start:end],
            offsets=None if self.offsets is None else self.offsets[:, start:end],
        )

    def parts(self) -> dict[str, torch.Tensor]:
        """The stored parts (``q``, ``scales``, ``offsets``), contiguous, in the format's layout."""
        fmt = self.fmt
        parts = {"scales": self.scales.contiguous()}
        if fmt.kind == "int8":
            parts["q"] = self.values.to(torch.int8).contiguous()
            return {"q": parts["q"], "scales": parts["scales"]}
        assert fmt.block_n is not None
        lead = self.values.shape[:-2]
        n, k = self.values.shape[-2:]
        flat = self.values.reshape(-1, n, k)
        planes = torch.empty(flat.shape[0], fmt.planes, n, k // 2, dtype=torch.uint8)
        # a block of rows at a time (a multiple of the layout's blocks): small temporaries
        step = max(fmt.block_n, PACK_ROWS // fmt.block_n * fmt.block_n)
        for i, matrix in enumerate(flat):
            for start in range(0, n, step):
                rows = matrix[start : start + step]
                for p in range(fmt.planes):
                    nibbles = (rows >> (4 * p)) & 0x0F if fmt.planes > 1 else rows
                    packed = int4_layout.pack(nibbles, fmt.block_n)
                    planes[i, p].view(-1)[start * k // 2 : (start + rows.shape[0]) * k // 2] = (
                        packed.view(-1)
                    )
        out = {"q": planes.view(*lead, fmt.planes, n, k // 2), "scales": parts["scales"]}
        if self.offsets is not None:
            out["offsets"] = self.offsets.contiguous()
        return out

    def dequantize(self) -> torch.Tensor:
        """The float32 weight as the model holds it (rows sliced as this object is)."""
        return affine(self.fmt, self.values, self.scales, self.offsets)


def plane_values(fmt: PackedFormat, q: torch.Tensor) -> torch.Tensor:
    """Stored ``q`` (``[*lead, planes, N, K/2]``) -> values ``[*lead, N, K]`` uint8."""
    assert fmt.block_n is not None
    lead = q.shape[:-3]
    planes, n, half = q.shape[-3:]
    flat = q.reshape(-1, planes, n, half)
    out = torch.zeros(flat.shape[0], n, half * 2, dtype=torch.uint8, device=q.device)
    for i in range(flat.shape[0]):
        for p in range(planes):
            nibbles = int4_layout.unpack(flat[i, p], fmt.block_n)
            out[i] |= nibbles << (4 * p) if p else nibbles
    return out.view(*lead, n, half * 2)


def affine(
    fmt: PackedFormat,
    values: torch.Tensor,
    scales: torch.Tensor,
    offsets: torch.Tensor | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``scale * value + offset`` in float32 (two roundings, as ``gguf`` computes it), shaped as
    the model holds the weight; written into ``out`` (float32) when given."""
    n, k = values.shape[-2:]
    lead = values.shape[:-2]
    if out is None:
        out = torch.empty(values.shape, dtype=torch.float32, device=values.device)
    else:
        out = out.view(values.shape)
    out.copy_(values)
    if fmt.kind == "int8":
        out.mul_(scales.to(torch.float32)[..., None])
    else:
        assert fmt.group_size is not None
        groups = k // fmt.group_size
        grouped = out.view(*lead, n, groups, fmt.group_size)
        scale = scales.to(torch.float32).transpose(-1, -2)[..., None]  # [*lead, N, G, 1]
        if offsets is None:
            offset = scale * -float(fmt.zero_point or 0)
        else:
            offset = offsets.to(torch.float32).transpose(-1, -2)[..., None]
        grouped.mul_(scale).add_(offset)
    if fmt.transposed:
        return out.transpose(-1, -2).contiguous()
    return out


def dequantize_parts(
    fmt: PackedFormat, parts: dict[str, torch.Tensor], out: torch.Tensor | None = None
) -> torch.Tensor:
    """Stored parts of a packed tensor (or of some of its rows) -> the float32 weight."""
    values = parts["q"] if fmt.kind == "int8" else plane_values(fmt, parts["q"])
    return affine(fmt, values, parts["scales"], parts.get("offsets"), out)
