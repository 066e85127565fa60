"""Hooks that materialize each part of the model just before it runs.

The model keeps transformers' own ``forward`` -- masks, rotary embeddings, T5's position
bias, KV caches all come from transformers, so results match the in-memory model. What
changes is where weights come from: every *unit* (a block, or a small module outside the
blocks such as a norm or the pooler) gets a forward pre-hook that acquires its chunks from
the :class:`~sw_core.engine.memory.residency.Residency` and checks that nothing it will use is
still on ``meta``, and a forward hook (``always_call``, so errors release too) that
releases them. Row-sharded matrices are either concatenated once and kept (when the plan
says so) or served by :mod:`~sw_core.engine.model.sharded` modules that stream shard by shard.

Units are listed in module registration order, corrected where the model's structure says
otherwise (a final norm registered before its blocks, as in OPT); :meth:`Runtime.schedule` turns them into the chunk order the prefetcher
follows.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from sw_core.chunks.manifest import ChunkInfo
from sw_core.engine.memory.budget import ResidencyPlan
from sw_core.engine.memory.residency import Residency
from sw_core.engine.model.experts import StreamedExperts
from sw_core.engine.model.footprint import merged_bytes
from sw_core.engine.model.packed import PackedWeight
from sw_core.engine.model.packed_modules import PackedEmbedding, PackedLinear, PackedModule
from sw_core.engine.model.sharded import RowMemo, ShardedEmbedding, ShardedLinear, _Sharded
from sw_core.engine.model.skeleton import Skeleton
from sw_core.exceptions import ModelError


@dataclass
class Unit:
    """A module that needs chunks before it runs."""

    path: str
    module: nn.Module
    is_block: bool
    #: Whole chunks it acquires and releases around its forward.
    chunks: list[ChunkInfo] = field(default_factory=list)
    #: Row-sharded tensors it needs concatenated (merged) before it runs.
    merged: list[str] = field(default_factory=list)
    #: A sharded module streams these itself (no hooks).
    sharded: _Sharded | None = None
    #: The skeleton's ``generation`` when every weight of the unit was last seen bound.
    checked_at: int = -1


class Runtime:
    """Units of one skeleton, their hooks, and the merged (concatenated) sharded tensors."""

    def __init__(self, skeleton: Skeleton, residency: Residency, plan: ResidencyPlan) -> None:
        self.skeleton = skeleton
        self.residency = residency
        self.plan = plan
        self._merge_lock = threading.Lock()
        self.merged: dict[str, torch.Tensor | PackedWeight] = {}
        self._replace_streamed_matrices()
        skeleton.refresh_places()
        self.units = _run_order(self._find_units(), skeleton.structure.final_norms)
        self._handles: list[Any] = []
        for unit in self.units:
            if unit.sharded is None:
                self._handles.append(unit.module.register_forward_pre_hook(self._pre(unit)))
                self._handles.append(
                    unit.module.register_forward_hook(self._post(unit), always_call=True)
                )
        head = skeleton.structure.head
        if head is not None:
            module = skeleton.model.get_submodule(head)
            self._handles.append(module.register_forward_pre_hook(_contiguous_input))

    # ---------------------------------------------------------------- construction
    def _replace_streamed_matrices(self) -> None:
        model = self.skeleton.model
        name = self.skeleton.manifest.name
        self._replace_experts()
        for spec in self.skeleton.tensors.values():
            if not spec.sharded or spec.experts or spec.name in self.plan.merged:
                continue
            shape = (spec.shape[0], spec.shape[1])
            streamed: list[_Sharded] = []
            for owner in list(spec.owners):
                path, _, attr = owner.rpartition(".")
                module = model.get_submodule(path)
                if attr != "weight":
                    raise ModelError(
                        f"model {name!r}: cannot stream sharded tensor {owner!r} (not a weight)"
                    )
                lookup = isinstance(module, PackedEmbedding) or (
                    isinstance(module, nn.Embedding) and _plain_lookup(module)
                )
                if lookup:
                    new: _Sharded = ShardedEmbedding(
                        self.residency,
                        spec.name,
                        spec.chunks,
                        shape,
                        spec.dtype,
                        padding_idx=getattr(module, "padding_idx", None),
                        scale=module._buffers.get("embed_scale"),
                    )
                elif isinstance(module, nn.Linear | PackedLinear) and module.bias is None:
                    new = ShardedLinear(self.residency, spec.name, spec.chunks, shape, spec.dtype)
                else:
                    raise ModelError(
                        f"model {name!r}: cannot stream sharded tensor {owner!r} held by a "
                        f"{type(module).__name__}; raise the memory budget so it stays whole"
                    )
                model.set_submodule(path, new)
                streamed.append(new)
            if {type(m) for m in streamed} == {ShardedEmbedding, ShardedLinear}:
                memo = RowMemo()  # tied: the head's top rows serve the next lookup
                for sharded in streamed:
                    sharded.memo = memo

    def _replace_experts(self) -> None:
        """Fused experts modules stored one expert per chunk -> :class:`StreamedExperts`."""
        groups: dict[str, list[ChunkInfo]] = {}
        for chunk in self.skeleton.manifest.chunks:
            if chunk.role == "expert":
                groups.setdefault(chunk.name.rpartition(".")[0], []).append(chunk)
        model = self.skeleton.model
        for path, chunks in groups.items():
            chunks.sort(key=lambda c: (c.rows or [0])[0])
            params = {t.rpartition(".")[2]: t for t in chunks[0].tensors}
            inner = model.get_submodule(path)
            model.set_submodule(path, StreamedExperts(self.residency, inner, chunks, params))

    def _find_units(self) -> list[Unit]:
        skeleton = self.skeleton
        blocks = {c.name: c for c in skeleton.manifest.chunks if c.role == "block"}
        owner_spec = {o: spec for spec in skeleton.tensors.values() for o in spec.owners}
        units: list[Unit] = []
        inside: str | None = None
        for path, module in skeleton.model.named_modules():
            if inside is not None and path.startswith(inside):
                continue
            if path in blocks:
                units.append(Unit(path, module, True, chunks=[blocks[path]]))
                inside = path + "."
                continue
            if isinstance(module, _Sharded):
                units.append(Unit(path, module, False, sharded=module))
                inside = path + "."
                continue
            unit = Unit(path, module, False)
            own = [f"{path}.{n}" if path else n for n in module._parameters]
            own += [
                f"{path}.{n}" if path else n
                for n in module._buffers
                if n not in module._non_persistent_buffers_set
            ]
            if isinstance(module, PackedModule):
                own.append(f"{path}.weight" if path else "weight")
            for full in own:
                spec = owner_spec.get(full)
                if spec is None:
                    continue
                if spec.sharded:
                    if spec.name not in unit.merged:
                        unit.merged.append(spec.name)
                elif spec.chunks[0] not in unit.chunks:
                    unit.chunks.append(spec.chunks[0])
            if unit.chunks or unit.merged:
                units.append(unit)
        return units

    # ---------------------------------------------------------------- hooks
    def _pre(self, unit: Unit) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            acquired: list[ChunkInfo] = []
            try:
                for name in unit.merged:
                    self.ensure_merged(name)
                for chunk in unit.chunks:
                    self.residency.acquire(chunk)
                    acquired.append(chunk)
                missing = self._unbound(unit)
            except BaseException:
                for chunk in acquired:
                    self.residency.release(chunk)
                raise
            if missing:
                for chunk in acquired:
                    self.residency.release(chunk)
                what = "block" if unit.is_block else "module"
                raise ModelError(
                    f"model {self.skeleton.manifest.name!r}: {what} {unit.path!r} would run with "
                    f"uninitialized weights {missing[:3]} (chunks "
                    f"{[c.name for c in unit.chunks]} did not provide them)"
                )

        return hook

    def _unbound(self, unit: Unit) -> list[str]:
        """The unit's weights still on ``meta``; not walked again while no tensor of the
        skeleton was set since they were all seen bound (a resident model's every call)."""
        generation = self.skeleton.generation
        if unit.checked_at == generation:
            return []
        missing = self.skeleton.meta_tensors(unit.module, recurse=unit.is_block)
        if not missing:
            unit.checked_at = generation
        return missing

    def _post(self, unit: Unit) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            for chunk in unit.chunks:
                self.residency.release(chunk)

        return hook

    def ensure_merged(self, tensor: str) -> torch.Tensor | PackedWeight:
        """Concatenate a sharded tensor's shards once (through the streaming window) and keep
        it in every place that holds it."""
        with self._merge_lock:
            if tensor in self.merged:
                return self.merged[tensor]
            spec = self.skeleton.tensors[tensor]
            # as the plan counts it: the shards' bytes as materialized (stored x expand, or
            # per chunk for packed sets), not the skeleton's dtype (float32 whatever the
            # compute dtype)
            residency = self.residency
            n_bytes = merged_bytes(spec.chunks, residency.sizes, residency.expand)
            key = f"merged:{tensor}"
            residency.reserve(key, n_bytes, what=f"tensor {tensor!r} concatenated")
            try:
                full: torch.Tensor | PackedWeight | None = None
                packed: list[PackedWeight] = []
                for shard in spec.chunks:
                    part = residency.acquire(shard)[tensor]
                    try:
                        if isinstance(part, PackedWeight):
                            packed.append(part)
                            continue
                        if full is None:
                            full = _empty(spec.shape, part.dtype, part.device)
                        a, b = shard.rows or (0, 0)
                        assert isinstance(full, torch.Tensor)
                        full[a:b].copy_(part)
                    finally:
                        residency.release(shard)
                if packed:
                    full = PackedWeight.concat(packed)
            except BaseException:
                residency.unreserve(key)
                raise
            assert full is not None
            self.merged[tensor] = full
            self.skeleton.set_tensor(tensor, full)
            return full

    def drop_merged(self) -> None:
        """Forget concatenated tensors (``clear_cache``); the residency frees their bytes."""
        with self._merge_lock:
            for tensor in self.merged:
                self.skeleton.clear_tensor(tensor)
            self.merged.clear()

    # ---------------------------------------------------------------- prefetch schedule
    def schedule(
        self, prefixes: tuple[str, ...] | None = None, ids: torch.Tensor | None = None
    ) -> list[ChunkInfo]:
        """Chunks in the order a pass over the units under ``prefixes`` acquires them.

        ``ids`` (the pass's token ids) narrows embedding lookups to the shards that hold
        them. Kept chunks already resident are left out: they cost neither I/O nor window.
        """
        out: list[ChunkInfo] = []
        merging: set[str] = set()
        for unit in self.units:
            if prefixes is not None and not _under(unit.path, prefixes):
                continue
            if unit.sharded is not None:
                lookup = isinstance(unit.sharded, ShardedEmbedding)
                out += unit.sharded.shards_for(ids if lookup else None)
                continue
            for tensor in unit.merged:
                if tensor not in self.merged and tensor not in merging:
                    merging.add(tensor)  # concatenated at its first use only
                    out += self.skeleton.tensors[tensor].chunks
            out += unit.chunks
        deduped: list[ChunkInfo] = []
        for chunk in out:
            if deduped and deduped[-1].name == chunk.name:
                continue
            if chunk.name in self.plan.keep and self.residency.is_resident(chunk.name):
                continue
            deduped.append(chunk)
        return deduped

    def chunk_names(self) -> list[str]:
        """Every chunk in execution order (each once)."""
        seen: dict[str, None] = {}
        for chunk in self.schedule():
            seen.setdefault(chunk.name, None)
        for chunk in self.skeleton.manifest.chunks:
            seen.setdefault(chunk.name, None)
        return list(seen)


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialized tensor; on CPU over a buffer that may use transparent huge pages
    (a fresh 113 MB matrix faults in several times faster than with ``torch.empty``)."""
    if device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    n_bytes = math.prod(shape) * dtype.itemsize
    if n_bytes == 0:
        return torch.empty(shape, dtype=dtype)
    # numpy asks for huge pages on big buffers (as sw_core.cache.allocate_buffer does)
    return torch.frombuffer(np.empty(n_bytes, dtype=np.uint8).data, dtype=dtype).view(shape)


def _contiguous_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The head's input made contiguous. transformers hands the head the last positions
    sliced out of the hidden states (``logits_to_keep``): for a batch of several prompts a
    non-contiguous (B, 1, D) view, which sends torch's CPU matmul down a broadcasting path.
    Measured for one 14563 x 576 head shard and 16 rows: 52 ms instead of 3 in float32,
    415 ms and 257 MB of scratch instead of 9.5 ms in bfloat16."""
    if args and isinstance(args[0], torch.Tensor) and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None


def _plain_lookup(module: nn.Embedding) -> bool:
    """A lookup that :class:`ShardedEmbedding` reproduces: ``nn.Embedding``'s own forward,
    or Gemma's scaled embedding (the lookup times ``embed_scale``)."""
    if type(module).forward is nn.Embedding.forward:
        return True
    return isinstance(module._buffers.get("embed_scale"), torch.Tensor)


def _run_order(units: list[Unit], final_norms: dict[str, str]) -> list[Unit]:
    """Units in the order they run: a final norm registered before its block list moves
    right after that list's last block."""
    moved = [u for u in units if u.path in final_norms]
    order = [u for u in units if u.path not in final_norms]
    for unit in moved:
        stack = final_norms[unit.path]
        last = max(
            (i for i, u in enumerate(order) if u.is_block and _under(u.path, (stack,))),
            default=len(order) - 1,
        )
        order.insert(last + 1, unit)
    return order


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + ".") for p in prefixes)
