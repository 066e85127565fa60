"""The packed-weight kernels torch provides, per device.

CPU (checked here, AVX-512 + AMX): ``torch._weight_int4pack_mm_for_cpu(x, q, group, sz)``
with ``q`` in the CPU nibble layout the chunks store (zero-copy) and
``torch._weight_int8pack_mm(x, q, scales)``. Activations must be 2-D, contiguous and of the
scales' dtype (bfloat16 is the fast path; float32 is exact but about 20x slower). From
:data:`~sw_core.engine.model.wide_rows.WIDE_ROWS` activation rows on, int4 planes are
dequantized and multiplied by a GEMM instead (:mod:`sw_core.engine.model.wide_rows`).

CUDA (**unchecked**: no GPU was available when this was written; the conversion below is
unit-tested on CPU tensors and the dispatch with a stand-in for torch's ops):
``torch._convert_weight_to_int4pack(w, inner_k_tiles)`` takes ``[N, K/2]`` uint8 with the
even column in the high nibble, so each stored plane is unpacked from the CPU layout and
packed that way on arrival, then ``torch._weight_int4pack_mm(x, w, group, sz)`` (bfloat16).
int8 weights are widened to bfloat16 on arrival on CUDA and run through ``F.linear``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional

from sw_core.engine.model import wide_rows
from sw_core.quant import int4_layout


class CpuKernels:
    """torch's CPU packed-weight kernels."""

    device_type = "cpu"

    def __init__(self, ops: Any = torch) -> None:
        self.ops = ops

    def prepare_int4(self, plane: torch.Tensor, block_n: int) -> torch.Tensor:
        """A stored plane as the kernel takes it: as stored when the layouts match."""
        native = int4_layout.native_block_n()
        if native == block_n:
            return plane
        values = int4_layout.unpack(plane, block_n).to(torch.int32)
        return self.ops._convert_weight_to_int4pack_for_cpu(values, 2)

    def int4_mm(
        self, x: torch.Tensor, plane: torch.Tensor, group_size: int, sz: torch.Tensor
    ) -> torch.Tensor:
        if wide_rows.takes(x, plane):
            return wide_rows.dequantized_mm(x, plane, group_size, sz)
        return self.ops._weight_int4pack_mm_for_cpu(x, plane, group_size, sz)

    def int8_mm(self, x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        return self.ops._weight_int8pack_mm(x, q, scales)

    #: Whether int8 weights stay int8 (else they are widened on arrival).
    int8_packed = True


class CudaKernels(CpuKernels):
    """torch's CUDA int4 kernel (tinygemm). Unchecked: see the module doc."""

    device_type = "cuda"
    int8_packed = False

    def __init__(self, device: torch.device, ops: Any = torch) -> None:
        super().__init__(ops)
        self.device = device

    def prepare_int4(self, plane: torch.Tensor, block_n: int) -> torch.Tensor:
        values = int4_layout.unpack(plane.to("cpu"), block_n)
        k = values.shape[1]
        tiles = next((t for t in (8, 4, 2) if k % (16 * t) == 0), None)
        if tiles is None:
            raise ValueError(f"K = {k} is not a multiple of 32: no CUDA int4 layout")
        return self.ops._convert_weight_to_int4pack(cuda_input(values).to(self.device), tiles)

    def int4_mm(
        self, x: torch.Tensor, plane: torch.Tensor, group_size: int, sz: torch.Tensor
    ) -> torch.Tensor:
        return self.ops._weight_int4pack_mm(x, plane, group_size, sz)

    def int8_mm(self, x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        return functional.linear(x, q)  # q was widened on arrival (int8_packed = False)


def cuda_input(values: torch.Tensor) -> torch.Tensor:
    """``[N, K]`` values in 0..15 -> ``[N, K/2]`` uint8, column ``2i`` in the high nibble (what
    ``torch._convert_weight_to_int4pack`` takes)."""
    v = values.to(torch.uint8)
    return (v[:, 0::2] << 4) | v[:, 1::2]


def kernels_for(device: torch.device) -> CpuKernels:
    if device.type == "cuda":
        return CudaKernels(device)
    return CpuKernels()
