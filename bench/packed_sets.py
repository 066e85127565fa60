"""The SmolLM2 chunk sets the packed-weight benchmarks compare, built once in a work folder.

- ``hf``: SmolLM2 dequantized by transformers from the bundled GGUF file, written as a
  transformers folder (float32 safetensors; ``save_pretrained`` refuses a GGUF-loaded model,
  so the state dict is written by hand, the tied head stored once);
- ``float32``: that folder chunked as it is (the dequantized reference, 538 MB);
- ``gguf``: the GGUF file chunked kept packed (``sw chunk model.gguf``: Q4_1 and Q8_0 kept
  packed, 117 MB: 97 MB of values and scales, 20 MB of stored kernel tables);
- ``int8`` / ``int4``: the float32 folder re-quantized (``sw chunk --quantize``).

Every set is written under ``root`` once and reused by later runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import smollm2  # bench/, beside this script

from sw_core.chunks.chunker import chunk_model
from sw_core.chunks.manifest import Manifest

SETS = ("float32", "gguf", "int8", "int4")

#: Row shards of the packed GGUF set for streaming benchmarks, the size of one SmolLM2 block
#: as the engine reads it (its kernel view, 2.22 MB): the streaming window is sized by the
#: largest streamed chunk, so the default 16 MB shards of the embedding would take a 25 %
#: budget whole and keep no layer, and 3 MB shards (a block stored whole, 2.66 MB) kept seven
#: layers where these keep nine (docs/operations.md, "Sizing").
BLOCK_SHARD_MB = 2.2


def write_hf_folder(folder: Path, model: Any = None, tokenizer: Any = None) -> Path:
    """SmolLM2 dequantized to float32, as a transformers folder (once; written by
    :func:`smollm2.write_hf_folder`, the writer every benchmark shares)."""
    if (folder / "config.json").exists():
        return folder
    from sw_core.local.bundled import load_smollm2

    if model is None:
        model, tokenizer = load_smollm2()
    smollm2.write_hf_folder(model, tokenizer, folder)
    return folder


def chunk_set(root: Path, which: str, *, max_chunk_mb: float = 16) -> tuple[Path, Manifest]:
    """Chunk set ``which`` (see :data:`SETS`) under ``root``, written once."""
    from sw_core.local.bundled import smollm2_gguf_path

    folder = root / f"smollm2-{which}-{max_chunk_mb:g}mb"
    if (folder / "manifest.json").exists():
        return folder, Manifest.load(folder)
    if which == "gguf":
        manifest = chunk_model(
            smollm2_gguf_path(), folder, name="smollm2", max_chunk_mb=max_chunk_mb
        )
        return folder, manifest
    hf = write_hf_folder(root / "smollm2-hf-float32")
    quantize = None if which == "float32" else which
    manifest = chunk_model(hf, folder, name="smollm2", max_chunk_mb=max_chunk_mb, quantize=quantize)
    return folder, manifest
