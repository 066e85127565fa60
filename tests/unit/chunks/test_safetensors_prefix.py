"""Safetensors files read by their first bytes: a tail written last, parsed without it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sw_core.chunks.safetensors_io import beyond, parse_layout, save_aligned, tensors_at
from sw_core.exceptions import SecurityError

TENSORS = {
    "a:q": torch.arange(64, dtype=torch.uint8),
    "a:scales": torch.full((8,), 0.5, dtype=torch.float16),
    "a:table": torch.ones(16, dtype=torch.bfloat16),
    "norm": torch.ones(4, dtype=torch.float32),
}


def _saved(tmp_path: Path, tail: frozenset[str]) -> tuple[bytes, int]:
    path = tmp_path / "c.safetensors"
    split = save_aligned(TENSORS, str(path), tail=tail)
    return path.read_bytes(), split


def test_the_tail_comes_last_and_the_prefix_parses_without_it(tmp_path: Path) -> None:
    data, split = _saved(tmp_path, frozenset({"a:scales"}))
    assert split == len(data) - TENSORS["a:scales"].nbytes
    head = bytearray(data[:split])
    size, entries = parse_layout(head, prefix=True)
    tensors = tensors_at(entries, head)
    assert size == split and sorted(tensors) == ["a:q", "a:table", "norm"]
    assert torch.equal(tensors["a:q"], TENSORS["a:q"])
    assert beyond(head) == ["a:scales"]
    whole = tensors_at(parse_layout(bytearray(data))[1], bytearray(data))
    assert torch.equal(whole["a:scales"], TENSORS["a:scales"])


def test_without_a_tail_the_split_is_the_file_size(tmp_path: Path) -> None:
    data, split = _saved(tmp_path, frozenset())
    assert split == len(data) and beyond(data) == []


def test_a_prefix_is_refused_where_a_whole_file_is_expected(tmp_path: Path) -> None:
    data, split = _saved(tmp_path, frozenset({"a:scales"}))
    with pytest.raises(SecurityError, match="outside the data"):
        parse_layout(bytearray(data[:split]))


def test_a_tensor_cut_by_the_end_of_a_prefix_is_refused(tmp_path: Path) -> None:
    data, split = _saved(tmp_path, frozenset({"a:scales"}))
    with pytest.raises(SecurityError, match="cut by the end"):
        parse_layout(bytearray(data[: split - 2]), prefix=True)
    with pytest.raises(SecurityError, match="cut by the end"):
        parse_layout(bytearray(data[: split + 2]), prefix=True)
