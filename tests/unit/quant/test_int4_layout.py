"""The int4 nibble layout rebuilt without the kernel equals torch's own converter."""

from __future__ import annotations

import pytest
import torch

from sw_core.quant import int4_layout
from sw_core.quant.weights import PACK_ROWS, QuantizedWeight, plane_values

NATIVE = int4_layout.native_block_n()


@pytest.mark.skipif(NATIVE is None, reason="this torch build has no CPU int4 layout")
@pytest.mark.parametrize("rows", [16, 32, 48, 64, 80, 112, 128, 208])
@pytest.mark.parametrize("cols", [32, 96])
def test_pack_equals_torch_converter(rows: int, cols: int) -> None:
    values = torch.randint(0, 16, (rows, cols), dtype=torch.int32)
    native = torch._convert_weight_to_int4pack_for_cpu(values, 2)
    assert NATIVE is not None
    assert torch.equal(int4_layout.pack(values, NATIVE).view(-1), native.view(-1))


@pytest.mark.parametrize("block_n", [int4_layout.WIDE, int4_layout.NARROW])
@pytest.mark.parametrize("rows", [16, 48, 64, 144])
def test_unpack_and_gather_invert_pack(block_n: int, rows: int) -> None:
    values = torch.randint(0, 16, (rows, 64), dtype=torch.uint8)
    packed = int4_layout.pack(values, block_n)
    assert torch.equal(int4_layout.unpack(packed, block_n), values)
    picked = torch.tensor([rows - 1, 0, rows // 2, min(17, rows - 1), min(17, rows - 1)])
    assert torch.equal(int4_layout.gather_rows(packed, picked, block_n), values[picked])


def test_parts_pack_in_row_blocks_like_the_whole() -> None:
    """QuantizedWeight.parts packs a block of rows at a time: the same bytes as at once."""
    rows = PACK_ROWS + 80
    values = torch.randint(0, 256, (rows, 32), dtype=torch.uint8)
    scales = torch.rand(1, rows, dtype=torch.float16)
    weight = QuantizedWeight.int4(values, scales, group_size=32, planes=2, zero_point=128)
    parts = weight.parts()
    block_n = weight.fmt.block_n
    assert block_n is not None
    for p in range(2):
        whole = int4_layout.pack((values >> (4 * p)) & 0x0F, block_n)
        assert torch.equal(parts["q"][p], whole)
    assert torch.equal(plane_values(weight.fmt, parts["q"]), values)


def test_pack_refuses_rows_the_kernel_cannot_take() -> None:
    with pytest.raises(ValueError, match="N % 16"):
        int4_layout.pack(torch.zeros(24, 32, dtype=torch.uint8), 64)
