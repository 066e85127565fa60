"""Named real model shapes for synthetic chunk sets: the published configs, no weights.

Each shape is a transformers config class and the values of the model's published
``config.json`` (dimensions, heads, vocabulary, rotary base). ``layers`` cuts the block
count (a 70B shape with 20 of its 80 layers keeps every per-layer size and cost).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sw_core.exceptions import ConfigError


@dataclass(frozen=True)
class Shape:
    """A named model shape."""

    name: str
    config_class: str
    values: dict[str, Any]
    #: What it is, for ``sw synth --list`` and the manifest.
    about: str


_LLAMA3 = {"vocab_size": 128256, "rope_theta": 500000.0, "max_position_embeddings": 8192}
_LLAMA3_TOKENS = {"bos_token_id": 128000, "eos_token_id": 128001, "rms_norm_eps": 1e-5}

SHAPES: dict[str, Shape] = {
    shape.name: shape
    for shape in (
        Shape(
            "llama-3-8b",
            "LlamaConfig",
            {
                **_LLAMA3,
                **_LLAMA3_TOKENS,
                "hidden_size": 4096,
                "intermediate_size": 14336,
                "num_hidden_layers": 32,
                "num_attention_heads": 32,
                "num_key_value_heads": 8,
            },
            "Meta Llama 3 8B: 32 layers, hidden 4096, 8.0 B parameters",
        ),
        Shape(
            "llama-2-13b",
            "LlamaConfig",
            {
                "vocab_size": 32000,
                "hidden_size": 5120,
                "intermediate_size": 13824,
                "num_hidden_layers": 40,
                "num_attention_heads": 40,
                "num_key_value_heads": 40,
                "max_position_embeddings": 4096,
                "rms_norm_eps": 1e-5,
                "bos_token_id": 1,
                "eos_token_id": 2,
            },
            "Meta Llama 2 13B: 40 layers, hidden 5120, 13.0 B parameters",
        ),
        Shape(
            "llama-3-70b",
            "LlamaConfig",
            {
                **_LLAMA3,
                **_LLAMA3_TOKENS,
                "hidden_size": 8192,
                "intermediate_size": 28672,
                "num_hidden_layers": 80,
                "num_attention_heads": 64,
                "num_key_value_heads": 8,
            },
            "Meta Llama 3 70B: 80 layers, hidden 8192, 70.6 B parameters",
        ),
        Shape(
            "mixtral-8x7b",
            "MixtralConfig",
            {
                "vocab_size": 32000,
                "hidden_size": 4096,
                "intermediate_size": 14336,
                "num_hidden_layers": 32,
                "num_attention_heads": 32,
                "num_key_value_heads": 8,
                "num_local_experts": 8,
                "num_experts_per_tok": 2,
                "max_position_embeddings": 32768,
                "rope_theta": 1e6,
                "rms_norm_eps": 1e-5,
                "bos_token_id": 1,
                "eos_token_id": 2,
            },
            "Mixtral 8x7B: 32 layers of 8 experts (2 routed per token), 46.7 B parameters",
        ),
        Shape(
            "tiny-llama",
            "LlamaConfig",
            {
                "vocab_size": 4096,
                "hidden_size": 128,
                "intermediate_size": 256,
                "num_hidden_layers": 4,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "max_position_embeddings": 1024,
                "bos_token_id": 1,
                "eos_token_id": 2,
            },
            "a LLaMA of 4 small layers (1.3 M parameters), for tests",
        ),
        Shape(
            "tiny-mixtral",
            "MixtralConfig",
            {
                "vocab_size": 4096,
                "hidden_size": 128,
                "intermediate_size": 256,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "num_local_experts": 4,
                "num_experts_per_tok": 2,
                "max_position_embeddings": 1024,
                "bos_token_id": 1,
                "eos_token_id": 2,
            },
            "a Mixtral of 2 small layers of 4 experts, for tests",
        ),
    )
}


def shape_config(name: str, *, layers: int | None = None) -> Any:
    """The transformers config of shape ``name`` (``layers`` blocks when given).

    Raises:
        ConfigError: an unknown shape, or a layer count outside 1..the shape's.
    """
    import transformers

    shape = SHAPES.get(name)
    if shape is None:
        raise ConfigError(f"unknown shape {name!r}; choose one of {', '.join(SHAPES)}")
    values = dict(shape.values)
    if layers is not None:
        if not 1 <= layers <= values["num_hidden_layers"]:
            raise ConfigError(
                f"--layers must be 1..{values['num_hidden_layers']} for {name}, got {layers}"
            )
        values["num_hidden_layers"] = layers
    config = getattr(transformers, shape.config_class)(**values, tie_word_embeddings=False)
    config.architectures = [shape.config_class.replace("Config", "ForCausalLM")]
    return config
