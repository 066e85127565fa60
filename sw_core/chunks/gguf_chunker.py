"""``sw chunk model.gguf``: a GGUF file into chunks, one tensor at a time, kept packed.

The config and the tokenizer come from the file through transformers (``gguf_file=``), the
tensors through :class:`~sw_core.chunks.gguf_source.GGUFSource` (memory-mapped, never the
whole model in memory). Files of architectures whose transformers tensor processor merges
tensors (mixture-of-experts GGUF files) are loaded whole through transformers instead,
dequantized, as before.

The resident memory before the tensor phase and at its peak is kept in
:data:`LAST_PEAK_RSS_MB` (``sw chunk`` prints it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import torch

from sw_core.architectures import check_architecture
from sw_core.chunks.gguf_source import GGUFSource, open_reader, processor_for, streamable
from sw_core.chunks.manifest import Manifest
from sw_core.chunks.plan import block_stacks, plan_chunks, tied_parameters
from sw_core.chunks.tensor_sources import stored
from sw_core.chunks.writer import finish_manifest, write_chunks
from sw_core.exceptions import ModelError
from sw_core.progress import Progress
from sw_core.quant.formats import PackedFormat

log = logging.getLogger(__name__)

#: Peak RSS of the last tensor phase: (before it started, at its peak), in MiB.
LAST_PEAK_RSS_MB: dict[str, float] = {}


def chunk_gguf(
    path: Path,
    out: Path,
    name: str,
    max_chunk_bytes: int,
    progress: Progress | None,
    target: torch.dtype | None,
    quant: Any,
) -> Manifest:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from sw_core.chunks.chunker import main_dtype, quantized_source

    reader = open_reader(path)
    if not streamable(reader):
        return _chunk_whole(path, out, name, max_chunk_bytes, progress, target, quant)
    try:
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load GGUF file {path}: {exc}") from exc
    check_architecture(str(config.model_type), f"cannot chunk {path}")
    model_class: Any = cast(Any, AutoModelForCausalLM)._model_mapping[type(config)]
    with torch.device("meta"):
        skeleton = model_class(config)
    stacks = block_stacks(skeleton)
    tied = tied_parameters(skeleton)
    keys = [k for k in skeleton.state_dict() if k not in tied]
    expected = {k: list(v.shape) for k, v in skeleton.state_dict().items()}
    source = GGUFSource(reader, processor_for(reader, config), _name_map(skeleton, reader, config))
    missing = [k for k in keys if k not in source.entries]
    if missing:
        raise ModelError(f"{path}: the file lacks {len(missing)} weights, e.g. {missing[:3]}")
    shapes = {k: v for k, v in source.shapes().items() if k in expected}
    for key in keys:
        if shapes[key][0] != expected[key]:
            raise ModelError(
                f"{path}: tensor {key} has shape {shapes[key][0]}, the config implies {expected[key]}"
            )
    formats = source.formats()
    extra: dict[str, PackedFormat] = {}
    if quant is not None:  # float tensors of the file quantized as --quantize says
        wanted = quant.formats(skeleton, keys, stacks, tied)
        extra = {k: f for k, f in wanted.items() if k not in formats}
    plans = plan_chunks(keys, shapes, stacks, max_chunk_bytes, {**formats, **extra})
    reader_source, shapes = stored(quantized_source(source, extra), shapes, target)
    before = _rss_mb()
    _reset_peak()
    packed: dict[str, PackedFormat] = {}
    chunks = write_chunks(plans, reader_source, shapes, out, progress, packed)
    LAST_PEAK_RSS_MB.update(before=before, peak=_peak_mb())
    log.info("tensor phase: RSS %.0f MiB before, %.0f at its peak", before, _peak_mb())
    tokenizer.save_pretrained(out)
    config.architectures = [model_class.__name__]
    config.save_pretrained(out)
    if skeleton.can_generate():
        GenerationConfig.from_model_config(config).save_pretrained(out)
    return finish_manifest(
        out,
        name,
        config,
        model_class.__name__,
        chunks,
        tied,
        path.name,
        path.name,
        main_dtype(shapes, packed),
        packed,
    )


def _name_map(skeleton: torch.nn.Module, reader: Any, config: Any) -> dict[str, str]:
    """GGUF tensor name -> model key, by transformers' own mapping."""
    from transformers.modeling_gguf_pytorch_utils import get_gguf_hf_weights_map

    return dict(get_gguf_hf_weights_map(skeleton, processor_for(reader, config)))


def _chunk_whole(
    path: Path,
    out: Path,
    name: str,
    max_chunk_bytes: int,
    progress: Progress | None,
    target: torch.dtype | None,
    quant: Any,
) -> Manifest:
    """Architectures read through transformers, whole and dequantized (see the module doc)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sw_core.chunks.chunker import _chunk_module

    log.warning("%s: this architecture's GGUF tensors are loaded whole and dequantized", path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load GGUF file {path}: {exc}") from exc
    return _chunk_module(
        model,
        out,
        name,
        tokenizer,
        max_chunk_bytes,
        progress,
        path.name,
        gguf_file=path.name,
        target=target,
        quant=quant,
    )


def _status_kb(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def _rss_mb() -> float:
    return _status_kb("VmRSS") / 1024


def _peak_mb() -> float:
    return _status_kb("VmHWM") / 1024


def _reset_peak() -> None:
    """Reset the kernel's peak-RSS mark (Linux): the peak then covers the tensor phase only."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
