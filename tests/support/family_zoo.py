"""Tiny random-init models of the further families (no downloads), from configs with fixed seeds.

Each config exercises what its family adds: grouped-query attention (4 query heads, 2 key/value
heads) wherever the family has it, tied and untied output heads, and a sliding window of 4
tokens -- shorter than every test prompt -- where the family has one.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers

#: Vocabulary of the decoder zoo: a 1 MiB fp32 embedding matrix (four 0.25 MiB row shards).
VOCAB = 4096
#: Sliding window, in tokens, shorter than the prompts of the tests.
WINDOW = 4

_COMMON: dict[str, Any] = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=128,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
)
_GQA: dict[str, Any] = dict(num_key_value_heads=2)


def decoder_config(kind: str) -> transformers.PretrainedConfig:
    """A tiny config of decoder family ``kind`` (see :data:`DECODERS`)."""
    c = dict(_COMMON)
    if kind == "qwen2":  # q/k/v biases, untied head, sliding window on the upper layers
        return transformers.Qwen2Config(
            **c,
            **_GQA,
            tie_word_embeddings=False,
            use_sliding_window=True,
            sliding_window=WINDOW,
            max_window_layers=1,
        )
    if kind == "qwen3":  # q/k norms, tied head
        return transformers.Qwen3Config(**c, **_GQA, head_dim=16, tie_word_embeddings=True)
    if kind == "mistral":
        return transformers.MistralConfig(
            **c, **_GQA, sliding_window=WINDOW, tie_word_embeddings=False
        )
    if kind == "gemma2":  # scaled embeddings, soft-capping, alternating sliding layers
        return transformers.Gemma2Config(
            **c,
            **_GQA,
            head_dim=16,
            sliding_window=WINDOW,
            final_logit_softcapping=30.0,
            attn_logit_softcapping=50.0,
        )
    if kind == "gemma3_text":
        return transformers.Gemma3TextConfig(
            **c,
            **_GQA,
            head_dim=16,
            sliding_window=WINDOW,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        )
    if kind == "phi3":  # fused qkv / gate_up projections, untied head
        return transformers.Phi3Config(
            **c, **_GQA, sliding_window=WINDOW, tie_word_embeddings=False
        )
    if kind == "opt":  # learned positions, final norm registered before the layers
        for key in ("num_hidden_layers", "num_attention_heads", "intermediate_size"):
            c.pop(key)
        return transformers.OPTConfig(
            **c, num_hidden_layers=3, num_attention_heads=4, ffn_dim=128, word_embed_proj_dim=64
        )
    raise ValueError(kind)


#: model_type -> the transformers class the tests build.
DECODERS = {
    "qwen2": transformers.Qwen2ForCausalLM,
    "qwen3": transformers.Qwen3ForCausalLM,
    "mistral": transformers.MistralForCausalLM,
    "gemma2": transformers.Gemma2ForCausalLM,
    "gemma3_text": transformers.Gemma3ForCausalLM,
    "phi3": transformers.Phi3ForCausalLM,
    "opt": transformers.OPTForCausalLM,
}


def decoder_model(kind: str, seed: int = 0) -> torch.nn.Module:
    """A random-init decoder of family ``kind`` in eval mode, identical for the same seed."""
    torch.manual_seed(seed)
    return DECODERS[kind](decoder_config(kind)).eval()


#: Experts per mixture-of-experts layer in the MoE zoo, and how many each token uses.
EXPERTS = 8
_MOE: dict[str, Any] = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=128,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
)


def moe_config(kind: str) -> transformers.PretrainedConfig:
    """A tiny mixture-of-experts config: 8 experts of 96 KiB per layer, 2 or 3 per token."""
    if kind == "mixtral":  # untied head, sliding window
        return transformers.MixtralConfig(
            **_MOE,
            num_local_experts=EXPERTS,
            num_experts_per_tok=2,
            sliding_window=WINDOW,
            tie_word_embeddings=False,
        )
    if kind == "qwen2_moe":  # plus a shared expert with its gate
        return transformers.Qwen2MoeConfig(
            **_MOE,
            moe_intermediate_size=128,
            shared_expert_intermediate_size=128,
            num_experts=EXPERTS,
            num_experts_per_tok=2,
            tie_word_embeddings=False,
        )
    if kind == "qwen3_moe":  # tied head, three experts per token
        return transformers.Qwen3MoeConfig(
            **_MOE,
            head_dim=16,
            moe_intermediate_size=128,
            num_experts=EXPERTS,
            num_experts_per_tok=3,
            tie_word_embeddings=True,
        )
    raise ValueError(kind)


MOE = {
    "mixtral": transformers.MixtralForCausalLM,
    "qwen2_moe": transformers.Qwen2MoeForCausalLM,
    "qwen3_moe": transformers.Qwen3MoeForCausalLM,
}


def moe_model(kind: str, seed: int = 0) -> torch.nn.Module:
    """A random-init mixture-of-experts decoder of family ``kind`` in eval mode."""
    torch.manual_seed(seed)
    return MOE[kind](moe_config(kind)).eval()
