"""Many activation rows through packed int4 planes: dequantized tiles and a GEMM, against
torch's int4 kernel and the float32 dequantized weight."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from sw_core.engine.model import wide_rows
from sw_core.engine.model.kernels import CpuKernels
from sw_core.engine.model.packed import PackedWeight, StoredPacked
from sw_core.quant import int4_layout
from sw_core.quant.rtn import quantize_int4

pytestmark = pytest.mark.skipif(
    int4_layout.native_block_n() != int4_layout.WIDE,
    reason="the dequantized path reads the AVX-512 layout only; elsewhere the kernel runs",
)

#: The kernel itself is about 3e-3 off the float32 product; rounding the dequantized
#: weights to bfloat16 once adds about as much.
REL = 1e-2


def plane_and_table(n: int, k: int, group: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(n + k)
    values = torch.randint(0, 16, (n, k), dtype=torch.int32)
    plane = torch._convert_weight_to_int4pack_for_cpu(values, 2)
    table = (torch.randn(k // group, n, 2) * 0.02).to(torch.bfloat16)
    return plane, table


def relative(out: torch.Tensor, reference: torch.Tensor) -> float:
    return float((out.float() - reference.float()).norm() / reference.float().norm())


@pytest.mark.parametrize(("n", "k", "group"), [(192, 128, 32), (640, 256, 64), (128, 512, 128)])
def test_dequantized_product_matches_the_kernel(n: int, k: int, group: int) -> None:
    plane, table = plane_and_table(n, k, group)
    x = torch.randn(wide_rows.WIDE_ROWS + 3, k).to(torch.bfloat16)
    kernel = torch._weight_int4pack_mm_for_cpu(x, plane, group, table)
    out = wide_rows.dequantized_mm(x, plane, group, table)
    assert out.shape == kernel.shape and out.dtype == torch.bfloat16
    assert relative(out, kernel) < REL


def test_tiles_cover_every_row(monkeypatch: pytest.MonkeyPatch) -> None:
    plane, table = plane_and_table(448, 128)  # 7 blocks of 64: tiles of 2 blocks, 1 left over
    monkeypatch.setattr(wide_rows, "TILE_WEIGHTS", 2 * 64 * 128)
    x = torch.randn(wide_rows.WIDE_ROWS, 128).to(torch.bfloat16)
    kernel = torch._weight_int4pack_mm_for_cpu(x, plane, 32, table)
    out = wide_rows.dequantized_mm(x, plane, 32, table)
    for start in range(0, 448, 64):  # each block on its own: none skipped or shifted
        block = slice(start, start + 64)
        assert relative(out[:, block], kernel[:, block]) < REL


def test_an_unaligned_plane_reads_bytes_one_at_a_time() -> None:
    plane, _ = plane_and_table(128, 64)
    buffer = torch.empty(plane.numel() + 1, dtype=torch.uint8)
    skewed = buffer[1:].view(plane.shape)  # one byte past a 4-byte boundary
    skewed.copy_(plane)
    assert skewed.data_ptr() % 4 != 0
    aligned = wide_rows._nibbles_t(plane, 64)
    assert torch.equal(wide_rows._nibbles_t(skewed, 64), aligned)
    values = int4_layout.unpack(plane, int4_layout.WIDE)
    assert torch.equal(aligned, values.t())


class CountingOps:
    """torch's ops, counting calls of the CPU int4 kernel."""

    def __init__(self) -> None:
        self.kernel_calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    def _weight_int4pack_mm_for_cpu(self, *args: Any) -> torch.Tensor:
        self.kernel_calls += 1
        return torch._weight_int4pack_mm_for_cpu(*args)


def test_packed_linear_takes_the_kernel_for_few_rows_and_dequantizes_for_many() -> None:
    torch.manual_seed(1)
    w = torch.randn(128, 256) * 0.05
    quantized = quantize_int4(w, 32, planes=2)
    ops = CountingOps()
    packed = PackedWeight(
        StoredPacked("w", quantized.fmt, quantized.parts()), torch.bfloat16, CpuKernels(ops)
    )
    reference = quantized.dequantize().float()
    few = torch.randn(4, 256)
    many = torch.randn(wide_rows.WIDE_ROWS, 256)
    out_few = packed.linear(few.to(torch.bfloat16))
    assert ops.kernel_calls == 2  # one call per plane
    out_many = packed.linear(many.to(torch.bfloat16))
    assert ops.kernel_calls == 2
    assert relative(out_few, few @ reference.t()) < REL
    assert relative(out_many, many @ reference.t()) < REL


def test_few_rows_or_partial_blocks_keep_the_kernel() -> None:
    plane, _ = plane_and_table(192, 64)
    assert wide_rows.takes(torch.empty(wide_rows.WIDE_ROWS, 64), plane)
    assert not wide_rows.takes(torch.empty(wide_rows.WIDE_ROWS - 1, 64), plane)
    assert not wide_rows.takes(torch.empty(wide_rows.WIDE_ROWS, 64), plane[:160])
