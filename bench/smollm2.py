"""SmolLM2-135M-Instruct for the benchmarks, prepared once per ``bench/run.py`` run.

Dequantizing the bundled GGUF (about 20 s on 2 cores, more on a busy machine) and chunking
the model are the same work in every benchmark that serves SmolLM2. ``bench/run.py`` gives
its benchmarks one folder (:data:`SHARED_ENV`): the first to ask writes a transformers
folder there (float32 safetensors holding the GGUF's dequantized weights, and its tokenizer)
and the chunk sets, the others reuse them. A script run on its own (no such folder)
dequantizes the GGUF and chunks into the folder it names, as before. Either way the weights
are the same numbers; only where they are read from differs, and no benchmark times this.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # bench/run.py imports this module: torch only when a model is needed
    from sw_core.chunks.manifest import Manifest

#: The environment variable naming the run's shared folder (set by ``bench/run.py``).
SHARED_ENV = "BENCH_SHARED_DIR"


def shared_dir() -> Path | None:
    """The run's shared folder, or None when the benchmark runs on its own."""
    value = os.environ.get(SHARED_ENV)
    return Path(value) if value else None


def write_hf_folder(model: Any, tokenizer: Any, folder: Path, dtype: str = "float32") -> None:
    """Write ``model`` (loaded from the GGUF) as a transformers folder in ``dtype``.

    ``save_pretrained`` refuses a model loaded from GGUF, so the folder is written by hand;
    the tied output head is the embedding matrix, stored once under its own name. Written
    beside ``folder`` and renamed into place, so a half-written folder is never read.
    """
    import torch
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {
        k: v.to(getattr(torch, dtype)).contiguous()
        for k, v in model.state_dict().items()
        if k != "lm_head.weight"
    }
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(model).__name__]
    config.dtype = dtype
    config.save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)


def _hf_folder(shared: Path) -> Path:
    from sw_core.local.bundled import load_smollm2

    folder = shared / "smollm2-hf-float32"
    if not (folder / "config.json").exists():
        model, tokenizer = load_smollm2()
        write_hf_folder(model, tokenizer, folder)
    return folder


def load() -> tuple[Any, Any]:
    """SmolLM2 in float32 and eval mode with its tokenizer: from the run's transformers
    folder when there is one, else dequantized from the GGUF (``load_smollm2``)."""
    from sw_core.local.bundled import load_smollm2

    shared = shared_dir()
    if shared is None:
        return load_smollm2()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _hf_folder(shared)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, tokenizer


def chunk_set(
    folder: Path, dtype: str | None = None, loaded: tuple[Any, Any] | None = None
) -> tuple[Path, Manifest]:
    """SmolLM2 chunked in ``dtype`` (None: float32): the run's shared chunk set when there
    is one, else chunked into ``folder`` (from ``loaded``, the model and tokenizer, when
    given). Returns the chunk folder and its manifest."""
    from sw_core.chunks.chunker import chunk_model
    from sw_core.chunks.manifest import Manifest
    from sw_core.local.bundled import load_smollm2

    shared = shared_dir()
    if shared is not None:
        folder = shared / f"smollm2-chunks-{dtype or 'float32'}"
    if (folder / "manifest.json").exists():
        return folder, Manifest.load(folder)
    if shared is not None:
        tmp = folder.with_name(folder.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        chunk_model(_hf_folder(shared), tmp, name="smollm2", dtype=dtype)
        tmp.rename(folder)
        return folder, Manifest.load(folder)
    model, tokenizer = loaded or load_smollm2()
    return folder, chunk_model(model, folder, name="smollm2", tokenizer=tokenizer, dtype=dtype)
