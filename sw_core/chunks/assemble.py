"""Rebuild a whole transformers model from a local chunk set (every chunk verified).

This holds the entire model in memory, so it is for checks and debugging (``sw chunk``'s
round trip, tests), not for serving: the engine streams chunks instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sw_core.chunks.manifest import Manifest
from sw_core.chunks.safetensors_io import load_tensors
from sw_core.exceptions import ModelError, SecurityError
from sw_core.hashing import Expected, hex_digest
from sw_core.quant.formats import split_part
from sw_core.quant.weights import dequantize_parts

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def model_class(manifest: Manifest) -> type[PreTrainedModel]:
    """The transformers class named by the manifest."""
    import transformers

    cls = getattr(transformers, manifest.model_class, None)
    if not isinstance(cls, type) or not issubclass(cls, transformers.PreTrainedModel):
        raise ModelError(f"model {manifest.name!r}: unknown model class {manifest.model_class!r}")
    return cls


def read_state_dict(
    folder: str | Path, manifest: Manifest | None = None
) -> dict[str, torch.Tensor]:
    """Every chunk's tensors, row shards joined, each chunk checked against its digest (BLAKE3
    when the manifest has it, else sha256). Packed tensors are dequantized to float32 (the
    model a packed chunk set stands for)."""
    folder = Path(folder)
    manifest = manifest or Manifest.load(folder)
    state: dict[str, torch.Tensor] = {}
    shards: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for chunk in manifest.chunks:
        data = bytearray((folder / chunk.file).read_bytes())
        expected = Expected.for_entry(chunk)
        if not expected.matches(hex_digest(expected.algorithm, data)):
            raise SecurityError(
                f"chunk {chunk.name!r} of {manifest.name!r} does not match its {expected.algorithm}"
            )
        stored = load_tensors(data)
        if set(stored) != set(manifest.stored_tensors(chunk)):
            raise SecurityError(f"chunk {chunk.name!r} holds other tensors than its manifest lists")
        tensors = _unpacked(manifest, stored)
        if chunk.rows is not None:  # row shards: one tensor; experts: every fused tensor
            for name in chunk.tensors:
                shards.setdefault(name, []).append((chunk.rows[0], tensors[name]))
        else:
            state.update(tensors)
    for name, parts in shards.items():
        state[name] = torch.cat([t for _, t in sorted(parts, key=lambda p: p[0])])
    return state


def _unpacked(manifest: Manifest, stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A chunk's tensors with packed ones dequantized (float32)."""
    tensors: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in stored.items():
        tensor_name, part = split_part(name)
        if part is not None and tensor_name in manifest.formats:
            parts.setdefault(tensor_name, {})[part] = tensor
        else:
            tensors[name] = tensor
    for name, group in parts.items():
        tensors[name] = dequantize_parts(manifest.formats[name], group)
    return tensors


def assemble_model(folder: str | Path) -> torch.nn.Module:
    """A transformers model built from the chunk set's config with all its weights loaded."""
    from transformers import AutoConfig

    folder = Path(folder)
    manifest = Manifest.load(folder)
    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = model_class(manifest)(config)
    state = read_state_dict(folder, manifest)
    for alias, canonical in manifest.tied.items():
        state[alias] = state[canonical]
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        raise ModelError(f"chunks of {manifest.name!r} hold unknown weights: {unexpected[:3]}")
    if missing:
        raise ModelError(f"chunks of {manifest.name!r} lack weights: {missing[:3]}")
    if manifest.tied:
        model.tie_weights()
    _rebuild_non_persistent_buffers(model, config)
    return model.eval()


def _rebuild_non_persistent_buffers(model: torch.nn.Module, config: object) -> None:
    """Buffers that are not in any checkpoint are still on meta: compute them on the CPU."""
    meta_buffers = [name for name, buf in model.named_buffers() if buf.is_meta]
    if not meta_buffers:
        return
    with torch.device("cpu"):
        fresh = type(model)(config)
    fresh_buffers = dict(fresh.named_buffers())
    for name in meta_buffers:
        module_path, _, buffer_name = name.rpartition(".")
        owner = model.get_submodule(module_path) if module_path else model
        owner.register_buffer(buffer_name, fresh_buffers[name].clone(), persistent=False)
