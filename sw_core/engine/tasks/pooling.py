"""Sentence embeddings as sentence-transformers computes them, from the chunk set's files.

A sentence-transformers folder lists its modules in ``modules.json``: the transformer, then
``Pooling`` (``1_Pooling/config.json``: cls, mean, max, mean_sqrt_len_tokens, weightedmean,
lasttoken, or several concatenated), optional ``Dense`` layers (``N_Dense/config.json`` plus
``model.safetensors``) and an optional ``Normalize``. ``max_seq_length`` comes from
``sentence_bert_config.json`` (sentence-transformers 2-5) or the tokenizer's
``model_max_length`` (sentence-transformers 6 writes it there). Both the legacy
(``pooling_mode_mean_tokens: true``) and the current (``pooling_mode: "mean"``) pooling
configs are read. A folder without ``modules.json`` gets mean pooling and L2 normalization.
Any other module type is refused at load time with a :class:`ModelError`, never skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from sw_core.exceptions import ModelError

#: Pooling modes, in sentence-transformers' order (the order legacy flags concatenate in).
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_LEGACY_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
#: Dense activations by class name (looked up in ``torch.nn``; nothing else is imported).
_ACTIVATIONS = frozenset({"Identity", "Tanh", "ReLU", "GELU", "Sigmoid", "SiLU", "Softplus"})
_KNOWN = ("Transformer", "Pooling", "Dense", "Normalize")


@dataclass(frozen=True)
class DenseLayer:
    """One sentence-transformers ``Dense`` module: ``activation(x @ W.T + b)``."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    activation: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = functional.linear(x, self.weight.to(x.device), _to(self.bias, x.device))
        return getattr(nn, self.activation)()(out)


