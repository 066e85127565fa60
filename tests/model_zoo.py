"""Tiny random-init transformers models built from configs with fixed seeds (no downloads)."""

from __future__ import annotations

import torch
import transformers


def tiny_config(kind: str) -> transformers.PretrainedConfig:
    """A small config of one supported family: bert, gpt2, llama or t5."""
    if kind == "bert":
        return transformers.BertConfig(
            vocab_size=512, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
            intermediate_size=128, max_position_embeddings=128,
        )  # fmt: skip
    if kind == "gpt2":
        return transformers.GPT2Config(
            vocab_size=512, n_embd=64, n_layer=3, n_head=4, n_positions=128,
            bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )  # fmt: skip
    if kind == "llama":
        return transformers.LlamaConfig(
            vocab_size=512, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128,
            bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )  # fmt: skip
    if kind == "t5":
        return transformers.T5Config(
            vocab_size=512, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
            num_heads=4, decoder_start_token_id=0, eos_token_id=1, pad_token_id=0,
        )  # fmt: skip
    raise ValueError(kind)


MODEL_CLASSES = {
    "bert": transformers.BertModel,
    "gpt2": transformers.GPT2LMHeadModel,
    "llama": transformers.LlamaForCausalLM,
    "t5": transformers.T5ForConditionalGeneration,
}


def tiny_model(kind: str, seed: int = 0) -> torch.nn.Module:
    """A random-init model of ``kind`` in eval mode, identical for the same seed."""
    torch.manual_seed(seed)
    return MODEL_CLASSES[kind](tiny_config(kind)).eval()


def sample_inputs(
    kind: str, batch: int = 2, length: int = 7, seed: int = 1
) -> dict[str, torch.Tensor]:
    """Token ids (and for T5 decoder ids) with a padded second row."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 500, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    if batch > 1:
        mask[1, -2:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if kind == "t5":
        inputs["decoder_input_ids"] = torch.randint(2, 500, (batch, 4), generator=generator)
    return inputs
