"""A streamed chunk built once per buffer, then laid over each new lease by views alone.

Building a chunk's tensors from its verified bytes -- the safetensors layout, then each
packed weight's planes and scale tables -- costs about 0.2 ms of interpreter time per layer,
and a streamed model does it for every layer of every token, on a thread that shares the
interpreter lock with the compute. When the same verified chunk lands in the same pooled
buffer again, the tensors sit at the same offsets: a :class:`Template` (what was built the
first time, over the buffer's memory) gives the new tensors as views of the new lease with
the same sizes, strides and offsets -- one ``as_strided`` per tensor. The views hold the
lease, as freshly built tensors would, so the buffer pool's rule holds: no buffer is handed
out again while any tensor over it is alive (:mod:`sw_core.engine.memory.buffers`).
"""

from __future__ import annotations

from typing import Any

import torch

from sw_core.engine.model.packed import PackedWeight
from sw_core.storage.direct import address


class Template:
    """A chunk's tensors as built over a buffer's memory (``base``), to be laid again over
    a lease of the same buffer. :meth:`of` says None when they cannot be: a tensor that is
    not a view of ``base`` (a widened copy, an empty tensor) or a value that is no tensor."""

    def __init__(self, built: dict[str, Any], base_address: int) -> None:
        self.built = built
        self.base_address = base_address

    @classmethod
    def of(cls, built: dict[str, Any], base: memoryview) -> Template | None:
        low = address(base)
        high = low + base.nbytes
        held: list[torch.Tensor] = []
        for value in built.values():
            if isinstance(value, PackedWeight):
                held += value.tensors()
            elif isinstance(value, torch.Tensor):
                held.append(value)
            else:
                return None
        inside = all(
            t.device.type == "cpu"
            and t.nbytes > 0
            and low <= t.data_ptr()
            and t.data_ptr() + t.nbytes <= high
            for t in held
        )
        return cls(built, low) if inside else None

    def over(self, lease: memoryview) -> dict[str, Any]:
        """The same tensors over ``lease`` (the chunk's bytes in the same buffer)."""
        typed: dict[tuple[torch.dtype, int], torch.Tensor] = {}
        size = lease.nbytes

        def view(tensor: torch.Tensor) -> torch.Tensor:
            offset = tensor.data_ptr() - self.base_address
            itemsize = tensor.element_size()
            skew = offset % itemsize
            source = typed.get((tensor.dtype, skew))
            if source is None:
                count = (size - skew) // itemsize
                source = torch.frombuffer(lease, dtype=tensor.dtype, count=count, offset=skew)
                typed[(tensor.dtype, skew)] = source
            return source.as_strided(tensor.size(), tensor.stride(), offset // itemsize)

        return {
            name: value.rebased(view) if isinstance(value, PackedWeight) else view(value)
            for name, value in self.built.items()
        }
