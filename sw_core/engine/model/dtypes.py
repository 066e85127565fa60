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
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sw_core.chunks.manifest import Manifest

Tensors = dict[str, torch.Tensor]

#: Names ``SW_COMPUTE_DTYPE`` and manifests use.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def compute_dtype(name: str, device: torch.device, manifest: Manifest) -> torch.dtype | None:
    """The dtype floating-point weights are computed in; None keeps them as stored.

    ``auto`` is float32 on CPU and the stored dtype elsewhere.
    """
    if name != "auto":
        return DTYPES[name]
    if device.type == "cpu":
        return torch.float32
    return None


def expansion(manifest: Manifest, dtype: torch.dtype | None) -> float:
    """How many times its stored bytes a chunk holds once widened to ``dtype`` (>= 1)."""
    stored = DTYPES.get(manifest.dtype)
    if dtype is None or stored is None:
        return 1.0
    return max(1.0, dtype.itemsize / stored.itemsize)


def to_compute(
    tensors: Tensors, dtype: torch.dtype | None, take: Callable[[int], memoryview] | None
) -> Tensors:
    """``tensors`` with their floating-point ones in ``dtype`` (the others as they are).

    With ``take`` (a :class:`~sw_core.engine.memory.buffers.BufferPool`'s), the converted tensors
    share one buffer from it; otherwise torch allocates them.
    """
    if dtype is None:
        return tensors
    todo = [n for n, t in tensors.items() if t.dtype.is_floating_point and t.dtype != dtype]
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
