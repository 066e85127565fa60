"""GGUF files written offline from random-init transformers models (float32, no quantization).

Tensor names come from transformers' own GGUF name map (the one its loader reverses), the
tokenizer fields are copied from the bundled SmolLM2 GGUF (a GPT-2-style BPE tokenizer of
49,152 tokens), so ``from_pretrained(folder, gguf_file=...)`` reads the file back as it reads
a downloaded one. Only families whose GGUF tensors need no reordering are written here
(qwen2, qwen3, phi3; gemma2/gemma3 need only their norms stored as ``1 + w``); LLaMA and
Mistral files permute q/k rows and MoE files split experts, which this writer does not do.
"""

from __future__ import annotations

from pathlib import Path

import torch

#: Families :func:`write_gguf` writes (GGUF architecture names).
GGUF_FAMILIES = ("qwen2", "qwen3", "phi3", "gemma2", "gemma3_text")


def _copy_tokenizer(writer: object, source: Path) -> None:
    from gguf import GGUFReader, GGUFValueType
    from transformers.modeling_gguf_pytorch_utils import read_field

    reader = GGUFReader(str(source))
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        values = read_field(reader, name)
        kind = field.types[0]
        if kind == GGUFValueType.ARRAY:
            writer.add_array(name, values)  # type: ignore[attr-defined]
        else:
            writer.add_key_value(name, values[0], kind)  # type: ignore[attr-defined]


def write_gguf(model: torch.nn.Module, path: Path) -> Path:
    """Write ``model`` (a causal LM of :data:`GGUF_FAMILIES`) as a float32 GGUF file."""
    from gguf import GGUFWriter
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor, get_gguf_hf_weights_map

    from sw_core.local.bundled import smollm2_gguf_path

    config = model.config
    arch = {"gemma3_text": "gemma3"}.get(config.model_type, config.model_type)
    writer = GGUFWriter(str(path), arch)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    if getattr(config, "head_dim", None):
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
    rope = config.rope_parameters
    rope = rope.get("full_attention", rope) if "rope_theta" not in rope else rope  # per layer type
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    if getattr(config, "sliding_window", None):
        writer.add_sliding_window(config.sliding_window)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    _copy_tokenizer(writer, smollm2_gguf_path())
    names = get_gguf_hf_weights_map(model, TensorProcessor())
    state = model.state_dict()
    for gguf_name, hf_name in names.items():
        if hf_name in state and not (config.tie_word_embeddings and hf_name == "lm_head.weight"):
            tensor = state[hf_name].detach().float()
            if arch.startswith("gemma") and hf_name.endswith("norm.weight"):
                tensor = tensor + 1  # llama.cpp stores Gemma's norms as 1 + w; the loader undoes it
            writer.add_tensor(gguf_name, tensor.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
