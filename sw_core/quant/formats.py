"""Packed weight formats: what a chunk stores for a weight kept at its stored width.

Two formats, each in the layout one of torch's packed-weight kernels computes with, so a
streamed chunk is used where it lands (no conversion on arrival):

``int4`` -- ``W[n, k] = scale[g, n] * v[n, k] + offset[g, n]`` with ``g = k // group_size``
    and ``v = sum_p 16**p * nibble_p[n, k]``: one plane of 4-bit values (``planes=1``,
    ``v`` in 0..15: GGUF ``Q4_0``, ``Q4_1``, ``Q4_K``, ``sw chunk --quantize int4``) or two
    planes (``planes=2``, ``v`` in 0..255: the 5- to 8-bit GGUF types, ``Q8_0`` for one),
    each computed by ``torch._weight_int4pack_mm_for_cpu`` and summed. Every plane is stored
    in the nibble layout of torch's CPU int4 kernel (:mod:`sw_core.quant.int4_layout`: rows in
    blocks of ``block_n``, 64 on AVX-512 CPUs). Stored parts (``lead`` is the expert index of
    fused mixture-of-experts tensors, absent otherwise):

    - ``<name>:q`` uint8 ``[*lead, planes, N, K/2]``
    - ``<name>:scales`` float16/float32 ``[*lead, K/group_size, N, 2]``: each group's
      ``(scale, offset)``, or ``[*lead, K/group_size, N]`` (the scales alone) when
      ``zero_point`` is set (``offset = -zero_point * scale``: symmetric types such as
      ``Q4_0``, ``Q8_0``). Kept exact (as the source holds them): widened to float32 they
      give the dequantized weight bit for bit.
    - ``<name>:table`` bfloat16 ``[*lead, planes, K/group_size, N, 2]`` (when ``table_dtype``
      is set): the kernel's scale-and-zero table for bfloat16 activations, per plane
      ``(scale, offset + 8 * scale)`` and ``(16 * scale, 128 * scale)``. Derived from the
      scales, stored so that a streamed chunk needs no work on arrival (building it cost
      as much CPU as the matrix products themselves: measured on SmolLM2), at 4 bytes per
      group and plane. With a table the exact ``scales`` are written last in the chunk
      (:attr:`~sw_core.chunks.manifest.ChunkInfo.kernel_bytes`): a reader computing with
      the table reads the file's first bytes only.

``int8`` -- ``W[n, k] = scale[n] * q[n, k]`` (``torch._weight_int8pack_mm``: one scale per
    output channel, ``sw chunk --quantize int8``). Parts: ``<name>:q`` int8 ``[*lead, N, K]``,
    ``<name>:scales`` float32 ``[*lead, N]``.

``N`` (output features) and ``K`` (input features) are the matrix the kernel multiplies by:
the weight as ``nn.Linear`` holds it. ``transposed`` marks a weight the model holds as
``[K, N]`` (GPT-2's ``Conv1D``). A chunk holding a row shard ``[a, b)`` of a 2-D weight stores
the parts of those rows (of ``N``); an expert chunk stores its experts (of ``lead``).

The manifest records a :class:`PackedFormat` per packed tensor (``Manifest.packed``), so a
reader knows each part's shape and dtype before it reads a byte.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from sw_core.exceptions import ModelError

Kind = Literal["int4", "int8"]
#: Separator between a tensor's name and its part (``model.layers.0.mlp.up_proj.weight:q``).
PART_SEP = ":"
#: Group sizes the int4 kernel takes.
GROUP_SIZES = (32, 64, 128, 256)
#: Bytes per element of the dtypes parts are stored in (names as torch spells them; this
#: module stays free of torch so that reading a manifest does not import it).
ITEMSIZE = {"uint8": 1, "int8": 1, "float16": 2, "bfloat16": 2, "float32": 4}
_SCALE_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class PackedFormat:
    """How one tensor is packed (see the module doc)."""

    kind: Kind
    #: The tensor's shape as the model holds it (``[N, K]``, ``[E, N, K]``, ``[K, N]`` transposed).
    shape: list[int]
    #: int4: values per (scale, offset) pair along ``K``.
    group_size: int | None = None
    #: int4: 4-bit planes (1: 4-bit values, 2: 8-bit values).
    planes: int = 1
    #: int4: rows per block of the kernel's nibble layout.
    block_n: int | None = None
    scale_dtype: str = "float16"
    #: int4: ``offset = -zero_point * scale`` (offsets not stored) when set.
    zero_point: int | None = None
    #: The model holds the transpose (``[K, N]``) of the packed matrix.
    transposed: bool = False
    #: int4: the dtype of the stored kernel table (``bfloat16``), None when not stored.
    table_dtype: str | None = None
    #: Where the values came from (``gguf:Q4_1``, ``rtn``...): for people, not for code.
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------- shapes
    @property
    def lead(self) -> list[int]:
        """Leading (expert) dimensions: ``[E]`` for fused experts, ``[]`` for a matrix."""
        return list(self.shape[:-2])

    @property
    def matrix(self) -> tuple[int, int]:
        """``(N, K)``: output and input features of the packed matrix."""
        a, b = self.shape[-2], self.shape[-1]
        return (b, a) if self.transposed else (a, b)

    def part_specs(self, rows: tuple[int, int] | None = None) -> dict[str, tuple[list[int], str]]:
        """``{part: (shape, dtype name)}`` stored for the whole tensor or for ``rows`` of its first
        dimension (matrix rows ``N`` of a 2-D weight, experts of a fused one)."""
        lead = self.lead
        n, k = self.matrix
        if rows is not None:
            count = rows[1] - rows[0]
            if lead:
                lead = [count, *lead[1:]]
            else:
                n = count
        scale = self.scale_dtype
        if self.kind == "int8":
            return {"q": ([*lead, n, k], "int8"), "scales": ([*lead, n], scale)}
        assert self.group_size is not None
        groups = k // self.group_size
        pair = [2] if self.zero_point is None else []
        specs = {
            "q": ([*lead, self.planes, n, k // 2], "uint8"),
            "scales": ([*lead, groups, n, *pair], scale),
        }
        if self.table_dtype is not None:
            specs["table"] = ([*lead, self.planes, groups, n, 2], self.table_dtype)
        return specs

    def stored_bytes(self, rows: tuple[int, int] | None = None) -> int:
        return sum(math.prod(s) * ITEMSIZE[d] for s, d in self.part_specs(rows).values())

    def exact_scale_bytes(self, rows: tuple[int, int] | None = None) -> int:
        """Bytes of the stored ``scales`` part that a chunk keeps after its kernel prefix
        (:attr:`~sw_core.chunks.manifest.ChunkInfo.kernel_bytes`): int4 with a stored
        table; 0 otherwise."""
        if self.kind != "int4" or self.table_dtype is None:
            return 0
        shape, dtype = self.part_specs(rows)["scales"]
        return math.prod(shape) * ITEMSIZE[dtype]

    def row_bytes(self) -> int:
        """Stored bytes per row of the first dimension (for planning row shards)."""
        first = self.shape[0]
        return -(-self.stored_bytes() // max(first, 1))

    @property
    def row_align(self) -> int:
        """Row shards of a packed matrix start and end on multiples of this."""
        return self.block_n or 16 if self.kind == "int4" and not self.lead else 1

    # ---------------------------------------------------------------- checks
    def check(self, name: str) -> None:
        """Raise :class:`ModelError` unless the format is one this version computes with."""
        n, k = self.matrix
        problems = []
        if self.kind not in ("int4", "int8"):
            problems.append(f"unknown kind {self.kind!r}")
        if len(self.shape) not in (2, 3) or min(self.shape) <= 0:
            problems.append(f"shape {self.shape}")
        if self.scale_dtype not in _SCALE_DTYPES:
            problems.append(f"scale dtype {self.scale_dtype!r}")
        if self.transposed and self.lead:
            problems.append("a transposed fused tensor")
        if self.kind == "int4":
            if self.group_size not in GROUP_SIZES or k % (self.group_size or 1):
                problems.append(f"group size {self.group_size} for K = {k}")
            if self.planes not in (1, 2):
                problems.append(f"{self.planes} planes")
            if self.block_n not in (32, 64):
                problems.append(f"nibble layout of blocks of {self.block_n} rows")
            if n % 16:
                problems.append(f"N = {n} (the int4 kernel needs a multiple of 16)")
            if self.table_dtype not in (None, "bfloat16"):
                problems.append(f"table dtype {self.table_dtype!r}")
        elif k % 16:
            problems.append(f"K = {k} (the int8 kernel needs a multiple of 16)")
        if problems:
            raise ModelError(f"packed tensor {name!r}: unsupported format ({'; '.join(problems)})")

    # ---------------------------------------------------------------- (de)serialization
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: v for k, v in data.items() if v not in (None, {}, False, "")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PackedFormat:
        if not isinstance(data, dict):
            raise ModelError(f"malformed packed format {data!r}")
        try:
            fmt = cls(**data)
        except TypeError as exc:
            raise ModelError(f"malformed packed format: {exc}") from None
        return fmt


def exact_scale_parts(
    tensors: Iterable[str], formats: Mapping[str, PackedFormat]
) -> frozenset[str]:
    """The stored names of the ``scales`` parts among ``tensors`` that a chunk keeps past its
    kernel prefix (int4 tensors with a stored table; :meth:`PackedFormat.exact_scale_bytes`)."""
    return frozenset(
        part_name(t, "scales") for t in tensors if t in formats and formats[t].exact_scale_bytes()
    )


def part_name(tensor: str, part: str) -> str:
    """The stored name of one part of a packed tensor (``<tensor>:q``)."""
    return f"{tensor}{PART_SEP}{part}"


def stored_names(tensor: str, fmt: PackedFormat | None) -> list[str]:
    """What a chunk stores for ``tensor``: itself, or its packed parts."""
    if fmt is None:
        return [tensor]
    return [part_name(tensor, p) for p in fmt.part_specs()]


def split_part(stored: str) -> tuple[str, str | None]:
    """``(tensor, part)`` of a stored name; ``part`` is None for a plain tensor."""
    tensor, sep, part = stored.rpartition(PART_SEP)
    return (tensor, part) if sep else (stored, None)
