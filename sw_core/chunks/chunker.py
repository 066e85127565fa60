"""Cut a transformers model into verified layer chunks.

``chunk_model(source, out_dir)`` writes one safetensors chunk per transformer block, a chunk
for what comes before the blocks (``embeddings``), one for what follows them (``head``),
tied weights once, the config and tokenizer files, and ``manifest.json`` (written last)
with a sha256 per file. Large 2-D tensors of the embeddings/head (embedding matrices, an
untied output projection) are split into row shards of at most ``max_chunk_mb`` so that a
worker with a small memory budget never has to hold them whole.

Sources: a model object, a local model folder with safetensors weights (read tensor by
tensor: the whole model is never in memory), or a ``.gguf`` file (read tensor by tensor too,
its quantized tensors kept packed: :mod:`sw_core.chunks.gguf_chunker`).

``quantize="int8"|"int4"`` quantizes the linear layers as they are read
(:mod:`sw_core.chunks.quantize`); the manifest records every packed tensor's format.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from sw_core.architectures import check_architecture
from sw_core.chunks.checkpoint import match_checkpoint, skeleton_class
from sw_core.chunks.manifest import Manifest
from sw_core.chunks.plan import block_stacks, numel, plan_chunks, tied_parameters
from sw_core.chunks.quantize import DEFAULT_GROUP_SIZE, QuantizingSource, plan_quantization
from sw_core.chunks.tensor_sources import (
    STORED_DTYPES,
    SafetensorsSource,
    StateDictSource,
    TensorSource,
    stored,
)
from sw_core.chunks.writer import finish_manifest, write_chunks
from sw_core.exceptions import ModelError
from sw_core.progress import Progress
from sw_core.quant.formats import PackedFormat

log = logging.getLogger(__name__)

#: Default of ``sw chunk --max-chunk-mb`` (``sw_core.cli.chunk_cmds`` repeats it to stay light).
DEFAULT_MAX_CHUNK_MB = 16

#: Non-weight files copied from a model folder when present.
SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "chat_template.jinja",
    "chat_template.json",
    "modules.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
)


# --------------------------------------------------------------------------- entry point
def chunk_model(
    source: torch.nn.Module | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    tokenizer: Any = None,
    max_chunk_mb: float = DEFAULT_MAX_CHUNK_MB,
    progress: Progress | None = None,
    dtype: str | None = None,
    quantize: str | None = None,
    group_size: int = DEFAULT_GROUP_SIZE,
) -> Manifest:
    """Chunk ``source`` into ``out_dir`` and return its manifest.

    Args:
        source: a transformers model object, a local model folder (``config.json`` plus
            ``*.safetensors``), or a ``.gguf`` file.
        out_dir: the chunk-set folder to write (created; existing chunk files are replaced).
        name: the model's name in the manifest (default: from the source).
        tokenizer: with a model object, a tokenizer to save beside the chunks.
        max_chunk_mb: 2-D embedding/head tensors larger than this are split into row shards
            (0 turns sharding off).
        progress: advanced once per chunk written.
        dtype: store floating-point weights in this dtype (``bfloat16``, ``float16``,
            ``float32``); default: as the source holds them.
        quantize: ``int8`` or ``int4``: quantize the linear layers (see
            :mod:`sw_core.chunks.quantize`); a GGUF file's quantized tensors are kept packed
            whatever this says.
        group_size: inputs per scale of ``int4`` (32, 64, 128 or 256).

    Returns:
        The manifest, also written to ``out_dir/manifest.json``.

    Example:
        >>> manifest = chunk_model("path/to/all-MiniLM-L6-v2", "chunks/minilm")  # doctest: +SKIP
    """
    out = Path(out_dir)
    path = None if isinstance(source, torch.nn.Module) else Path(source)
    if path is not None and not (path.is_dir() or (path.is_file() and path.suffix == ".gguf")):
        what = "does not exist" if not path.exists() else "is neither a model folder nor a .gguf"
        raise ModelError(f"cannot chunk {source}: it {what}")  # before any folder is made
    if dtype not in (None, *STORED_DTYPES):
        raise ModelError(f"cannot store weights as {dtype!r}: use one of {sorted(STORED_DTYPES)}")
    target = STORED_DTYPES[dtype] if dtype is not None else None
    quant = Quantize(quantize, group_size) if quantize is not None else None
    if quant is not None:
        quant.check()
    out.mkdir(parents=True, exist_ok=True)
    max_chunk_bytes = int(max_chunk_mb * (1 << 20))
    if isinstance(source, torch.nn.Module):
        return _chunk_module(
            source,
            out,
            name or _default_name(source),
            tokenizer,
            max_chunk_bytes,
            progress,
            str(type(source).__name__),
            target=target,
            quant=quant,
        )
    path = Path(source)
    if path.is_file():
        from sw_core.chunks.gguf_chunker import chunk_gguf

        return chunk_gguf(path, out, name or path.stem, max_chunk_bytes, progress, target, quant)
    return _chunk_folder(path, out, name or path.name, max_chunk_bytes, progress, target, quant)


class Quantize:
    """``--quantize`` and ``--group-size``."""

    def __init__(self, mode: str, group_size: int) -> None:
        self.mode, self.group_size = mode, group_size

    def check(self) -> None:
        from torch import nn

        plan_quantization(nn.Module(), [], [], {}, self.mode, self.group_size)  # validates

    def formats(
        self, model: torch.nn.Module, keys: list[str], stacks: list[str], tied: dict[str, str]
    ) -> dict[str, PackedFormat]:
        return plan_quantization(model, keys, stacks, tied, self.mode, self.group_size)


def quantized_source(source: TensorSource, formats: dict[str, PackedFormat]) -> TensorSource:
    """``source`` with the tensors ``formats`` lists quantized as they are read."""
    return QuantizingSource(source, formats) if formats else source


def _default_name(model: torch.nn.Module) -> str:
    config = getattr(model, "config", None)
    return (
        str(getattr(config, "name_or_path", "") or getattr(config, "model_type", "model")).rsplit(
            "/", 1
        )[-1]
        or "model"
    )


def _chunk_module(
    model: torch.nn.Module,
    out: Path,
    name: str,
    tokenizer: Any,
    max_chunk_bytes: int,
    progress: Progress | None,
    source_label: str,
    gguf_file: str | None = None,
    target: torch.dtype | None = None,
    quant: Quantize | None = None,
) -> Manifest:
    config = getattr(model, "config", None)
    if config is None:
        raise ModelError(f"{type(model).__name__} is not a transformers model (no .config)")
    check_architecture(str(config.model_type), f"cannot chunk {source_label}")
    stacks = block_stacks(model)
    tied = tied_parameters(model)
    state = {k: v for k, v in model.state_dict().items() if k not in tied}
    shapes = {k: (list(v.shape), v.dtype) for k, v in state.items()}
    formats = quant.formats(model, list(state), stacks, tied) if quant else {}
    # row shards as wide as in the source's dtype, so that widened back they fit max_chunk_mb
    plans = plan_chunks(list(state), shapes, stacks, max_chunk_bytes, formats)
    source, shapes = stored(quantized_source(StateDictSource(state), formats), shapes, target)
    config.architectures = [type(model).__name__]
    config.save_pretrained(out)
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and getattr(model, "can_generate", lambda: False)():
        generation_config.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    packed: dict[str, PackedFormat] = {}
    chunks = write_chunks(plans, source, shapes, out, progress, packed)
    return finish_manifest(
        out,
        name,
        config,
        type(model).__name__,
        chunks,
        tied,
        source_label,
        gguf_file,
        main_dtype(shapes, packed),
        packed,
    )


def _chunk_folder(
    folder: Path,
    out: Path,
    name: str,
    max_chunk_bytes: int,
    progress: Progress | None,
    target: torch.dtype | None,
    quant: Quantize | None,
) -> Manifest:
    from safetensors import safe_open

    model_class, config = skeleton_class(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(
            f"{folder} has no *.safetensors weights (pickle checkpoints are not accepted)"
        )
    with ExitStack() as stack:
        handles = {f: stack.enter_context(safe_open(str(f), framework="pt")) for f in files}
        file_keys = {key: handle for handle in handles.values() for key in handle.keys()}
        found = match_checkpoint(folder, model_class, config, file_keys)
        skeleton, model_class, tied, handle_of, file_key_of = found
        stacks = block_stacks(skeleton)
        model_keys = [k for k in skeleton.state_dict() if k not in tied]
        model_shapes = dict(skeleton.state_dict())
        shapes: dict[str, tuple[list[int], torch.dtype]] = {}
        for key in model_keys:
            sl = handle_of[key].get_slice(file_key_of[key])
            shapes[key] = (list(sl.get_shape()), _st_dtype(sl.get_dtype()))
            expected = list(model_shapes[key].shape)
            if shapes[key][0] != expected:
                raise ModelError(
                    f"{folder}: weight {key} has shape {shapes[key][0]}, the config implies {expected}"
                )
        formats = quant.formats(skeleton, model_keys, stacks, tied) if quant else {}
        plans = plan_chunks(model_keys, shapes, stacks, max_chunk_bytes, formats)
        reader = quantized_source(SafetensorsSource(handle_of, file_key_of), formats)
        source, shapes = stored(reader, shapes, target)
        packed: dict[str, PackedFormat] = {}
        chunks = write_chunks(plans, source, shapes, out, progress, packed)
    for side in SIDE_FILES + _sentence_module_files(folder):
        if (folder / side).is_file():
            (out / side).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / side, out / side)
    config.architectures = [model_class.__name__]
    config.save_pretrained(out)
    return finish_manifest(
        out,
        name,
        config,
        model_class.__name__,
        chunks,
        tied,
        folder.name,
        None,
        main_dtype(shapes, packed),
        packed,
    )


def _sentence_module_files(folder: Path) -> tuple[str, ...]:
    """Config and safetensors weights of the sentence-transformers modules (``2_Dense/...``)
    that ``modules.json`` lists in sub-folders; pickled weights are never copied."""
    try:
        entries = json.loads((folder / "modules.json").read_text())
    except (OSError, ValueError):
        return ()
    names: list[str] = []
    for entry in entries if isinstance(entries, list) else []:
        sub = str(entry.get("path", "")).strip("/") if isinstance(entry, dict) else ""
        if sub and ".." not in sub.split("/"):
            names += [f"{sub}/config.json", f"{sub}/model.safetensors"]
    return tuple(names)


def main_dtype(
    shapes: dict[str, tuple[list[int], torch.dtype]], packed: dict[str, PackedFormat] | None = None
) -> str:
    """Name of the dtype that holds the most bytes (``float32``, ``bfloat16``...) among the
    tensors not packed (what the engine widens to the compute dtype)."""
    totals: dict[torch.dtype, int] = {}
    for key, (shape, dtype) in shapes.items():
        if packed and key in packed:
            continue
        totals[dtype] = totals.get(dtype, 0) + numel(shape) * dtype.itemsize
    if not totals:
        return "float32"
    return str(max(totals, key=totals.__getitem__)).removeprefix("torch.")


def _st_dtype(name: str) -> torch.dtype:
    from sw_core.chunks.safetensors_io import DTYPES

    return DTYPES[name]
