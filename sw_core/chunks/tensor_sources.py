"""Where the chunker reads tensors from, one at a time: a state dict or safetensors files,
optionally cast to the dtype the chunks store (``sw chunk --dtype``).

A source may return a :class:`~sw_core.quant.weights.QuantizedWeight` for a packed tensor
(GGUF files, ``sw chunk --quantize``); casting leaves those as they are.
"""

from __future__ import annotations

from typing import Any

import torch

from sw_core.quant.weights import QuantizedWeight

#: What a source hands the writer for one tensor.
Weight = torch.Tensor | QuantizedWeight

#: What ``sw chunk --dtype`` accepts.
STORED_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TensorSource:
    """Reads one tensor (or a row range of one) at a time."""

    def get(self, key: str) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def get_rows(self, key: str, start: int, end: int) -> Any:
        weight = self.get(key)
        if isinstance(weight, QuantizedWeight):
            return weight.rows(start, end)
        return weight[start:end]


class _Narrowed(TensorSource):
    """Floating-point tensors of ``inner`` cast to ``dtype`` (``sw chunk --dtype``)."""

    def __init__(self, inner: TensorSource, dtype: torch.dtype) -> None:
        self._inner, self._dtype = inner, dtype

    def get(self, key: str) -> Any:
        return self._cast(self._inner.get(key))

    def get_rows(self, key: str, start: int, end: int) -> Any:
        return self._cast(self._inner.get_rows(key, start, end))

    def _cast(self, tensor: Weight) -> Weight:
        if isinstance(tensor, QuantizedWeight) or not tensor.dtype.is_floating_point:
            return tensor
        return tensor.to(self._dtype)


def stored(
    source: TensorSource,
    shapes: dict[str, tuple[list[int], torch.dtype]],
    dtype: torch.dtype | None,
) -> tuple[TensorSource, dict[str, tuple[list[int], torch.dtype]]]:
    """The source and shapes as stored: floating-point tensors in ``dtype`` when given."""
    if dtype is None:
        return source, shapes
    narrowed = {k: (s, dtype if d.is_floating_point else d) for k, (s, d) in shapes.items()}
    return _Narrowed(source, dtype), narrowed


class StateDictSource(TensorSource):
    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self._state = state

    def get(self, key: str) -> torch.Tensor:
        return self._state[key]


class SafetensorsSource(TensorSource):
    """Tensors read lazily from safetensors files, under the model's key names."""

    def __init__(self, handles: dict[str, Any], file_key_of: dict[str, str]) -> None:
        self._handles = handles  # model key -> safe_open handle
        self._file_key_of = file_key_of  # model key -> key in the file

    def get(self, key: str) -> torch.Tensor:
        return self._handles[key].get_tensor(self._file_key_of[key])

    def get_rows(self, key: str, start: int, end: int) -> torch.Tensor:
        return self._handles[key].get_slice(self._file_key_of[key])[start:end]
