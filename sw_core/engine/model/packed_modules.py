"""Modules that compute with packed weights, put in the skeleton in place of transformers' own.

When the engine keeps packed weights packed (compute dtype bfloat16), every module that
holds a packed weight and that one of these reproduces is replaced at load time:

- ``nn.Linear`` -> :class:`PackedLinear` (``x @ W.T + b`` through the packed kernel);
- transformers' ``Conv1D`` (GPT-2: ``x @ W + b``, ``W`` held as ``[in, out]``) ->
  :class:`PackedLinear` over the stored ``W.T``;
- ``nn.Embedding`` (plain, or Gemma's scaled one) -> :class:`PackedEmbedding` (rows widened
  exactly, then cast).

A packed tensor with another holder (a module these do not reproduce) is widened on
arrival instead (:func:`replace_packed_modules` returns which stay packed). The weight is
bound like any chunk tensor: ``module.packed`` is set when its chunk is acquired and reset
when it is released; running the module unbound raises.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional

from sw_core.engine.model.packed import PackedWeight
from sw_core.exceptions import ModelError
from sw_core.quant.formats import PackedFormat


class PackedModule(nn.Module):
    """Base of the modules that hold a :class:`PackedWeight` as ``packed``."""

    def __init__(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        super().__init__()
        self.tensor_name = name
        self.weight_shape = shape
        self.compute_dtype = dtype
        self.packed: PackedWeight | None = None

    @property
    def weight(self) -> torch.Tensor:
        """A ``meta`` stand-in with the weight's shape (the weight is packed)."""
        return torch.empty(self.weight_shape, dtype=self.compute_dtype, device="meta")

    def hold(self, packed: PackedWeight | None) -> None:
        """Bind (or unbind, with None) the weight. ``packed`` is a plain attribute, so this
        skips ``nn.Module.__setattr__``'s look through its parameters, buffers and modules:
        a streamed model binds and unbinds every packed weight once a token."""
        self.__dict__["packed"] = packed

    def _bound(self) -> PackedWeight:
        if self.packed is None:
            raise ModelError(f"{self.tensor_name} would run before its chunk was bound")
        return self.packed


class PackedLinear(PackedModule):
    """``nn.Linear`` / ``Conv1D`` over a packed weight."""

    def __init__(
        self, name: str, source: nn.Module, dtype: torch.dtype, shape: tuple[int, ...]
    ) -> None:
        super().__init__(name, shape, dtype)
        self.bias = source.bias if isinstance(source.bias, nn.Parameter) else None
        n, k = (shape[1], shape[0]) if _is_conv1d(source) else (shape[0], shape[1])
        self.out_features, self.in_features = n, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._bound().linear(x)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out

    def extra_repr(self) -> str:
        return f"{self.tensor_name}, in={self.in_features}, out={self.out_features}, packed"


class PackedEmbedding(PackedModule):
    """``nn.Embedding`` over a packed matrix (Gemma's ``embed_scale`` applied when present)."""

    def __init__(
        self, name: str, source: nn.Embedding, dtype: torch.dtype, shape: tuple[int, ...]
    ) -> None:
        super().__init__(name, shape, dtype)
        self.num_embeddings, self.embedding_dim = shape
        self.padding_idx = source.padding_idx
        scale = source._buffers.get("embed_scale")
        if isinstance(scale, torch.Tensor):
            self.register_buffer("embed_scale", scale, persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        if flat.numel():
            low, high = torch.aminmax(flat)
            if int(low) < 0 or int(high) >= self.num_embeddings:
                raise IndexError(f"token id out of range [0, {self.num_embeddings})")
        out = self._bound().lookup(ids)
        scale = self._buffers.get("embed_scale")
        if scale is not None:
            out = out * scale.to(out.dtype)
        return out


def linear(x: torch.Tensor, weight: torch.Tensor | PackedWeight) -> torch.Tensor:
    """``x @ W.T`` for a plain or a packed weight."""
    if isinstance(weight, PackedWeight):
        return weight.linear(x)
    return functional.linear(x, weight)


def embedding(ids: torch.Tensor, weight: torch.Tensor | PackedWeight) -> torch.Tensor:
    """Rows ``ids`` of a plain or a packed matrix."""
    if isinstance(weight, PackedWeight):
        return weight.lookup(ids)
    return functional.embedding(ids, weight)


def _is_conv1d(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


def is_plain_linear(module: nn.Module) -> bool:
    return (isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward) or (
        _is_conv1d(module)
    )


def is_plain_embedding(module: nn.Module) -> bool:
    if not isinstance(module, nn.Embedding):
        return False
    if type(module).forward is nn.Embedding.forward:
        return True
    return isinstance(module._buffers.get("embed_scale"), torch.Tensor)


def replace_packed_modules(
    model: nn.Module,
    owners: dict[str, list[str]],
    formats: dict[str, PackedFormat],
    dtype: torch.dtype,
) -> set[str]:
    """Replace the holders of packed tensors with packed modules where every holder of a
    tensor can be replaced; returns the tensors that stay packed (the others are widened).

    ``owners``: canonical tensor name -> the state-dict names that hold it (tied aliases).
    """
    kept: set[str] = set()
    for name, fmt in formats.items():
        places = []
        for owner in owners.get(name, []):
            path, _, attr = owner.rpartition(".")
            places.append((path, attr, model.get_submodule(path) if path else model))
        if fmt.lead:  # fused experts: StreamedExperts computes them when it knows the form
            if places and all(packed_experts(m) and not fmt.transposed for _, _, m in places):
                kept.add(name)
            continue
        if not places or not all(_replaceable(a, m, fmt) for _, a, m in places):
            continue
        for path, _, module in places:
            shape = tuple(fmt.shape)
            new: nn.Module
            if isinstance(module, nn.Embedding):
                new = PackedEmbedding(name, module, dtype, shape)
            else:
                new = PackedLinear(name, module, dtype, shape)
            model.set_submodule(path, new)
        kept.add(name)
    return kept


def _replaceable(attr: str, module: nn.Module, fmt: PackedFormat) -> bool:
    if attr != "weight":
        return False
    if is_plain_embedding(module):
        return not fmt.transposed
    if is_plain_linear(module):
        return fmt.transposed == _is_conv1d(module)
    return False


def packed_experts(module: Any) -> bool:
    """Whether a fused experts module has the form :class:`StreamedExperts` computes packed:
    ``gate_up_proj`` ``[E, 2I, H]`` and ``down_proj`` ``[E, H, I]`` without biases, and an
    ``act_fn`` (Mixtral, Qwen2-MoE and Qwen3-MoE in transformers 5)."""
    params = set(getattr(module, "_parameters", {}))
    return params == {"gate_up_proj", "down_proj"} and callable(getattr(module, "act_fn", None))
