"""Models for the tests: tiny random-init transformers models built from configs with fixed
seeds (no downloads), and the two bundled pretrained models chunked once per session.

The session fixtures ``smollm2_chunked`` and ``minilm_chunked`` (``tests/conftest.py``) call
:func:`chunked_smollm2` and :func:`chunked_minilm`. Heavy imports of those two happen inside
them, so collecting tests that do not use them stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

from sw_core.chunks.chunker import chunk_model
from sw_core.chunks.manifest import Manifest

KINDS = ("bert", "gpt2", "llama", "t5")
#: Big enough that a 2 MiB budget cannot hold a small model (about 2.5 MiB), small enough
#: to be fast.
VOCAB = 8192
#: Row shards of 0.5 MiB: the 2 MiB embedding matrices become four shards.
SHARD_MB = 0.5

_CONFIGS: dict[str, tuple[type[transformers.PretrainedConfig], dict[str, Any]]] = {
    "bert": (
        transformers.BertConfig,
        dict(
            vocab_size=512,
            hidden_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=128,
        ),
    ),
    "gpt2": (
        transformers.GPT2Config,
        dict(
            vocab_size=512,
            n_embd=64,
            n_layer=3,
            n_head=4,
            n_positions=128,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
    ),
    "llama": (
        transformers.LlamaConfig,
        dict(
            vocab_size=512,
            hidden_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            max_position_embeddings=128,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
    ),
    "t5": (
        transformers.T5Config,
        dict(
            vocab_size=512,
            d_model=64,
            d_kv=16,
            d_ff=128,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            decoder_start_token_id=0,
            eos_token_id=1,
            pad_token_id=0,
        ),
    ),
}

MODEL_CLASSES = {
    "bert": transformers.BertModel,
    "gpt2": transformers.GPT2LMHeadModel,
    "llama": transformers.LlamaForCausalLM,
    "t5": transformers.T5ForConditionalGeneration,
}


def tiny_config(kind: str, **overrides: Any) -> transformers.PretrainedConfig:
    """A small config of one supported family: bert, gpt2, llama or t5."""
    if kind not in _CONFIGS:
        raise ValueError(kind)
    config_class, values = _CONFIGS[kind]
    return config_class(**{**values, **overrides})


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


def small_model(kind: str, seed: int = 0) -> torch.nn.Module:
    """A random-init model of ``kind`` with an 8192-token vocabulary and tied embeddings
    where the family allows (LLaMA like SmolLM2, GPT-2 and T5 by default)."""
    config = tiny_config(kind)
    config.vocab_size = VOCAB
    if kind == "llama":
        config.tie_word_embeddings = True
    torch.manual_seed(seed)
    return MODEL_CLASSES[kind](config).eval()


def chunk_small(kind: str, folder: Path, **kwargs: Any) -> tuple[torch.nn.Module, Manifest]:
    """:func:`small_model` chunked into ``folder`` with :data:`SHARD_MB` row shards."""
    model = small_model(kind)
    manifest = chunk_model(model, folder, name=f"small-{kind}", max_chunk_mb=SHARD_MB, **kwargs)
    return model, manifest


def tiny_engine_model(folder: Path, name: str = "tinyllama", *, hidden: int = 64) -> Manifest:
    """A small random LLaMA chunked for the real engine (hidden 64: about 0.7 MiB; hidden
    256: about 9 MiB). Jobs run the ``forward`` task on token ids: no tokenizer needed."""
    config = tiny_config("llama", hidden_size=hidden, intermediate_size=2 * hidden)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    return chunk_model(model, folder, name=name)


# ---------------------------------------------------------------------------- pretrained
@dataclass(frozen=True)
class ChunkedModel:
    """A pretrained model in memory (the reference) and its chunk set on disk."""

    name: str
    folder: Path
    manifest: Manifest
    model: Any
    tokenizer: Any


def chunked_smollm2(folder: Path) -> ChunkedModel:
    """SmolLM2-135M-Instruct (LLaMA, fp32) in memory and chunked (16 MiB row shards) into
    ``folder``. Loading it from its GGUF file dequantizes it (about 20 s)."""
    from sw_core.local.bundled import load_smollm2

    model, tokenizer = load_smollm2()
    manifest = chunk_model(model, folder, name="smollm2", tokenizer=tokenizer)
    return ChunkedModel("smollm2", folder, manifest, model, tokenizer)


def chunked_minilm(folder: Path) -> ChunkedModel:
    """all-MiniLM-L6-v2 (BERT) in memory and chunked from its safetensors folder."""
    from transformers import AutoModel, AutoTokenizer

    from sw_core.local.bundled import minilm_path

    source = minilm_path()
    manifest = chunk_model(source, folder, name="minilm")
    model = AutoModel.from_pretrained(source).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    return ChunkedModel("minilm", folder, manifest, model, tokenizer)


@dataclass(frozen=True)
class PackedModel:
    """A GGUF file chunked kept packed, with the reader's memory during its tensor phase."""

    folder: Path
    manifest: Manifest
    #: Resident MiB before the tensor phase and at its peak (``gguf_chunker.LAST_PEAK_RSS_MB``).
    rss_mb: dict[str, float]


def packed_smollm2(folder: Path) -> PackedModel:
    """The bundled SmolLM2 Q4_1 GGUF file chunked (16 MiB row shards), quantized tensors
    kept packed (about 97 MB instead of 538)."""
    from sw_core.chunks import gguf_chunker
    from sw_core.local.bundled import smollm2_gguf_path

    manifest = chunk_model(smollm2_gguf_path(), folder, name="smollm2")
    return PackedModel(folder, manifest, dict(gguf_chunker.LAST_PEAK_RSS_MB))
