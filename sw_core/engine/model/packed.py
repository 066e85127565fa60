"""Packed weights in the engine: stored parts in, a weight the model computes with out.

A chunk's packed tensor arrives as its stored parts (:mod:`sw_core.quant.formats`). The
engine then either

- keeps it packed (:class:`PackedWeight`; compute dtype bfloat16, the fast path): the int4
  planes and the kernel's ``[K/group, N, 2]`` scale-and-zero table per plane (``scale``,
  ``offset + 8 * scale``; the second plane of 8-bit values ``16 * scale``, ``128 *
  scale``) are used where they landed in the chunk buffer (a chunk set without stored
  tables gets them built on arrival), or
- widens it (compute dtype float32, or a module the packed kernels cannot stand in for):
  ``scale * value + offset`` in float32, exactly as ``gguf`` and transformers dequantize,
  then cast to the compute dtype (:func:`widen`).

:func:`materialized_bytes` is what either costs once materialized: the budget counts it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sw_core.engine.model.kernels import CpuKernels
from sw_core.exceptions import ModelError
from sw_core.quant import int4_layout
from sw_core.quant.formats import PackedFormat
from sw_core.quant.weights import dequantize_parts, kernel_table, split_scales

Take = Callable[[int], memoryview]


@dataclass
class StoredPacked:
    """The stored parts of one packed tensor in one chunk, checked against its format."""

    name: str
    fmt: PackedFormat
    parts: dict[str, torch.Tensor]
    rows: tuple[int, int] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of what the chunk holds, as the model holds it."""
        shape = list(self.fmt.shape)
        if self.rows is not None:
            dim = 0 if self.fmt.lead or not self.fmt.transposed else 1
            shape[dim] = self.rows[1] - self.rows[0]
        return tuple(shape)


