"""Embedding lookup and output projection over a row-sharded matrix, one shard at a time.

When an embedding matrix (often tied to the LM head) is larger than the memory budget
allows, these modules stand in for ``nn.Embedding`` / ``nn.Linear``: each shard holds rows
``[a, b)`` of the matrix and is acquired, used and released in turn, so only one shard is
materialized at a time. An embedding matrix that is only looked up also stays in shards
when it is kept whole (the shards are kept then): a lookup needs no concatenated copy.

- lookup: ``out[ids in [a, b)] = W[a:b][ids - a]`` -- exact, and shards that hold none of
  the ids are never fetched;
- projection: ``logits[..., a:b] = h @ W[a:b].T`` (during generation ``h`` is only the
  last position).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from sw_core.chunks.manifest import ChunkInfo
from sw_core.engine.model.packed_modules import embedding, linear


class ChunkAccess(Protocol):
    """What the sharded modules need: :class:`~sw_core.engine.memory.residency.Residency`."""

    def acquire(self, chunk: ChunkInfo) -> dict[str, Any]: ...

    def release(self, chunk: ChunkInfo) -> None: ...


class _Sharded(nn.Module):
    def __init__(
        self,
        access: ChunkAccess,
        tensor: str,
        shards: list[ChunkInfo],
        shape: tuple[int, int],
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.access = access
        self.tensor = tensor
        self.shards = shards
        self.rows, self.cols = shape
        self.dtype = dtype
        #: First row of every shard but the first: ``bucketize`` maps an id to its shard.
        self._bounds = torch.tensor([(c.rows or (0, 0))[0] for c in shards[1:]], dtype=torch.long)

    @property
    def weight(self) -> torch.Tensor:
        """A ``meta`` stand-in with the full shape (the rows are never all in memory)."""
        return torch.empty(self.rows, self.cols, dtype=self.dtype, device="meta")

    def shards_for(self, ids: torch.Tensor | None) -> list[ChunkInfo]:
        """The shards that hold at least one of ``ids`` (all of them when ``ids`` is None)."""
        if ids is None:
            return list(self.shards)
        _, present = self._which(ids.reshape(-1))
        return [self.shards[i] for i in present]

    def _which(self, flat: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """Each id's shard index, and the indices that occur (sorted)."""
        if flat.numel() == 0:
            return flat, []
        which = torch.bucketize(flat, self._bounds.to(flat.device), right=True)
        return which, torch.unique(which).tolist()

    def extra_repr(self) -> str:
        return f"{self.tensor}, rows={self.rows}, cols={self.cols}, shards={len(self.shards)}"


class ShardedEmbedding(_Sharded):
    """``nn.Embedding`` over row shards: gathers each id's row from the shard that holds it."""

    def __init__(
        self,
        access: ChunkAccess,
        tensor: str,
        shards: list[ChunkInfo],
        shape: tuple[int, int],
        dtype: torch.dtype,
        padding_idx: int | None = None,
        scale: torch.Tensor | None = None,
    ) -> None:
        super().__init__(access, tensor, shards, shape, dtype)
        self.num_embeddings, self.embedding_dim = shape
        self.padding_idx = padding_idx
        #: Gemma's scaled embeddings multiply the looked-up rows by this (cast to the dtype).
        self.scale = scale

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        if flat.numel():
            low, high = torch.aminmax(flat)
            if int(low) < 0 or int(high) >= self.rows:
                raise IndexError(f"token id out of range [0, {self.rows}) for {self.tensor}")
        which, present = self._which(flat)
        out: torch.Tensor | None = None
        for index in present:
            shard = self.shards[index]
            a = (shard.rows or (0, 0))[0]
            weight = self.access.acquire(shard)[self.tensor]
            try:
                if len(present) == 1:
                    out = embedding(flat - a, weight)
                    break
                if out is None:
                    out = torch.empty(
                        flat.numel(), self.cols, dtype=weight.dtype, device=weight.device
                    )
                pick = torch.nonzero(which == index).squeeze(1)
                out.index_copy_(0, pick, embedding(flat.index_select(0, pick) - a, weight))
            finally:
                self.access.release(shard)
                del weight  # the shard's buffer can be reused as soon as it is released
        if out is None:
            out = torch.empty(0, self.cols, dtype=self.dtype, device=ids.device)
        if self.scale is not None:
            out = out * self.scale.to(out.dtype)
        return out.view(*ids.shape, self.cols)


class ShardedLinear(_Sharded):
    """``nn.Linear`` (no bias) whose weight rows -- the output features -- come in shards."""

    def __init__(
        self,
        access: ChunkAccess,
        tensor: str,
        shards: list[ChunkInfo],
        shape: tuple[int, int],
        dtype: torch.dtype,
    ) -> None:
        super().__init__(access, tensor, shards, shape, dtype)
        self.out_features, self.in_features = shape

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = torch.empty(
            *hidden.shape[:-1], self.out_features, dtype=hidden.dtype, device=hidden.device
        )
        for shard in self.shards:
            a, b = shard.rows or (0, 0)
            weight = self.access.acquire(shard)[self.tensor]
            try:
                out[..., a:b] = linear(hidden, weight)
            finally:
                self.access.release(shard)
                del weight  # the shard's buffer can be reused as soon as it is released
        return out
