"""Round-to-nearest quantization: values in range, errors within half a step, layouts."""

from __future__ import annotations

import pytest
import torch

from sw_core.exceptions import ModelError
from sw_core.quant.formats import PackedFormat, stored_names
from sw_core.quant.rtn import quantize_int4, quantize_int8
from sw_core.quant.weights import dequantize_parts


def test_int8_per_channel_error_within_half_a_step() -> None:
    torch.manual_seed(0)
    weight = torch.randn(64, 96)
    q = quantize_int8(weight)
    assert q.fmt.kind == "int8" and q.values.dtype == torch.int8
    assert q.scales.shape == (64,)
    step = weight.abs().amax(dim=1, keepdim=True) / 127
    assert torch.all((q.dequantize() - weight).abs() <= step / 2 + 1e-7)
    assert torch.equal(dequantize_parts(q.fmt, q.parts()), q.dequantize())


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_asymmetric_per_group(group_size: int) -> None:
    torch.manual_seed(0)
    weight = torch.randn(48, 256) * 0.05
    q = quantize_int4(weight, group_size)
    assert q.fmt.group_size == group_size and q.fmt.planes == 1
    assert int(q.values.max()) <= 15
    grouped = weight.view(48, -1, group_size)
    step = (grouped.amax(2) - grouped.amin(2)) / 15
    err = (q.dequantize() - weight).abs().view(48, -1, group_size)
    # half a step, plus what rounding the scale and offset to float16 moves
    assert torch.all(err <= step[..., None] * 0.5 + 2e-3 * grouped.abs().amax(2)[..., None])
    assert torch.equal(dequantize_parts(q.fmt, q.parts()), q.dequantize())


def test_transposed_weights_pack_their_transpose() -> None:
    """GPT-2's Conv1D holds [in, out]: the packed matrix is [out, in]."""
    torch.manual_seed(0)
    weight = torch.randn(64, 48) * 0.05  # [K=64, N=48]
    q = quantize_int4(weight, 32, transposed=True)
    assert q.fmt.shape == [64, 48] and q.fmt.matrix == (48, 64)
    assert q.dequantize().shape == (64, 48)
    straight = quantize_int4(weight.t().contiguous(), 32).dequantize()
    assert torch.equal(q.dequantize(), straight.t())


def test_row_shards_slice_rows() -> None:
    weight = torch.randn(128, 64)
    q = quantize_int4(weight, 32)
    shard = q.rows(64, 128)
    assert shard.fmt.shape == [128, 64]
    assert torch.equal(shard.dequantize(), q.dequantize()[64:128])
    specs = q.fmt.part_specs((64, 128))
    assert specs["q"][0] == [1, 64, 32] and specs["scales"][0] == [2, 64]
    assert {k: list(v.shape) for k, v in shard.parts().items()} == {
        k: s for k, (s, _) in specs.items()
    }


def test_format_round_trips_and_checks() -> None:
    fmt = quantize_int4(torch.randn(32, 64), 32).fmt
    assert PackedFormat.from_dict(fmt.to_dict()) == fmt
    assert stored_names("w", fmt) == ["w:q", "w:scales", "w:offsets"]
    fmt.check("w")
    with pytest.raises(ModelError, match="multiple of 16"):
        PackedFormat("int4", [24, 64], group_size=32, block_n=64).check("w")
    with pytest.raises(ModelError, match="group size"):
        PackedFormat("int4", [32, 64], group_size=48, block_n=64).check("w")
    with pytest.raises(ModelError, match="malformed"):
        PackedFormat.from_dict({"kind": "int4", "nonsense": 1})
