"""Packed chunk sets on disk: the manifest describes every packed tensor, chunks hold its
parts aligned for the kernels, every packed chunk is checked against its digest (a flipped
byte is refused), a part that disagrees with its format is refused even with a matching
digest, and ``sw chunk --quantize`` works from a transformers folder."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from sw_core.chunks.chunker import chunk_model
from sw_core.chunks.manifest import MANIFEST_FILE, PACKED_FORMAT_VERSION, Manifest
from sw_core.chunks.safetensors_io import (
    ALIGN_BYTES,
    beyond,
    load_tensors,
    parse_layout,
    save_aligned,
)
from sw_core.chunks.verify import verify_chunk_set
from sw_core.cli import main as sw_main
from sw_core.engine import StreamingEngine
from sw_core.engine.io.sources import StoreChunkSource
from sw_core.exceptions import ModelError, SecurityError
from sw_core.hashing import file_digests
from sw_core.storage import FilesystemBackend
from tests.support.models import chunk_small, small_model


def _header(path: Path) -> tuple[dict[str, dict[str, object]], int]:
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size]), 8 + size


def test_manifest_describes_packed_parts_and_chunks_align_them(tmp_path: Path) -> None:
    _, manifest = chunk_small("llama", tmp_path, quantize="int4", group_size=64)
    raw = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert raw["format_version"] == PACKED_FORMAT_VERSION
    up = "model.layers.0.mlp.up_proj.weight"
    assert raw["packed"][up] == {
        "kind": "int4",
        "shape": [128, 64],
        "group_size": 64,
        "planes": 1,
        "block_n": manifest.formats[up].block_n,
        "scale_dtype": "float16",
        "source": "rtn",
        "table_dtype": "bfloat16",
    }
    block = manifest.chunk("model.layers.0")
    header, start = _header(tmp_path / block.file)
    assert {f"{up}:q", f"{up}:scales", f"{up}:table"} <= set(header) and up not in header
    assert start % ALIGN_BYTES == 0
    assert sorted(header) == sorted(manifest.stored_tensors(block))
    # tied embedding/head stays float; norms too
    assert "model.embed_tokens.weight" not in manifest.packed
    assert not any("norm" in name for name in manifest.packed)


def test_int8_parts_start_16_byte_aligned(tmp_path: Path) -> None:
    tensors = {
        "odd": torch.zeros(3, dtype=torch.int8),
        "w:q": torch.zeros(48, 64, dtype=torch.int8),
        "w:scales": torch.ones(48),
        "bias": torch.ones(5, dtype=torch.float16),
    }
    save_aligned(tensors, str(tmp_path / "c.safetensors"))
    header, start = _header(tmp_path / "c.safetensors")
    assert (start + header["w:q"]["data_offsets"][0]) % 16 == 0  # type: ignore[index]
    loaded = load_tensors((tmp_path / "c.safetensors").read_bytes())
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


async def test_a_flipped_byte_in_a_packed_chunk_is_refused(tmp_path: Path) -> None:
    _, manifest = chunk_small("llama", tmp_path, quantize="int4")
    block = manifest.chunk("model.layers.1")
    path = tmp_path / block.file
    data = bytearray(path.read_bytes())
    header, start = _header(path)
    q = header["model.layers.1.mlp.down_proj.weight:q"]["data_offsets"]  # type: ignore[index]
    data[start + q[0] + 5] ^= 0x10  # one nibble of a packed weight
    path.write_bytes(bytes(data))
    with pytest.raises(SecurityError, match="blake3"):
        await StoreChunkSource(FilesystemBackend(tmp_path)).fetch(block)
    report = await verify_chunk_set(FilesystemBackend(tmp_path))
    assert not report.ok and block.name in str(report.bad)
    engine = await StreamingEngine.open(str(tmp_path), memory_budget_mb=2048)
    try:
        with pytest.raises(SecurityError):
            await engine.run_async("forward", [{"input_ids": [5, 6, 7]}])
    finally:
        engine.close()


async def test_verify_checks_the_kernel_prefix_digests_too(tmp_path: Path) -> None:
    _, manifest = chunk_small("llama", tmp_path, quantize="int4")
    assert (await verify_chunk_set(FilesystemBackend(tmp_path))).ok
    raw = json.loads((tmp_path / MANIFEST_FILE).read_text())
    entry = next(c for c in raw["chunks"] if c["name"] == "model.layers.1")
    entry["kernel_blake3"] = "0" * 64
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(raw))
    report = await verify_chunk_set(FilesystemBackend(tmp_path))
    assert [(bad.name, bad.problem) for bad in report.bad] == [("model.layers.1", "kernel")]
    assert manifest.chunk("model.layers.1").kernel_blake3 != entry["kernel_blake3"]


def test_int4_chunks_keep_their_exact_scales_past_the_kernel_prefix(tmp_path: Path) -> None:
    _, manifest = chunk_small("llama", tmp_path, quantize="int4")
    block = manifest.chunk("model.layers.0")
    path = tmp_path / block.file
    assert block.kernel_bytes is not None and block.kernel_bytes < block.size_bytes
    assert (block.kernel_sha256, block.kernel_blake3) == file_digests(
        path, length=block.kernel_bytes
    )
    head = path.read_bytes()[: block.kernel_bytes]
    scales = sorted(n for n in manifest.stored_tensors(block) if n.endswith(":scales"))
    assert len(scales) == 7 and beyond(head) == scales
    _, entries = parse_layout(head, prefix=True)
    assert sorted(e[0] for e in entries) == sorted(
        set(manifest.stored_tensors(block)) - set(scales)
    )
    view = block.kernel_view()
    assert view is not None and view.is_prefix and view.size_bytes == block.kernel_bytes
    assert view.file_bytes == block.size_bytes and view.kernel_view() is None
    # int8 chunks keep their scales where the kernel reads them: no prefix
    _, int8 = chunk_small("llama", tmp_path / "int8", quantize="int8")
    assert int8.chunk("model.layers.0").kernel_bytes is None


async def test_only_the_bytes_an_engine_reads_are_needed_intact(tmp_path: Path) -> None:
    """A flipped byte in the exact scales (past the kernel prefix): reading the whole
    chunk refuses it; the bfloat16 engine, which reads only the prefix, never uses those
    bytes; the float32 engine, which widens from them, refuses the chunk."""
    _, manifest = chunk_small("llama", tmp_path, quantize="int4")
    block = manifest.chunk("model.layers.1")
    assert block.kernel_bytes is not None
    path = tmp_path / block.file
    data = bytearray(path.read_bytes())
    data[block.kernel_bytes + 3] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(SecurityError, match="blake3"):
        await StoreChunkSource(FilesystemBackend(tmp_path)).fetch(block)
    report = await verify_chunk_set(FilesystemBackend(tmp_path))
    assert [bad.problem for bad in report.bad] == ["sha256"]
    view = block.kernel_view()
    assert view is not None
    assert len(await StoreChunkSource(FilesystemBackend(tmp_path)).fetch(view)) == (
        block.kernel_bytes
    )
    for dtype in ("bfloat16", "float32"):
        engine = await StreamingEngine.open(
            str(tmp_path), memory_budget_mb=2048, compute_dtype=dtype
        )
        try:
            assert engine.manifest.chunk(block.name).is_prefix == (dtype == "bfloat16")
            if dtype == "bfloat16":
                await engine.run_async("forward", [{"input_ids": [5, 6, 7]}])
            else:
                with pytest.raises(SecurityError):
                    await engine.run_async("forward", [{"input_ids": [5, 6, 7]}])
        finally:
            engine.close()


async def test_a_part_that_disagrees_with_its_format_is_refused(tmp_path: Path) -> None:
    """A chunk re-signed by someone who can write the manifest, with a part of the wrong
    shape: the digest matches, the format check does not."""
    _, manifest = chunk_small("llama", tmp_path, quantize="int4")
    block = manifest.chunk("model.layers.0")
    path = tmp_path / block.file
    tensors = load_tensors(path.read_bytes())
    name = "model.layers.0.self_attn.q_proj.weight:scales"
    tensors[name] = tensors[name][:, :-16].contiguous()
    save_aligned(tensors, str(path))
    sha256, blake3 = file_digests(path)
    raw = json.loads((tmp_path / MANIFEST_FILE).read_text())
    for entry in raw["chunks"]:
        if entry["name"] == block.name:
            entry.update(sha256=sha256, blake3=blake3, size_bytes=path.stat().st_size)
            for key in ("kernel_bytes", "kernel_sha256", "kernel_blake3"):
                del entry[key]  # read whole: the scales part is the one off
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(raw))
    engine = await StreamingEngine.open(str(tmp_path), memory_budget_mb=2048)
    try:
        with pytest.raises(SecurityError, match="its format says"):
            await engine.run_async("forward", [{"input_ids": [5, 6, 7]}])
    finally:
        engine.close()


def test_manifest_versions_match_their_packed_tensors(tmp_path: Path) -> None:
    _, plain = chunk_small("gpt2", tmp_path / "plain")
    assert plain.format_version == 1 and not plain.packed
    chunk_small("gpt2", tmp_path / "packed", quantize="int8")
    raw = json.loads((tmp_path / "packed" / MANIFEST_FILE).read_text())
    raw["format_version"] = 1
    with pytest.raises(ModelError, match="does not match its packed tensors"):
        Manifest.from_json(json.dumps(raw))
    raw["format_version"] = 2  # the layout before (scale, offset) pairs and stored tables
    with pytest.raises(ModelError, match="chunk the model again"):
        Manifest.from_json(json.dumps(raw))
    raw["format_version"] = 3
    name = next(iter(raw["packed"]))
    raw["packed"][name]["group_size"] = 48
    raw["packed"][name]["kind"] = "int4"
    with pytest.raises(ModelError, match="unsupported format"):
        Manifest.from_json(json.dumps(raw))


def test_sw_chunk_quantizes_a_transformers_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small_model("llama").save_pretrained(tmp_path / "model")
    code = sw_main(
        [
            "chunk",
            str(tmp_path / "model"),
            "--out",
            str(tmp_path / "out"),
            "--quantize",
            "int4",
            "--group-size",
            "32",
            "--dtype",
            "bfloat16",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "packed: " in out and "int4 (rtn)" in out
    manifest = Manifest.load(tmp_path / "out")
    assert {f.group_size for f in manifest.formats.values() if f.kind == "int4"} == {32}
    assert manifest.dtype == "bfloat16"  # what stays float is narrowed


def test_sw_chunk_help_lists_the_formats(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        sw_main(["chunk", "--help"])
    text = capsys.readouterr().out
    for word in ("--quantize", "--group-size", "Q4_K", "Q8_0", "Q6_K", "int8", "int4"):
        assert word in text


def test_quantize_choices_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="group-size"):
        chunk_model(small_model("llama"), tmp_path, quantize="int4", group_size=48)
    with pytest.raises(ModelError, match="cannot quantize"):
        chunk_model(small_model("llama"), tmp_path, quantize="int3")
