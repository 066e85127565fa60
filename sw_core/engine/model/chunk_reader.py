"""A verified chunk's bytes as the tensors the skeleton expects, checked once per digest.

The first time a chunk arrives, its safetensors header is parsed and checked -- against the
format (:mod:`~sw_core.chunks.safetensors_io`), against the manifest (exactly the tensors it
lists, a packed tensor's parts included) and against the model (each tensor's shape and kind)
-- and the outcome is kept as a :class:`ChunkLayout` under the chunk's digest. A streamed
chunk arrives again at every pass: its bytes were verified against that same digest before
they got here, so they hold the same header, and the tensors are rebuilt from the layout
without a parse (tens of microseconds instead of a JSON parse and the checks, on the event
loop's thread). The layout is only used on a buffer of the size it was parsed from, so its
offsets stay inside the buffer whatever the bytes hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from sw_core.chunks.manifest import ChunkInfo, Manifest
from sw_core.chunks.safetensors_io import Entry, beyond, parse_layout, tensors_at
from sw_core.engine.model.packed import StoredPacked
from sw_core.exceptions import ModelError, SecurityError
from sw_core.quant.formats import exact_scale_parts, split_part


@dataclass(frozen=True)
class ChunkLayout:
    """Where a checked chunk's tensors lie in its bytes, and which are a packed tensor's parts."""

    size_bytes: int
    entries: list[Entry]
    #: stored name -> (tensor name, part) for the parts of packed tensors.
    parts: dict[str, tuple[str, str]]


class ChunkReader:
    """Builds a chunk's tensors from its verified bytes.

    Args:
        manifest: the chunk set's manifest.
        specs: each canonical tensor's ``(shape, dtype)`` in the model.
    """

    def __init__(
        self, manifest: Manifest, specs: Mapping[str, tuple[tuple[int, ...], torch.dtype]]
    ) -> None:
        self.manifest = manifest
        self.specs = specs
        self._layouts: dict[tuple[str, str], ChunkLayout] = {}

    def read(self, chunk: ChunkInfo, data: bytearray | memoryview) -> dict[str, Any]:
        """Tensors of ``chunk`` over ``data`` (zero-copy): plain tensors, and packed ones as
        :class:`~sw_core.engine.model.packed.StoredPacked` (their parts)."""
        key = (chunk.name, chunk.blake3 or chunk.sha256)
        layout = self._layouts.get(key)
        if layout is None or layout.size_bytes != len(memoryview(data)):
            layout = self._check(chunk, data)
            self._layouts[key] = layout
        stored = tensors_at(layout.entries, data)
        if not layout.parts:
            return stored
        rows = (chunk.rows[0], chunk.rows[1]) if chunk.rows is not None else None
        tensors: dict[str, Any] = {}
        packed: dict[str, dict[str, torch.Tensor]] = {}
        for stored_name, tensor in stored.items():
            owner = layout.parts.get(stored_name)
            if owner is None:
                tensors[stored_name] = tensor
            else:
                packed.setdefault(owner[0], {})[owner[1]] = tensor
        for name, parts in packed.items():
            tensors[name] = StoredPacked(name, self.manifest.formats[name], parts, rows)
        return tensors

    # ---------------------------------------------------------------- first arrival
    def _check(self, chunk: ChunkInfo, data: bytearray | memoryview) -> ChunkLayout:
        """Parse and check ``chunk``'s header (see the module doc)."""
        size, entries = parse_layout(data, prefix=chunk.is_prefix)
        stored = tensors_at(entries, data)
        expected = self.manifest.stored_tensors(chunk)
        if chunk.is_prefix:  # a kernel view: the exact scales lie past its end, unread
            tail = sorted(exact_scale_parts(chunk.tensors, self.manifest.formats))
            if beyond(data) != tail:
                raise SecurityError(
                    f"model {self.manifest.name!r}: chunk {chunk.name!r} does not end with "
                    f"the exact scales of its packed tensors ({tail[:3]})"
                )
            expected = [n for n in expected if n not in tail]
        if set(stored) != set(expected):
            extra = sorted(set(stored) - set(expected))
            lacking = sorted(set(expected) - set(stored))
            raise SecurityError(
                f"model {self.manifest.name!r}: chunk {chunk.name!r} does not hold what the "
                f"manifest lists (extra {extra[:3]}, missing {lacking[:3]})"
            )
        rows = (chunk.rows[0], chunk.rows[1]) if chunk.rows is not None else None
        parts: dict[str, tuple[str, str]] = {}
        packed: dict[str, dict[str, torch.Tensor]] = {}
        for stored_name, tensor in stored.items():
            name, part = split_part(stored_name)
            if part is not None and name in self.manifest.formats:
                packed.setdefault(name, {})[part] = tensor
                parts[stored_name] = (name, part)
                continue
            self._check_plain(chunk, name, tensor)
        for name, group in packed.items():
            self._check_packed(chunk, name, group, rows)
        return ChunkLayout(size, entries, parts)

    def _check_plain(self, chunk: ChunkInfo, name: str, tensor: torch.Tensor) -> None:
        shape, dtype = self.specs[name]
        if chunk.rows is not None:
            shape = (chunk.rows[1] - chunk.rows[0], *shape[1:])
        if tuple(tensor.shape) != shape:
            raise ModelError(
                f"model {self.manifest.name!r}: tensor {name!r} in chunk {chunk.name!r} has "
                f"shape {list(tensor.shape)}, the model expects {list(shape)}"
            )
        if tensor.dtype.is_floating_point != dtype.is_floating_point:
            raise ModelError(
                f"model {self.manifest.name!r}: tensor {name!r} in chunk {chunk.name!r} has "
                f"dtype {tensor.dtype}, the model expects {dtype}"
            )

    def _check_packed(
        self,
        chunk: ChunkInfo,
        name: str,
        parts: dict[str, torch.Tensor],
        rows: tuple[int, int] | None,
    ) -> None:
        fmt = self.manifest.formats[name]
        shape, _ = self.specs[name]
        if list(fmt.shape) != list(shape):
            raise ModelError(
                f"model {self.manifest.name!r}: packed tensor {name!r} has shape {fmt.shape}, "
                f"the model expects {list(shape)}"
            )
        for part, (part_shape, dtype) in fmt.part_specs(rows).items():
            if part == "scales" and chunk.is_prefix and fmt.exact_scale_bytes():
                continue
            tensor = parts[part]
            if (
                list(tensor.shape) != part_shape
                or str(tensor.dtype).removeprefix("torch.") != dtype
            ):
                raise SecurityError(
                    f"model {self.manifest.name!r}: part {part!r} of packed tensor {name!r} in "
                    f"chunk {chunk.name!r} is {tensor.dtype} {list(tensor.shape)}, its format "
                    f"says {dtype} {part_shape}"
                )
