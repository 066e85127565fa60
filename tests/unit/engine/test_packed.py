"""Packed weights in the engine: torch's kernels against the dequantized weight, row lookups,
joined row shards, and the CUDA path's conversion and dispatch (with a stand-in for torch's
CUDA ops, since no GPU is at hand: the CUDA kernels themselves are unchecked)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from sw_core.engine.model.kernels import CpuKernels, CudaKernels, cuda_input
from sw_core.engine.model.packed import PackedWeight, StoredPacked, materialized_bytes, widen
from sw_core.quant.rtn import quantize_int4, quantize_int8
from sw_core.quant.weights import QuantizedWeight

#: bfloat16 activations: relative error of a product, measured about 3e-3 (issue 23).
BF16_REL = 1.5e-2


def stored(weight: QuantizedWeight, name: str = "w") -> StoredPacked:
    return StoredPacked(name, weight.fmt, weight.parts())


def weights() -> dict[str, QuantizedWeight]:
    torch.manual_seed(0)
    w = torch.randn(96, 128) * 0.05
    q8 = quantize_int4(w, 32, planes=2)  # 8-bit values in two planes
    return {
        "int4": quantize_int4(w, 32),
        "int4-g128": quantize_int4(w, 128),
        "int4x2": q8,
        "int8": quantize_int8(w),
        "zero-point": QuantizedWeight.int4(
            q8.values, q8.scales, group_size=32, planes=2, zero_point=128
        ),
    }


@pytest.mark.parametrize("kind", list(weights()))
def test_packed_linear_matches_the_dequantized_weight(kind: str) -> None:
    weight = weights()[kind]
    packed = PackedWeight(stored(weight), torch.bfloat16, CpuKernels())
    x = torch.randn(5, 128)
    reference = x @ weight.dequantize().t()
    out = packed.linear(x.to(torch.bfloat16)).float()
    assert out.shape == (5, 96)
    assert (out - reference).norm() / reference.norm() < BF16_REL
    three_d = packed.linear(x.view(5, 1, 128).to(torch.bfloat16))
    assert three_d.shape == (5, 1, 96)


@pytest.mark.parametrize("kind", ["int4", "int4x2", "int8", "zero-point"])
def test_lookup_is_the_widened_rows(kind: str) -> None:
    weight = weights()[kind]
    packed = PackedWeight(stored(weight), torch.bfloat16, CpuKernels())
    ids = torch.tensor([[3, 95, 0], [64, 64, 17]])
    rows = packed.lookup(ids)
    assert rows.shape == (2, 3, 128) and rows.dtype == torch.bfloat16
    assert torch.equal(rows, weight.dequantize()[ids].to(torch.bfloat16))


@pytest.mark.parametrize("kind", ["int4", "int4x2", "int8"])
def test_row_shards_join_into_the_whole(kind: str) -> None:
    weight = weights()[kind]
    parts = [
        PackedWeight(
            StoredPacked("w", weight.fmt, weight.rows(a, b).parts(), (a, b)),
            torch.bfloat16,
            CpuKernels(),
        )
        for a, b in ((0, 64), (64, 96))
    ]
    whole = PackedWeight.concat(parts)
    single = PackedWeight(stored(weight), torch.bfloat16, CpuKernels())
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    assert torch.equal(whole.linear(x), single.linear(x))
    assert torch.equal(whole.lookup(torch.tensor([70, 5])), single.lookup(torch.tensor([70, 5])))


def test_widen_is_the_float32_dequantization() -> None:
    weight = weights()["int4x2"]
    assert torch.equal(widen(stored(weight), torch.float32), weight.dequantize())
    assert torch.equal(
        widen(stored(weight), torch.bfloat16), weight.dequantize().to(torch.bfloat16)
    )


def test_materialized_bytes_count_scale_tables_or_the_widened_weight() -> None:
    fmt = weights()["int4"].fmt  # 96 x 128, groups of 32: 4 x 96 scale pairs
    stored_bytes = fmt.stored_bytes()
    assert stored_bytes == 96 * 64 + 2 * 4 * 96 * 2
    assert (
        materialized_bytes(fmt, None, torch.bfloat16, packed=True) == stored_bytes + 4 * 96 * 2 * 2
    )
    assert materialized_bytes(fmt, None, torch.float32, packed=False) == 96 * 128 * 4
    assert materialized_bytes(fmt, (0, 64), torch.float32, packed=False) == 64 * 128 * 4


class FakeCudaOps:
    """torch's CUDA int4 ops as the documentation describes them, on CPU tensors."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def _convert_weight_to_int4pack(self, w: torch.Tensor, tiles: int) -> torch.Tensor:
        self.calls.append(f"convert(tiles={tiles})")
        assert w.dtype == torch.uint8
        return w  # the real op tiles it; the stand-in keeps tinygemm's input layout

    def _weight_int4pack_mm(
        self, x: torch.Tensor, w: torch.Tensor, group: int, sz: torch.Tensor
    ) -> torch.Tensor:
        self.calls.append(f"mm(group={group})")
        high, low = (w >> 4).to(torch.float32), (w & 0x0F).to(torch.float32)
        values = torch.stack([high, low], dim=-1).view(w.shape[0], -1)  # column 2i high
        scale = sz[..., 0].t().repeat_interleave(group, dim=1).float()
        zero = sz[..., 1].t().repeat_interleave(group, dim=1).float()
        return (x.float() @ ((values - 8) * scale + zero).t()).to(x.dtype)


def test_cuda_path_converts_planes_and_dispatches() -> None:
    """Unchecked on a GPU: the conversion to tinygemm's input and the calls are right."""
    ops: Any = FakeCudaOps()
    kernels = CudaKernels(torch.device("cpu"), ops=ops)
    weight = weights()["int4x2"]
    packed = PackedWeight(stored(weight), torch.bfloat16, kernels)
    assert ops.calls == ["convert(tiles=8)", "convert(tiles=8)"]
    x = torch.randn(2, 128)
    reference = x @ weight.dequantize().t()
    out = packed.linear(x.to(torch.bfloat16)).float()
    assert ops.calls[2:] == ["mm(group=32)", "mm(group=32)"]
    assert (out - reference).norm() / reference.norm() < BF16_REL
    int8 = PackedWeight(stored(weights()["int8"]), torch.bfloat16, kernels)
    assert int8.q.dtype == torch.bfloat16  # widened on arrival on CUDA
    ref8 = x @ weights()["int8"].dequantize().t()
    assert (int8.linear(x).float() - ref8).norm() / ref8.norm() < BF16_REL


def test_cuda_input_puts_the_even_column_high() -> None:
    values = torch.tensor([[1, 2, 3, 4]], dtype=torch.uint8)
    assert cuda_input(values).tolist() == [[0x12, 0x34]]