def _empty(n_bytes: int, dtype: torch.dtype, take: Take | None) -> torch.Tensor:
    if take is None or n_bytes == 0:
        return torch.empty(n_bytes // dtype.itemsize, dtype=dtype)
    return torch.frombuffer(take(n_bytes), dtype=dtype)


def widen(stored: StoredPacked, dtype: torch.dtype, take: Take | None = None) -> torch.Tensor:
    """The weight as the model holds it, in ``dtype`` (float32 values computed exactly)."""
    numel = math.prod(stored.shape)
    out = _empty(numel * 4, torch.float32, take if dtype == torch.float32 else None)
    weight = dequantize_parts(stored.fmt, stored.parts, out=out).view(stored.shape)
    if dtype == torch.float32:
        return weight
    narrow = _empty(numel * dtype.itemsize, dtype, take).view(stored.shape)
    return narrow.copy_(weight)


class PackedWeight:
    """A packed matrix (or row shard, or experts) that computes with torch's packed kernels.

    Args:
        stored: the chunk's parts.
        dtype: the activations' dtype (bfloat16 on the fast path).
        kernels: the device's kernels.
    """

    def __init__(
        self,
        stored: StoredPacked,
        dtype: torch.dtype,
        kernels: CpuKernels,
    ) -> None:
        fmt = self.fmt = stored.fmt
        self.name = stored.name
        self.dtype = dtype
        self.kernels = kernels
        self.shape = stored.shape
        q = stored.parts["q"]
        #: The stored scales part (int4: ``(scale, offset)`` pairs or scales alone); None
        #: for an int4 weight read from a kernel view (its stored table is all it needs).
        self.stored_scales: torch.Tensor | None = stored.parts.get("scales")
        self.lead = list(q.shape[: -3 if fmt.kind == "int4" else -2])
        self.count = math.prod(self.lead)
        self.out_features, self.in_features = fmt.matrix
        self.out_features = q.shape[-2]  # rows of a shard
        if fmt.kind == "int4":
            assert fmt.block_n is not None and fmt.group_size is not None
            planes = q.reshape(self.count, fmt.planes, *q.shape[-2:])
            self.planes = [[kernels.prepare_int4(p, fmt.block_n) for p in m] for m in planes]
            self.sz = self._scale_tables(stored)
        else:
            if q.data_ptr() % 16:  # the int8 kernel reads its weight 16-byte aligned
                q = q.clone()
            self.q = q.reshape(self.count, *q.shape[-2:])
            scales = self._exact_scales().reshape(self.count, -1)
            if kernels.int8_packed:
                self.int8_scales = scales.to(dtype)
            else:  # widened on arrival (CUDA)
                self.q = (self.q.to(torch.float32) * scales[..., None]).to(dtype)
                self.int8_scales = scales.to(dtype)

    # ---------------------------------------------------------------- arrival
    def _scale_tables(self, stored: StoredPacked) -> torch.Tensor:
        """``[count, planes, K/group, N, 2]`` scale-and-zero tables in the activation dtype:
        the chunk's stored table where it holds one of that dtype (used in place), else
        built from the stored scales."""
        fmt = self.fmt
        table = stored.parts.get("table")
        if table is None or table.dtype != self.dtype:
            table = kernel_table(fmt, self._exact_scales(), self.dtype)
        table = table.reshape(self.count, fmt.planes, *table.shape[-3:])
        if self.kernels.device_type != "cpu":
            table = table.to(self.kernels_device())
        return table

    def _exact_scales(self) -> torch.Tensor:
        if self.stored_scales is None:
            raise ModelError(
                f"{self.name}: read without its exact scales (a kernel view), which this "
                "use of it needs"
            )
        return self.stored_scales

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the packed weight computes with or keeps (views or copies)."""
        held = [] if self.stored_scales is None else [self.stored_scales]
        if self.fmt.kind == "int4":
            held += [p for planes in self.planes for p in planes] + [self.sz]
        else:
            held += [self.q, self.int8_scales]
        return held

    def rebased(self, view: Callable[[torch.Tensor], torch.Tensor]) -> PackedWeight:
        """A copy whose tensors are ``view(tensor)`` of this one's (the same weight over
        other memory: :mod:`sw_core.engine.io.rebase`)."""
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        if self.stored_scales is not None:
            copy.stored_scales = view(self.stored_scales)
        if self.fmt.kind == "int4":
            copy.planes = [[view(p) for p in planes] for planes in self.planes]
            copy.sz = view(self.sz)
        else:
            copy.q = view(self.q)
            copy.int8_scales = view(self.int8_scales)
        return copy

    def kernels_device(self) -> torch.device:
        return getattr(self.kernels, "device", torch.device("cpu"))

    @property
    def device(self) -> torch.device:
        return self.kernels_device()

    # ---------------------------------------------------------------- compute
    def linear(self, x: torch.Tensor, index: int = 0) -> torch.Tensor:
        """``x @ W.T`` for matrix ``index`` (the expert, for fused experts)."""
        lead, k = x.shape[:-1], x.shape[-1]
        flat = x.reshape(-1, k)
        if flat.dtype != self.dtype:
            flat = flat.to(self.dtype)
        flat = flat.contiguous()
        if self.fmt.kind == "int8":
            out = self.kernels.int8_mm(flat, self.q[index], self.int8_scales[index])
        else:
            assert self.fmt.group_size is not None
            planes = self.planes[index]
            out = self.kernels.int4_mm(flat, planes[0], self.fmt.group_size, self.sz[index, 0])
            for p in range(1, len(planes)):
                out += self.kernels.int4_mm(flat, planes[p], self.fmt.group_size, self.sz[index, p])
        return out.view(*lead, out.shape[-1])

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` of the matrix (an embedding lookup) in the activation dtype: each row
        widened exactly (``scale * value + offset`` in float32), then cast."""
        flat = ids.reshape(-1).to(torch.long).cpu()
        fmt = self.fmt
        if fmt.kind == "int8":
            q = self.q[0].cpu()
            scale = self._exact_scales().reshape(-1)[flat, None].float()
            rows = q[flat].to(torch.float32) * scale
            return rows.to(self.dtype).to(ids.device).view(*ids.shape, -1)
        assert fmt.block_n is not None and fmt.group_size is not None
        planes = _stored_planes(self)
        values = torch.zeros(flat.numel(), self.in_features, dtype=torch.uint8)
        for p in range(fmt.planes):
            nibbles = int4_layout.gather_rows(planes[p], flat, fmt.block_n)
            values |= nibbles << (4 * p) if p else nibbles
        stored, stored_offsets = split_scales(fmt, self._exact_scales())
        scales = stored[:, flat].t().float()
        if stored_offsets is None:
            offsets = scales * -float(fmt.zero_point or 0)
        else:
            offsets = stored_offsets[:, flat].t().float()
        rows = values.view(flat.numel(), -1, fmt.group_size).to(torch.float32)
        rows.mul_(scales[..., None]).add_(offsets[..., None])
        return rows.view(flat.numel(), -1).to(self.dtype).to(ids.device).view(*ids.shape, -1)

    @classmethod
    def concat(cls, shards: list[PackedWeight]) -> PackedWeight:
        """Row shards of one matrix (in row order) as one packed matrix. Every shard but
        the last holds a multiple of the layout's block of rows (the chunker cuts them so),
        so the shards' bytes laid end to end are the layout of the whole."""
        first = shards[0]
        fmt = first.fmt
        if fmt.lead or fmt.transposed:
            raise ValueError(f"{first.name}: only row shards of a matrix can be joined")
        block = fmt.block_n or 1
        if any(s.out_features % block for s in shards[:-1]):
            raise ValueError(f"{first.name}: row shards not cut on blocks of {block} rows")
        whole = cls.__new__(cls)
        whole.__dict__.update(first.__dict__)
        whole.shape = (sum(s.out_features for s in shards), first.in_features)
        whole.out_features = whole.shape[0]
        n_dim = -2 if fmt.kind == "int4" and fmt.zero_point is None else -1
        exact = [s.stored_scales for s in shards if s.stored_scales is not None]
        whole.stored_scales = torch.cat(exact, dim=n_dim) if len(exact) == len(shards) else None
        if fmt.kind == "int8":
            whole.q = torch.cat([s.q for s in shards], dim=1)
            whole.int8_scales = torch.cat([s.int8_scales for s in shards], dim=1)
        else:
            whole.planes = [
                [torch.cat([s.planes[0][p] for s in shards]) for p in range(fmt.planes)]
            ]
            whole.sz = torch.cat([s.sz for s in shards], dim=3)
        return whole

    def __repr__(self) -> str:
        return f"PackedWeight({self.name!r}, {self.fmt.kind}, shape={list(self.shape)})"


