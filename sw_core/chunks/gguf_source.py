"""GGUF files read tensor by tensor, quantized tensors kept packed.

The file is memory-mapped by the ``gguf`` package's ``GGUFReader``; names and shapes follow
transformers' own GGUF mapping (``get_gguf_hf_weights_map`` and the architecture's tensor
processor from ``transformers.modeling_gguf_pytorch_utils``), so the chunks hold what
``from_pretrained(..., gguf_file=...)`` would load, without the whole model ever being in
memory: one tensor is decoded at a time, and its pages of the mapping are dropped from the
process once it is written (``MADV_DONTNEED``).

Quantized tensors become :class:`~sw_core.quant.weights.QuantizedWeight` (lossless for the
types :mod:`sw_core.quant.gguf_blocks` lists, re-rounded to 8 bits otherwise). What a
processor does to a tensor is checked on a probe first: a row permutation (LLaMA's q/k
heads) is applied to the packed rows; anything else (a transpose, ``w - 1`` on Gemma's
norms...) is applied to the dequantized tensor, which is then stored as float32. Architectures
whose processors merge several GGUF tensors into one (the mixture-of-experts ones) are not
read here: :func:`streamable` says so and the chunker loads them through transformers.
"""

from __future__ import annotations

import logging
import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sw_core.chunks.tensor_sources import TensorSource
from sw_core.exceptions import ModelError
from sw_core.quant import int4_layout
from sw_core.quant.formats import PackedFormat
from sw_core.quant.gguf_blocks import GROUP, LOSSLESS, decode, kept_packed
from sw_core.quant.rtn import quantize_int8
from sw_core.quant.weights import QuantizedWeight

log = logging.getLogger(__name__)

#: transformers' tensor processors that act on one tensor at a time (the others merge).
_PER_TENSOR = (
    "TensorProcessor",
    "LlamaTensorProcessor",
    "Gemma2TensorProcessor",
    "NemotronTensorProcessor",
)


def architecture(reader: Any) -> str:
    from transformers.modeling_gguf_pytorch_utils import read_field

    return str(read_field(reader, "general.architecture")[0])


def processor_for(reader: Any, config: Any) -> Any:
    """transformers' tensor processor for the file's architecture."""
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    cls = TENSOR_PROCESSORS.get(architecture(reader), TensorProcessor)
    return cls(config=config.to_dict())


def streamable(reader: Any) -> bool:
    """Whether the file's tensors can be read one at a time (see the module doc)."""
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    cls = TENSOR_PROCESSORS.get(architecture(reader), TensorProcessor)
    return cls.__name__ in _PER_TENSOR


@dataclass
class _Entry:
    tensor: Any  # gguf ReaderTensor
    shape: list[int]  # as the model holds it
    rows: np.ndarray | None  # packed: row i comes from stored row rows[i]
    packed: bool


