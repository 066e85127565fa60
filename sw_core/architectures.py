"""The architectures the engine runs, by transformers ``model_type``, and the early refusal.

This module imports nothing heavy (no torch), so ``sw chunk`` and ``sw register`` can refuse
an unsupported model before loading anything. What the engine needs beyond the family --
the block lists, embeddings, rotary modules, final norm, head and tied weights -- is derived
from the transformers model's own structure (:mod:`sw_core.engine.model.structure`), so a further
family with the standard layout is one line here plus its tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sw_core.exceptions import ModelError

Family = Literal["encoder", "decoder", "seq2seq"]


@dataclass(frozen=True)
class Architecture:
    """One supported ``model_type``."""

    model_type: str
    family: Family
    #: Position ids count from ``pad_token_id + 1`` (RoBERTa, XLM-RoBERTa, MPNet): the
    #: model reads ``max_position_embeddings - pad_token_id - 1`` tokens at most.
    positions_after_pad: bool = False


_ALL = (
    Architecture("bert", "encoder"),
    Architecture("distilbert", "encoder"),
    Architecture("mpnet", "encoder", positions_after_pad=True),
    Architecture("roberta", "encoder", positions_after_pad=True),
    Architecture("xlm-roberta", "encoder", positions_after_pad=True),
    Architecture("gemma2", "decoder"),
    Architecture("gemma3_text", "decoder"),
    Architecture("gpt2", "decoder"),
    Architecture("llama", "decoder"),
    Architecture("mistral", "decoder"),
    Architecture("mixtral", "decoder"),
    Architecture("opt", "decoder"),
    Architecture("phi3", "decoder"),
    Architecture("qwen2", "decoder"),
    Architecture("qwen2_moe", "decoder"),
    Architecture("qwen3", "decoder"),
    Architecture("qwen3_moe", "decoder"),
    Architecture("t5", "seq2seq"),
)

#: model_type -> its :class:`Architecture`.
ARCHITECTURES: dict[str, Architecture] = {a.model_type: a for a in _ALL}


def supported_list() -> str:
    """The supported model types, comma-separated (for messages)."""
    return ", ".join(sorted(ARCHITECTURES))


def check_architecture(model_type: str, what: str) -> Architecture:
    """The :class:`Architecture` of ``model_type``, or a :class:`ModelError` naming the
    supported ones.

    Args:
        model_type: transformers' ``config.model_type`` (``qwen2``, ``roberta``...).
        what: the model or source, for the message.

    Example:
        >>> check_architecture("llama", "SmolLM2").family
        'decoder'
    """
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise ModelError(
            f"{what}: architecture {model_type!r} is not supported (supported: {supported_list()})"
        )
    return arch
