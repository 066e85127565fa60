"""Tiny chunk sets for storage tests, written without the chunker."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from sw_core.chunks.manifest import ChunkInfo, FileInfo, Manifest
from sw_core.chunks.safetensors_io import parse_header
from sw_core.utils import calculate_chunk_hash


def make_chunk_set(folder: Path, *, n_blocks: int = 3, name: str = "tiny") -> Manifest:
    """Write embeddings + ``n_blocks`` blocks + head chunks, a config file and the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)

    def chunk(chunk_name: str, tensors: dict[str, torch.Tensor], **info: object) -> ChunkInfo:
        file = f"{chunk_name}.safetensors"
        save_file(tensors, str(folder / file))
        path = folder / file
        return ChunkInfo(
            name=chunk_name,
            file=file,
            size_bytes=path.stat().st_size,
            sha256=calculate_chunk_hash(path),
            tensors=sorted(tensors),
            param_bytes=sum(t.numel() * t.element_size() for t in tensors.values()),
            **info,  # type: ignore[arg-type]
        )

    chunks = [
        chunk(
            "embeddings",
            {"embed.weight": torch.randn(32, 16, generator=generator)},
            role="embeddings",
        )
    ]
    for i in range(n_blocks):
        tensors = {
            f"layers.{i}.weight": torch.randn(16, 16, generator=generator),
            f"layers.{i}.bias": torch.randn(16, generator=generator),
        }
        chunks.append(chunk(f"block_{i:03d}", tensors, role="block", stack="layers", index=i))
    chunks.append(
        chunk("head", {"head.weight": torch.randn(32, 16, generator=generator)}, role="head")
    )

    config = folder / "config.json"
    config.write_text(json.dumps({"model_type": "tiny", "hidden_size": 16}))
    files = [FileInfo("config.json", config.stat().st_size, calculate_chunk_hash(config))]
    manifest = Manifest(
        name=name,
        architecture="bert",  # a supported one: `sw register` refuses others
        model_class="TinyModel",
        dtype="float32",
        chunks=chunks,
        files=files,
    )
    manifest.save(folder)
    return manifest


def flip_data_byte(path: Path) -> None:
    """Flip one byte in the tensor data of a safetensors file (the header stays valid)."""
    data = bytearray(path.read_bytes())
    _, start = parse_header(data)
    data[start + 5] ^= 0xFF
    path.write_bytes(bytes(data))