class GGUFSource(TensorSource):
    """Model-keyed tensors of a GGUF file, one at a time (a chunker tensor source)."""

    def __init__(self, reader: Any, processor: Any, name_map: dict[str, str]) -> None:
        self.reader = reader
        self.processor = processor
        self.entries: dict[str, _Entry] = {}
        for tensor in reader.tensors:
            key = name_map.get(tensor.name)
            if key is None:
                log.info("GGUF tensor %s has no place in the model; skipped", tensor.name)
                continue
            shape = [int(d) for d in reversed(tensor.shape.tolist())]
            packed = kept_packed(tensor.tensor_type.name) != "float" and len(shape) == 2
            rows = self._row_permutation(tensor.name, shape[0]) if packed else None
            self.entries[key] = _Entry(tensor, shape, rows, packed and rows is not None)
        #: The last tensor read: row shards of one tensor are read one after the other.
        self._last: tuple[str, torch.Tensor | QuantizedWeight] | None = None

    # ---------------------------------------------------------------- planning
    def formats(self) -> dict[str, PackedFormat]:
        """The format each packed tensor will have (for planning the chunks)."""
        out = {}
        for key, entry in self.entries.items():
            if entry.packed:
                out[key] = predicted_format(entry.tensor.tensor_type.name, entry.shape)
        return out

    def shapes(self) -> dict[str, tuple[list[int], torch.dtype]]:
        """Shape and stored float dtype of every tensor the file holds for the model."""
        out: dict[str, tuple[list[int], torch.dtype]] = {}
        for key, entry in self.entries.items():
            kind = entry.tensor.tensor_type.name
            dtype = {"F16": torch.float16, "BF16": torch.bfloat16}.get(kind, torch.float32)
            out[key] = (entry.shape, dtype)
        return out

    def _row_permutation(self, name: str, n: int) -> np.ndarray | None:
        """What the processor does to a matrix, if it only reorders its rows."""
        probe = np.repeat(np.arange(n, dtype=np.float32)[:, None], 2, axis=1)
        try:
            result = np.asarray(self.processor.process(weights=probe.copy(), name=name).weights)
        except Exception:  # the processor needs the real shape: not a row permutation
            return None
        if result.shape != probe.shape or not np.array_equal(result[:, 0], result[:, 1]):
            return None
        rows = result[:, 0].astype(np.int64)
        if not np.array_equal(np.sort(rows), np.arange(n)):
            return None
        return rows

    # ---------------------------------------------------------------- reading
    def get(self, key: str) -> torch.Tensor | QuantizedWeight:
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        self._last = None  # the previous tensor's memory goes before this one is read
        entry = self.entries[key]
        try:
            weight = self._read(key, entry)
        finally:
            self._drop_pages(entry.tensor, 0, int(entry.tensor.n_bytes))
        self._last = (key, weight)
        return weight

    def get_rows(self, key: str, start: int, end: int) -> torch.Tensor | QuantizedWeight:
        weight = self.get(key)
        if isinstance(weight, QuantizedWeight):
            return weight.rows(start, end)
        return weight[start:end]

    def _read(self, key: str, entry: _Entry) -> torch.Tensor | QuantizedWeight:
        tensor = entry.tensor
        kind = tensor.tensor_type.name
        if entry.packed:
            assert entry.rows is not None
            n, k = entry.shape
            if n % 16 or k % GROUP:
                weight = torch.from_numpy(_dequantize(tensor)).view(n, k)[entry.rows]
                return quantize_int8(weight, source=f"gguf:{kind}")
            data = tensor.data
            if not np.array_equal(entry.rows, np.arange(n)):
                data = np.asarray(data)[entry.rows]
            row_bytes = int(tensor.n_bytes) // n

            def done(start: int, end: int) -> None:
                self._drop_pages(tensor, start * row_bytes, (end - start) * row_bytes)

            return decode(data, kind, (n, k), done)
        weights = _dequantize(tensor)  # float32 (a view of the mapping for F32)
        result = self.processor.process(weights=weights, name=tensor.name).weights
        out = torch.from_numpy(np.array(result, dtype=np.float32, copy=True))
        narrow = {"F16": torch.float16, "BF16": torch.bfloat16}.get(kind)
        if narrow is not None and torch.equal(out.to(narrow).to(torch.float32), out):
            out = out.to(narrow)  # F16/BF16 stay as they are unless the processor changed them
        if list(out.shape) != entry.shape:
            out = out.reshape(entry.shape)
        return out

    def _drop_pages(self, tensor: Any, offset: int, length: int) -> None:
        """Let the kernel take back mapped pages of a tensor already read (bytes
        ``[offset, offset + length)`` of its data)."""
        raw = getattr(self.reader.data, "_mmap", None)
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if raw is None or advice is None:
            return
        page = mmap.PAGESIZE
        start = (int(tensor.data_offset) + offset) // page * page
        end = int(tensor.data_offset) + offset + length
        try:
            raw.madvise(advice, start, end - start)
        except (OSError, ValueError):
            pass


def _dequantize(tensor: Any) -> np.ndarray:
    from gguf import dequantize

    return dequantize(tensor.data, tensor.tensor_type)


def predicted_format(kind: str, shape: list[int]) -> PackedFormat:
    """The format :meth:`GGUFSource.get` gives a GGUF tensor of type ``kind``."""
    n, k = shape
    if n % 16 or k % GROUP:
        return PackedFormat("int8", list(shape), scale_dtype="float32", source=f"gguf:{kind}")
    if kind in LOSSLESS:
        _, planes, zero_point, scale_dtype = LOSSLESS[kind]
        scale = str(scale_dtype).removeprefix("torch.")
    else:
        planes, zero_point, scale = 2, None, "float16"
    return PackedFormat(
        "int4",
        list(shape),
        group_size=GROUP,
        planes=planes,
        block_n=int4_layout.native_block_n() or int4_layout.WIDE,
        scale_dtype=scale,
        zero_point=zero_point,
        source=f"gguf:{kind}",
    )


def open_reader(path: Path) -> Any:
    from gguf import GGUFReader

    try:
        return GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read GGUF file {path}: {exc}") from exc
