"""``sw chunk --quantize int8|int4``: which weights are quantized, and the source that does it.

Round-to-nearest, weight only, one tensor at a time as the chunker reads it
(:mod:`sw_core.quant.rtn`). The choices:

- **linear layers inside the blocks** (``nn.Linear``, GPT-2's ``Conv1D``, the fused
  mixture-of-experts weights): ``int8`` one scale per output channel, or ``int4`` asymmetric
  per group of ``--group-size`` inputs (default 32). A matrix the int4 kernel cannot take
  (output features not a multiple of 16, or inputs not a multiple of the group) falls back
  to int8; one the int8 kernel cannot take either (inputs not a multiple of 16) stays float.
- **routers** of mixture-of-experts blocks stay float: a flipped expert choice costs more
  than the few bytes saved.
- **the output head**, when it is its own matrix: int8 per channel in both modes (int4
  logits cost noticeably more quality; llama.cpp's ``Q4_K_M`` keeps it at 6 bits for the
  same reason).
- **embeddings** (a tied output head is the embedding), **norms and biases**: as stored
  (``--dtype`` narrows them).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from sw_core.chunks.plan import is_fused_expert
from sw_core.chunks.tensor_sources import TensorSource
from sw_core.exceptions import ModelError
from sw_core.quant import int4_layout
from sw_core.quant.formats import GROUP_SIZES, PackedFormat
from sw_core.quant.rtn import quantize_int4, quantize_int8
from sw_core.quant.weights import QuantizedWeight

MODES = ("int8", "int4")
DEFAULT_GROUP_SIZE = 32
_ROUTERS = ("gate", "router", "shared_expert_gate")


def plan_quantization(
    model: nn.Module,
    keys: list[str],
    stacks: list[str],
    tied: dict[str, str],
    mode: str,
    group_size: int = DEFAULT_GROUP_SIZE,
) -> dict[str, PackedFormat]:
    """The format of every weight of ``model`` (a skeleton is enough) to quantize."""
    if mode not in MODES:
        raise ModelError(f"cannot quantize to {mode!r}: use one of {', '.join(MODES)}")
    if group_size not in GROUP_SIZES:
        raise ModelError(f"--group-size must be one of {GROUP_SIZES}, got {group_size}")
    from transformers.pytorch_utils import Conv1D

    canonical = set(keys)
    shared = set(tied.values())
    formats: dict[str, PackedFormat] = {}
    modules = dict(model.named_modules())
    for path, module in modules.items():
        parent, _, leaf = path.rpartition(".")
        in_block = any(path.startswith(s + ".") for s in stacks)
        if in_block and leaf in _ROUTERS and "experts" in dict(modules[parent].named_children()):
            continue
        weights: list[tuple[str, bool]] = []
        if type(module) is nn.Linear or type(module).forward is nn.Linear.forward:
            weights = [(f"{path}.weight", False)]
        elif isinstance(module, Conv1D):
            weights = [(f"{path}.weight", True)]
        elif in_block and set(module._parameters) == {"gate_up_proj", "down_proj"}:
            weights = [(f"{path}.{n}", False) for n in ("gate_up_proj", "down_proj")]
        for key, transposed in weights:
            if key not in canonical or key in shared:
                continue
            param = module.get_parameter(key.rpartition(".")[2])
            if len(param.shape) == 3 and not is_fused_expert(key, list(param.shape)):
                continue
            kind = mode if in_block else "int8"
            fmt = _format(kind, list(param.shape), group_size, transposed)
            if fmt is not None:
                formats[key] = fmt
    return formats


def _format(kind: str, shape: list[int], group_size: int, transposed: bool) -> PackedFormat | None:
    """The format RTN gives a weight of ``shape``, falling back from int4 to int8 to float."""
    n, k = (shape[-1], shape[-2]) if transposed else (shape[-2], shape[-1])
    if kind == "int4" and n % 16 == 0 and k % group_size == 0:
        return PackedFormat(
            "int4",
            shape,
            group_size=group_size,
            block_n=int4_layout.native_block_n() or int4_layout.WIDE,
            scale_dtype="float16",
            transposed=transposed,
            source="rtn",
        )
    if k % 16 == 0:
        return PackedFormat(
            "int8", shape, scale_dtype="float32", transposed=transposed, source="rtn"
        )
    return None


class QuantizingSource(TensorSource):
    """Floats of ``inner`` quantized as ``formats`` says, one tensor (or row shard) at a time."""

    def __init__(self, inner: TensorSource, formats: dict[str, PackedFormat]) -> None:
        self._inner = inner
        self._formats = formats

    def get(self, key: str) -> Any:
        tensor = self._inner.get(key)
        fmt = self._formats.get(key)
        return tensor if fmt is None else _quantize(tensor, fmt)

    def get_rows(self, key: str, start: int, end: int) -> Any:
        tensor = self._inner.get_rows(key, start, end)
        fmt = self._formats.get(key)
        if fmt is None:
            return tensor
        part = _quantize(tensor, fmt)  # quantization is row-local: a shard on its own
        part.fmt = dataclasses.replace(part.fmt, shape=list(fmt.shape))
        return part


def _quantize(tensor: torch.Tensor, fmt: PackedFormat) -> QuantizedWeight:
    if fmt.kind == "int8":
        return quantize_int8(tensor, transposed=fmt.transposed)
    assert fmt.group_size is not None
    return quantize_int4(tensor, fmt.group_size, transposed=fmt.transposed)
