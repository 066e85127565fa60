"""The synthetic value generator and the streamed safetensors header, without disks."""

from __future__ import annotations

import numpy as np
import torch

from sw_core.chunks.safetensors_io import load_tensors
from sw_core.synth.values import BF16_ONE, PlausibleBF16, is_norm
from sw_core.synth.writer import TensorSpec, header_bytes


def values(gen: PlausibleBF16, name: str, start: int, n: int) -> np.ndarray:
    out = np.empty(n, dtype=np.uint16)
    gen.fill(name, start, out, norm=False)
    return out


def test_the_same_seed_and_name_give_the_same_values_piece_by_piece() -> None:
    gen = PlausibleBF16(seed=3)
    whole = values(gen, "w", 0, 3_000_000)
    pieces = np.concatenate([values(gen, "w", a, 1_000_000) for a in (0, 1_000_000, 2_000_000)])
    assert np.array_equal(whole, pieces)
    assert np.array_equal(whole, values(PlausibleBF16(seed=3), "w", 0, 3_000_000))


def test_other_seeds_and_names_give_other_values() -> None:
    a = values(PlausibleBF16(seed=0), "w", 0, 100_000)
    assert not np.array_equal(a, values(PlausibleBF16(seed=1), "w", 0, 100_000))
    assert not np.array_equal(a, values(PlausibleBF16(seed=0), "v", 0, 100_000))


def test_values_look_like_initialized_weights() -> None:
    raw = values(PlausibleBF16(seed=0), "w", 0, 4_000_000)
    x = torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16).float()
    assert torch.isfinite(x).all()
    assert abs(float(x.mean())) < 1e-3 and 0.018 < float(x.std()) < 0.022


def test_norm_weights_are_ones() -> None:
    assert is_norm("model.layers.0.input_layernorm.weight", (4096,))
    assert not is_norm("model.layers.0.mlp.up_proj.weight", (4096, 14336))
    out = np.empty(10, dtype=np.uint16)
    PlausibleBF16(seed=0).fill("model.norm.weight", 0, out, norm=True)
    assert (out == BF16_ONE).all()


def test_the_header_parses_and_puts_the_data_8_aligned() -> None:
    specs = [TensorSpec("a.weight", (3, 5)), TensorSpec("b.weight", (7,))]
    head = header_bytes(specs, {"format": "pt"})
    assert len(head) % 8 == 0
    body = bytearray(head) + bytearray(sum(s.nbytes for s in specs))
    tensors = load_tensors(body)
    assert tensors["a.weight"].shape == (3, 5) and tensors["b.weight"].dtype == torch.bfloat16
