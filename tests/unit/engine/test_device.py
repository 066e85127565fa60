"""The engine's device setting and its allocator tuning."""

from __future__ import annotations

import pytest
import torch

from sw_core.engine import resolve_device
from sw_core.engine.memory.heap import limit_heap_retention
from sw_core.exceptions import ConfigError


def test_auto_picks_cuda_when_there_is_one() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


def test_explicit_cuda_needs_a_gpu() -> None:
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
        return
    with pytest.raises(ConfigError, match="no CUDA device is available"):
        resolve_device("cuda")


def test_unknown_device_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="SW_DEVICE='toaster' is not a torch device"):
        resolve_device("toaster")


def test_heap_retention_limit_is_idempotent() -> None:
    first = limit_heap_retention()
    assert limit_heap_retention() == first
