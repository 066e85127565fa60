"""A verified chunk's header is parsed and checked once per digest; later arrivals of the
same chunk rebuild its tensors from the kept layout, zero-copy over the new buffer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sw_core.chunks.manifest import ChunkInfo, Manifest
from sw_core.engine.model import chunk_reader
from sw_core.engine.model.chunk_reader import ChunkReader
from sw_core.exceptions import SecurityError
from tests.support.models import chunk_small


def _reader(manifest: Manifest, model: torch.nn.Module) -> ChunkReader:
    state = model.state_dict()
    return ChunkReader(manifest, {n: (tuple(t.shape), t.dtype) for n, t in state.items()})


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    parse = chunk_reader.parse_layout

    def counted(data: bytearray | memoryview, *, prefix: bool = False) -> object:
        calls.append(1)
        return parse(data, prefix=prefix)

    monkeypatch.setattr(chunk_reader, "parse_layout", counted)
    return calls


def _first_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[torch.nn.Module, ChunkReader, list[int], ChunkInfo, bytes]:
    """A small LLaMA's reader, its parse counter, its first block chunk and that chunk's bytes."""
    model, manifest = chunk_small("llama", tmp_path)
    reader = _reader(manifest, model)
    chunk = next(c for c in manifest.chunks if c.role == "block")
    return model, reader, _counting(monkeypatch), chunk, (tmp_path / chunk.file).read_bytes()


def test_a_chunk_is_parsed_once_and_rebuilt_over_each_new_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, reader, parsed, chunk, raw = _first_block(tmp_path, monkeypatch)
    first = reader.read(chunk, bytearray(raw))
    second_buffer = bytearray(raw)
    second = reader.read(chunk, second_buffer)
    assert len(parsed) == 1
    assert set(first) == set(second) == set(chunk.tensors)
    state = model.state_dict()
    start = torch.frombuffer(second_buffer, dtype=torch.uint8).data_ptr()
    for name, tensor in second.items():
        assert torch.equal(tensor, first[name]) and torch.equal(tensor, state[name])
        assert start <= tensor.data_ptr() < start + len(second_buffer)  # over the new buffer


def test_a_buffer_of_another_size_is_parsed_and_checked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, reader, parsed, chunk, raw = _first_block(tmp_path, monkeypatch)
    reader.read(chunk, bytearray(raw))
    with pytest.raises(SecurityError, match="trailing bytes"):
        reader.read(chunk, bytearray(raw + b"\0" * 64))
    assert len(parsed) == 2


def test_a_chunk_holding_other_tensors_is_refused_on_arrival(tmp_path: Path) -> None:
    model, manifest = chunk_small("llama", tmp_path)
    reader = _reader(manifest, model)
    blocks = [c for c in manifest.chunks if c.role == "block"]
    other = (tmp_path / blocks[1].file).read_bytes()
    with pytest.raises(SecurityError, match="does not hold what the manifest lists"):
        reader.read(blocks[0], bytearray(other))
