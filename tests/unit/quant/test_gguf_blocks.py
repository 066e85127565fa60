"""GGUF blocks kept packed: the lossless types widen back to exactly what ``gguf`` (and so
transformers) dequantizes; Q6_K, re-rounded to 8 bits in groups of 32, within its bound."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType, dequantize
from gguf.constants import GGML_QUANT_SIZES

from sw_core.quant.gguf_blocks import LOSSLESS, decode, kept_packed
from sw_core.quant.weights import dequantize_parts

#: Offsets of the float16 fields (d, m / dmin) in each type's block.
F16_FIELDS = {
    "Q4_0": (0,),
    "Q5_0": (0,),
    "Q8_0": (0,),
    "Q4_1": (0, 2),
    "Q5_1": (0, 2),
    "Q4_K": (0, 2),
    "Q5_K": (0, 2),
    "Q6_K": (208,),
}


def random_blocks(type_name: str, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Random but valid blocks: random bits, with finite float16 scales."""
    rng = np.random.default_rng(seed)
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    raw = rng.integers(0, 256, size=(rows, cols // block * size), dtype=np.uint8)
    blocks = raw.reshape(-1, size)
    for offset in F16_FIELDS[type_name]:
        d = (rng.standard_normal(blocks.shape[0]) * 0.01).astype(np.float16)
        blocks[:, offset : offset + 2] = d.view(np.uint8).reshape(-1, 2)
    return raw


@pytest.mark.parametrize("type_name", list(LOSSLESS))
def test_lossless_types_widen_bit_for_bit(type_name: str) -> None:
    rows, cols = 48, 512
    raw = random_blocks(type_name, rows, cols)
    reference = dequantize(raw, GGMLQuantizationType[type_name]).reshape(rows, cols)
    weight = decode(raw, type_name, (rows, cols))
    assert weight.fmt.kind == "int4" and weight.fmt.source == f"gguf:{type_name}"
    assert weight.fmt.planes == (1 if type_name.startswith("Q4") else 2)
    widened = dequantize_parts(weight.fmt, weight.parts()).numpy()
    assert np.array_equal(widened, reference)
    assert kept_packed(type_name) == "lossless"


def test_q6_k_is_rounded_again_within_its_bound() -> None:
    rows, cols = 32, 512
    raw = random_blocks("Q6_K", rows, cols)
    reference = dequantize(raw, GGMLQuantizationType.Q6_K).reshape(rows, cols)
    weight = decode(raw, "Q6_K", (rows, cols))
    assert kept_packed("Q6_K") == "rounded" and weight.fmt.planes == 2
    widened = dequantize_parts(weight.fmt, weight.parts()).numpy()
    # 255 levels over each group of 32: at most half a step (plus float16 scale rounding)
    group_range = np.ptp(reference.reshape(rows, -1, 32), axis=2)
    step = np.repeat(group_range / 255, 32, axis=1).reshape(rows, cols)
    assert np.all(np.abs(widened - reference) <= 0.5 * step * 1.01 + 1e-6)
    assert np.linalg.norm(widened - reference) / np.linalg.norm(reference) < 0.01


def test_decode_reports_each_block_of_rows() -> None:
    raw = random_blocks("Q4_1", 40, 64)
    seen: list[tuple[int, int]] = []
    import sw_core.quant.gguf_blocks as blocks

    old = blocks.ROW_BLOCK
    blocks.ROW_BLOCK = 16
    try:
        decode(raw, "Q4_1", (40, 64), lambda a, b: seen.append((a, b)))
    finally:
        blocks.ROW_BLOCK = old
    assert seen == [(0, 16), (16, 32), (32, 40)]
