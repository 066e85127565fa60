"""The dtype the engine computes in, and widening chunks stored narrower to it.

``sw chunk --dtype bfloat16`` stores weights in half the bytes; on CPU the engine still
computes in float32 by default (``SW_COMPUTE_DTYPE=auto``): bfloat16 matrix products are
slower than float32 ones on most CPUs, and float32 keeps results equal to the float32 model
fed the same (rounded) weights. Each fetched chunk is widened once, into a reused buffer
(:mod:`sw_core.engine.memory.buffers`) for streamed chunks; the narrow fetched bytes are then free.

A widened chunk holds ``compute itemsize / stored itemsize`` times its stored bytes, and the
memory budget counts that (:func:`expansion`), so a budget keeps as many weights resident
whatever their stored dtype. The narrow copy that lives while one chunk is widened is not
counted, like a source's transient copies.

Packed (quantized) chunk sets: ``auto`` is bfloat16 on a CPU with AVX-512 (where torch's
packed kernels are fast with bfloat16 activations) and on a GPU, float32 on other CPUs. With
bfloat16 the packed tensors stay packed (:mod:`sw_core.engine.model.packed`); with any other
compute dtype they are widened on arrival, float32 giving exactly transformers' dequantized
model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sw_core.chunks.manifest import Manifest
from sw_core.engine.model.kernels import CpuKernels
from sw_core.engine.model.packed import PackedWeight, StoredPacked, widen

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Packing:
    """How packed tensors are made ready: which stay packed, with what activations."""

    kept: frozenset[str]
    dtype: torch.dtype
    kernels: CpuKernels


#: Names ``SW_COMPUTE_DTYPE`` and manifests use.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def compute_dtype(name: str, device: torch.device, manifest: Manifest) -> torch.dtype | None:
    """The dtype floating-point weights are computed in; None keeps them as stored.

    ``auto`` is float32 on CPU and the stored dtype elsewhere; for packed chunk sets,
    bfloat16 on a GPU and on a CPU with AVX-512, float32 on other CPUs.
    """
    if name != "auto":
        return DTYPES[name]
    if manifest.packed:
        if device.type != "cpu" or "AVX512" in torch.backends.cpu.get_cpu_capability():
            return torch.bfloat16
        return torch.float32
    if device.type == "cpu":
        return torch.float32
    return None


def packed_dtype(dtype: torch.dtype | None) -> torch.dtype | None:
    """The activation dtype packed tensors are kept packed with (None: widen them)."""
    return dtype if dtype == torch.bfloat16 else None


def expansion(manifest: Manifest, dtype: torch.dtype | None) -> float:
    """How many times its stored bytes a chunk holds once widened to ``dtype`` (>= 1)."""
    stored = DTYPES.get(manifest.dtype)
    if dtype is None or stored is None:
        return 1.0
    return max(1.0, dtype.itemsize / stored.itemsize)


def to_compute(
    tensors: dict[str, Any],
    dtype: torch.dtype | None,
    take: Callable[[int], memoryview] | None,
    packing: Packing | None = None,
) -> dict[str, Any]:
    """``tensors`` with their floating-point ones in ``dtype`` (the others as they are), and
    packed ones made ready: kept packed (``packing.kept``) or widened to ``dtype``.

    With ``take`` (a :class:`~sw_core.engine.memory.buffers.BufferPool`'s), the converted tensors
    share one buffer from it; otherwise torch allocates them.
    """
    return widen_plain(make_packed(tensors, dtype, take, packing), dtype, take)


def make_packed(
    tensors: dict[str, Any],
    dtype: torch.dtype | None,
    take: Callable[[int], memoryview] | None,
    packing: Packing | None = None,
) -> dict[str, Any]:
    """The first half of :func:`to_compute`: packed tensors kept packed or widened, the
    plain ones as they are."""
    if not any(isinstance(t, StoredPacked) for t in tensors.values()):
        return tensors
    tensors = dict(tensors)
    for name, stored in list(tensors.items()):
        if not isinstance(stored, StoredPacked):
            continue
        if packing is not None and name in packing.kept:
            tensors[name] = PackedWeight(stored, packing.dtype, packing.kernels)
        else:
            tensors[name] = widen(stored, dtype or torch.float32, take)
    return tensors


def widen_plain(
    tensors: dict[str, Any],
    dtype: torch.dtype | None,
    take: Callable[[int], memoryview] | None,
) -> dict[str, Any]:
    """The second half of :func:`to_compute`: floating-point tensors cast to ``dtype``."""
    if dtype is None:
        return tensors
    todo = [
        n
        for n, t in tensors.items()
        if isinstance(t, torch.Tensor) and t.dtype.is_floating_point and t.dtype != dtype
    ]
    if not todo:
        return tensors
    out = dict(tensors)
    if take is None or tensors[todo[0]].device.type != "cpu":
        for name in todo:
            out[name] = tensors[name].to(dtype)
        return out
    itemsize = dtype.itemsize
    total = sum(tensors[n].numel() for n in todo) * itemsize
    flat = torch.frombuffer(take(total), dtype=dtype) if total else torch.empty(0, dtype=dtype)
    offset = 0
    for name in todo:
        source = tensors[name]
        target = flat[offset : offset + source.numel()].view(source.shape)
        target.copy_(source)
        out[name] = target
        offset += source.numel()
    return out
