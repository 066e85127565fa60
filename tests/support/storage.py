"""Small chunk sets written without the chunker, and a byte flipper.

- :func:`make_chunk_set` (torch): embeddings, blocks and head chunks plus a config file,
  for the storage and operations tests;
- :func:`write_chunk_set` (``safetensors.numpy``, no torch): ``n_chunks`` block chunks of
  one weight and one bias each, for the chaos scenarios.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save as save_numpy
from safetensors.torch import save_file

from sw_core.chunks.manifest import ChunkInfo, FileInfo, Manifest
from sw_core.chunks.safetensors_io import parse_header
from sw_core.hashing import hex_digest
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


def tensor_chunk(seed: int, rows: int = 64, cols: int = 256) -> bytes:
    """A safetensors blob with one weight and one bias (float32), deterministic per seed."""
    rng = np.random.default_rng(seed)
    return save_numpy(
        {
            "weight": rng.standard_normal((rows, cols), dtype=np.float32),
            "bias": rng.standard_normal((cols,), dtype=np.float32),
        }
    )


#: Whether :func:`write_chunk_set` records a BLAKE3 digest per chunk (the BLAKE3 variants of
#: the chaos scenarios set it; the default keeps the sha256-only chunk sets of older versions).
RECORD_BLAKE3 = False


def write_chunk_set(
    folder: Path, *, name: str = "tiny", n_chunks: int = 4, rows: int = 64, seed: int = 0
) -> Manifest:
    """A chunk set of ``n_chunks`` real safetensors chunks plus its manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    chunks: list[ChunkInfo] = []
    for i in range(n_chunks):
        data = tensor_chunk(seed * 1000 + i, rows=rows)
        chunk_name = f"block_{i:03d}"
        (folder / f"{chunk_name}.safetensors").write_bytes(data)
        chunks.append(
            ChunkInfo(
                name=chunk_name,
                file=f"{chunk_name}.safetensors",
                size_bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                blake3=hex_digest("blake3", data) if RECORD_BLAKE3 else None,
                tensors=["weight", "bias"],
                role="block",
                stack="layers",
                index=i,
                param_bytes=len(data),
            )
        )
    manifest = Manifest(
        name=name, architecture="chaos", model_class="none", dtype="float32", chunks=chunks
    )
    manifest.save(folder)
    return manifest