@dataclass(frozen=True)
class SentencePipeline:
    """What ``embed`` does after the transformer: pooling, Dense layers, normalization."""

    modes: tuple[str, ...] = ("mean",)
    dense: tuple[DenseLayer, ...] = field(default_factory=tuple)
    normalize: bool = True
    #: Tokens sentence-transformers keeps (truncating beyond); None without the files.
    max_seq_length: int | None = None
    #: ``sentence-transformers`` when read from the folder's modules, else ``default``.
    origin: str = "default"

    def describe(self, normalize: bool | None = None) -> str:
        """``cls+dense+normalize``-style summary of what runs (reported with results);
        ``normalize`` overrides the modules' choice."""
        parts = ["+".join(self.modes)] + ["dense"] * len(self.dense)
        norm = self.normalize if normalize is None else normalize
        return "+".join(parts + (["normalize"] if norm else []))

    def apply(
        self, hidden: torch.Tensor, mask: torch.Tensor, *, normalize: bool | None = None
    ) -> torch.Tensor:
        """(B, T, D) hidden states and (B, T) mask -> (B, E) sentence embeddings."""
        out = torch.cat([pool(hidden, mask, mode) for mode in self.modes], dim=-1)
        for layer in self.dense:
            out = layer(out)
        if self.normalize if normalize is None else normalize:
            out = functional.normalize(out, p=2, dim=1)
        return out


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """One pooling mode over (B, T, D) with a (B, T) attention mask -> (B, D)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        first = mask.to(torch.int).argmax(dim=1)  # first real token (left padding too)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]
    if mode == "max":
        return hidden.masked_fill(weights == 0, float("-inf")).max(dim=1).values
    if mode in ("mean", "mean_sqrt_len_tokens"):
        count = torch.clamp(weights.sum(dim=1), min=1e-9)
        summed = (hidden * weights).sum(dim=1)
        return summed / (count if mode == "mean" else torch.sqrt(count))
    if mode == "weightedmean":
        # (1, T, 1) positions 1..T, counted from the first real token of each row
        positions = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=hidden.dtype)
        first = mask.to(torch.int32).argmax(dim=1).to(hidden.dtype)
        weighted = weights * (positions.view(1, -1, 1) - first.view(-1, 1, 1))
        return (hidden * weighted).sum(dim=1) / torch.clamp(weighted.sum(dim=1), min=1e-9)
    if mode == "lasttoken":
        values, flipped = mask.flip(1).max(1)
        last = hidden.shape[1] - 1 - torch.where(values == 0, hidden.shape[1] - 1, flipped)
        return (hidden * weights)[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ModelError(f"unknown pooling mode {mode!r} (known: {', '.join(POOLING_MODES)})")


def read_pipeline(files: dict[str, bytes], tokenizer: Any) -> SentencePipeline:
    """The :class:`SentencePipeline` of a chunk set's files (its defaults without
    ``modules.json``)."""
    if "modules.json" not in files:
        return SentencePipeline()
    modes: tuple[str, ...] = ("mean",)
    dense: list[DenseLayer] = []
    normalize = False
    for entry in _json(files, "modules.json"):
        kind = str(entry.get("type", "")).rsplit(".", 1)[-1]
        folder = str(entry.get("path", "")).strip("/")
        if kind not in _KNOWN:
            raise ModelError(
                f"modules.json lists a sentence-transformers {kind!r} module; the engine runs "
                f"only {', '.join(_KNOWN)}"
            )
        if kind == "Pooling":
            modes = _pooling_modes(_json(files, f"{folder}/config.json"))
        elif kind == "Dense":
            dense.append(_dense(files, folder))
        elif kind == "Normalize":
            normalize = True
    return SentencePipeline(
        modes, tuple(dense), normalize, _max_seq_length(files, tokenizer), "sentence-transformers"
    )


def _pooling_modes(config: dict[str, Any]) -> tuple[str, ...]:
    value = config.get("pooling_mode")
    if value is None:
        modes = tuple(mode for flag, mode in _LEGACY_FLAGS.items() if config.get(flag))
    else:
        modes = (value,) if isinstance(value, str) else tuple(value)
    unknown = [m for m in modes if m not in POOLING_MODES]
    if not modes or unknown:
        raise ModelError(
            f"1_Pooling/config.json names no usable pooling mode ({unknown or 'none'}); "
            f"known: {', '.join(POOLING_MODES)}"
        )
    if config.get("include_prompt") is False:
        raise ModelError("pooling with include_prompt=false (prompt tokens left out) is not run")
    return modes


def _dense(files: dict[str, bytes], folder: str) -> DenseLayer:
    from safetensors.torch import load

    config = _json(files, f"{folder}/config.json")
    activation = str(config.get("activation_function") or "Identity").rsplit(".", 1)[-1]
    if activation not in _ACTIVATIONS or config.get("residual"):
        raise ModelError(
            f"{folder}: Dense with activation {activation!r} / residual is not supported "
            f"(activations: {', '.join(sorted(_ACTIVATIONS))})"
        )
    raw = files.get(f"{folder}/model.safetensors")
    if raw is None:
        raise ModelError(f"{folder}: Dense weights must be model.safetensors (no pickle files)")
    tensors = load(raw)
    weight = tensors.get("linear.weight")
    if weight is None or list(weight.shape) != [config["out_features"], config["in_features"]]:
        raise ModelError(f"{folder}/model.safetensors lacks linear.weight of the config's shape")
    return DenseLayer(weight.float(), _float(tensors.get("linear.bias")), activation)


def _max_seq_length(files: dict[str, bytes], tokenizer: Any) -> int | None:
    if "sentence_bert_config.json" in files:
        value = _json(files, "sentence_bert_config.json").get("max_seq_length")
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value < 1_000_000 else None


def _json(files: dict[str, bytes], name: str) -> Any:
    raw = files.get(name)
    if raw is None:
        raise ModelError(f"the chunk set's modules.json needs {name}, which it does not ship")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ModelError(f"{name} is not valid JSON: {exc}") from None


def _to(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device)


def _float(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.float()