def _stored_planes(weight: PackedWeight) -> list[torch.Tensor]:
    """The first matrix's planes in the stored (CPU) layout, for row lookups."""
    native = int4_layout.native_block_n()
    if weight.kernels.device_type == "cpu" and native == weight.fmt.block_n:
        return weight.planes[0]
    raise NotImplementedError(
        f"{weight.name}: row lookups of a packed embedding need the CPU nibble layout; "
        "this device holds it converted"
    )


def materialized_bytes(
    fmt: PackedFormat, rows: tuple[int, int] | None, dtype: torch.dtype | None, *, packed: bool
) -> int:
    """Bytes a packed tensor (or ``rows`` of it) holds once ready to compute: its stored
    parts plus the scale tables when kept packed, the widened weight otherwise."""
    specs = fmt.part_specs(rows)
    if not packed:
        numel = math.prod(specs["q"][0])
        if fmt.kind == "int4":
            numel *= 2 // fmt.planes  # two nibbles per byte per plane
        itemsize = (dtype or torch.float32).itemsize
        return numel * itemsize
    stored = fmt.stored_bytes(rows)
    itemsize = (dtype or torch.bfloat16).itemsize
    if fmt.kind == "int8":
        return stored + math.prod(specs["scales"][0]) * itemsize
    dtype_name = str(dtype or torch.bfloat16).removeprefix("torch.")
    if fmt.table_dtype == dtype_name:
        return stored  # the stored table is used in place
    scales = math.prod(specs["scales"][0])
    if fmt.zero_point is None:
        scales //= 2  # (scale, offset) pairs
    return stored + scales * fmt.planes * 2 * itemsize
