"""Session fixtures with the two real pretrained models, chunked once per test session.

Loading SmolLM2 from its GGUF file dequantizes it (about 20 s), so the in-memory reference
model, its tokenizer and its chunk set are made once and shared. Tests must not modify
the reference models. Heavy imports happen inside the fixtures, so collecting tests that
do not use them stays fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sw_core.chunks.manifest import Manifest


@dataclass(frozen=True)
class ChunkedModel:
    """A pretrained model in memory (the reference) and its chunk set on disk."""

    name: str
    folder: Path
    manifest: Manifest
    model: Any
    tokenizer: Any


@pytest.fixture(scope="session")
def smollm2_chunked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChunkedModel]:
    """SmolLM2-135M-Instruct (LLaMA, fp32) in memory and chunked (16 MiB row shards)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sw_core.chunks.chunker import chunk_model
    from sw_core.local.bundled import smollm2_gguf_path

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    folder = tmp_path_factory.mktemp("smollm2")
    manifest = chunk_model(model, folder, name="smollm2", tokenizer=tokenizer)
    yield ChunkedModel("smollm2", folder, manifest, model, tokenizer)


@pytest.fixture(scope="session")
def minilm_chunked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChunkedModel]:
    """all-MiniLM-L6-v2 (BERT) in memory and chunked from its safetensors folder."""
    from transformers import AutoModel, AutoTokenizer

    from sw_core.chunks.chunker import chunk_model
    from sw_core.local.bundled import minilm_path

    source = minilm_path()
    folder = tmp_path_factory.mktemp("minilm")
    manifest = chunk_model(source, folder, name="minilm")
    model = AutoModel.from_pretrained(source).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    yield ChunkedModel("minilm", folder, manifest, model, tokenizer)
