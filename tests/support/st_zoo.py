"""Tiny sentence-transformers folders built offline from random-init encoder configs.

Every encoder uses the bundled all-MiniLM-L6-v2 WordPiece tokenizer (pad id 0, so the
RoBERTa-style configs get ``pad_token_id=0``); weights come from a fixed seed. The folder is
written by sentence-transformers itself (``SentenceTransformer.save``), so the engine reads
exactly the files a user's model folder holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers

#: Hidden size of the tiny encoders.
HIDDEN = 32
_MODELS = {
    "bert": (transformers.BertConfig, transformers.BertModel),
    "roberta": (transformers.RobertaConfig, transformers.RobertaModel),
    "xlm-roberta": (transformers.XLMRobertaConfig, transformers.XLMRobertaModel),
    "mpnet": (transformers.MPNetConfig, transformers.MPNetModel),
    "distilbert": (transformers.DistilBertConfig, transformers.DistilBertModel),
}
ENCODERS = tuple(_MODELS)


def minilm_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from sw_core.local.bundled import minilm_path

    return AutoTokenizer.from_pretrained(minilm_path())


def encoder_model(kind: str, vocab_size: int, seed: int = 0) -> torch.nn.Module:
    """A 2-layer random-init encoder of ``kind`` (hidden 32, 4 heads, 66 positions)."""
    config_cls, model_cls = _MODELS[kind]
    if kind == "distilbert":
        config = config_cls(
            vocab_size=vocab_size,
            dim=HIDDEN,
            n_layers=2,
            n_heads=4,
            hidden_dim=64,
            max_position_embeddings=64,
            pad_token_id=0,
        )
    else:
        config = config_cls(
            vocab_size=vocab_size,
            hidden_size=HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=66,
            pad_token_id=0,
        )
    torch.manual_seed(seed)
    return model_cls(config).eval()


def sentence_folder(
    kind: str,
    folder: Path,
    *,
    pooling: str | list[str],
    dense_out: int | None = None,
    normalize: bool = True,
    max_seq_length: int = 16,
) -> Any:
    """Write a sentence-transformers model folder for a tiny ``kind`` encoder; returns the
    ``SentenceTransformer`` (the reference)."""
    from sentence_transformers import SentenceTransformer, models

    tokenizer = minilm_tokenizer()
    hf = folder.parent / f"{folder.name}-hf"
    encoder_model(kind, tokenizer.vocab_size).save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    modules: list[Any] = [models.Transformer(str(hf), max_seq_length=max_seq_length)]
    modules.append(models.Pooling(HIDDEN, pooling_mode=pooling))
    width = HIDDEN * (len(pooling) if isinstance(pooling, list) else 1)
    if dense_out is not None:
        torch.manual_seed(1)
        modules.append(models.Dense(width, dense_out, activation_function=torch.nn.Tanh()))
    if normalize:
        modules.append(models.Normalize())
    model = SentenceTransformer(modules=modules, device="cpu")
    model.save(str(folder))
    return model.eval()
