"""Cheap, deterministic, plausible bfloat16 weights: a seeded normal pool, tiled and varied.

Drawing 35 GB of normal samples would take minutes; disks write about 1.3 GB/s and sha256
hashes about 1.5 GB/s, and the generator must not be the slowest of the three. So a pool
of ``POOL_VALUES`` bfloat16 samples of ``N(0, 0.02)`` (the initializer range of LLaMA-family
configs) is drawn once from the seed, and a tensor is filled with runs of the pool starting
at offsets drawn from a generator seeded by (seed, tensor name), each run XORed with a key
in the three lowest mantissa bits (the value moves by less than 2 %, its sign and exponent
stay). That is a copy with an XOR: several GB/s, so hashing and the disk set the pace.
Norm weights are ones, as initialized, so activations stay in range through many layers.

Every byte depends on the seed and the tensor's name only: the same seed writes the same
chunk set (same digests), another seed a different one.
"""

from __future__ import annotations

import hashlib

import numpy as np

#: Values in the pool (8 MiB of bfloat16).
POOL_VALUES = 1 << 22
#: Standard deviation of the weights.
WEIGHT_STD = 0.02
#: bfloat16 1.0.
BF16_ONE = 0x3F80
#: Values copied from one pool offset (2 MiB).
RUN_VALUES = 1 << 20


def is_norm(name: str, shape: tuple[int, ...]) -> bool:
    """1-D weights of normalization layers (initialized to ones)."""
    return len(shape) == 1 and "norm" in name and name.endswith(".weight")


class PlausibleBF16:
    """Fills buffers with the bfloat16 bits of a tensor's values, piece by piece.

    Example:
        >>> gen = PlausibleBF16(seed=0)
        >>> out = np.empty(1000, dtype=np.uint16)
        >>> gen.fill("w", 0, out, norm=False)
        >>> float(np.abs(out.view(np.int16) & 0x7FFF).max()) > 0
        True
    """

    def __init__(self, seed: int) -> None:
        import torch

        self.seed = seed
        generator = torch.Generator().manual_seed(seed)
        pool = (torch.randn(POOL_VALUES, generator=generator) * WEIGHT_STD).to(torch.bfloat16)
        self.pool = pool.view(torch.int16).numpy().view(np.uint16).copy()

    def fill(self, name: str, start: int, out: np.ndarray, *, norm: bool) -> None:
        """Values ``start .. start + len(out)`` of tensor ``name`` into ``out`` (uint16)."""
        if norm:
            out.fill(BF16_ONE)
            return
        done = 0
        total = len(out)
        while done < total:
            index = (start + done) // RUN_VALUES
            offset, key = self._run(name, index)
            skip = (start + done) - index * RUN_VALUES
            n = min(RUN_VALUES - skip, total - done)
            src = self.pool[offset + skip : offset + skip + n]
            np.bitwise_xor(src, key, out=out[done : done + n])
            done += n

    def fill_part(self, name: str, start: int, out: np.ndarray) -> None:
        """A part of a packed weight (``<tensor>:q``, ``:scales``, ``:offsets``): random
        4- or 8-bit values; scales and offsets that give the weights about ``WEIGHT_STD``
        (int4: ``scale * v + offset``, ``v`` in 0..15; int8: ``scale * q``)."""
        part = name.rpartition(":")[2]
        if part == "q":
            raw = out.view(np.uint8)
            even = raw[: len(raw) - len(raw) % 2].view(np.uint16)
            self.fill(name, start // 2, even, norm=False)
            if len(raw) % 2:
                raw[-1] = 0x5A
        elif out.dtype == np.float16:  # int4 scale, or offset = -7.5 * scale (mean 0)
            scale = WEIGHT_STD / 4.6
            out.fill(-7.5 * scale if part == "offsets" else scale)
        else:  # int8 scales (float32): q of about 74 standard deviation
            out.fill(WEIGHT_STD / 74)

    def _run(self, name: str, index: int) -> tuple[int, np.uint16]:
        """Pool offset and mantissa key of run ``index`` of tensor ``name``."""
        digest = hashlib.blake2b(f"{self.seed}:{name}:{index}".encode(), digest_size=8).digest()
        value = int.from_bytes(digest, "little")
        return value % (POOL_VALUES - RUN_VALUES), np.uint16((value >> 40) & 0x7)
