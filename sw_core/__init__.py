"""Surfing Weights: transformer inference on workers that never hold the whole model."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

#: Public names imported on first use, so ``import sw_core`` does not import torch.
_LAZY = {
    "StreamingEngine": "sw_core.engine",
    "StreamingModel": "sw_core.engine",
    "StreamingBertModel": "sw_core.engine",
    "StreamingGPTModel": "sw_core.engine",
    "StreamingLlamaModel": "sw_core.engine",
    "StreamingT5Model": "sw_core.engine",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sw_core' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
