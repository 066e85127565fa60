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

A matrix tied to the output head is read whole at the end of every decode step, and the
next step's lookup needs a row of it again: the sampled token's. :class:`RowMemo` keeps,
for each row of the projection, the matrix row of its highest logit, copied while its
shard was in memory: greedy decoding's next token. A lookup it serves reads no shard
(SmolLM2 packed, one request at 25 %: one 2.5 MB shard fewer a token); any other token
is looked up in its shard as before.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch import nn

from sw_core.chunks.manifest import ChunkInfo
from sw_core.engine.model.packed import PackedWeight
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
        #: Shared by a tied matrix's lookup and projection (:class:`RowMemo`).
        self.memo: RowMemo | None = None

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


class RowMemo:
    """The matrix rows of the last projection's top logits, by token id (see module doc).

    Holds one row per projected row, only for projections of at most :attr:`MAX_ROWS`
    rows (decode steps; a scored sequence's logits would hold thousands). The rows are
    the lookup's own result for those ids, so a hit returns exactly what the shard would.
    """

    MAX_ROWS = 256

    def __init__(self) -> None:
        self._rows: dict[int, torch.Tensor] = {}
        self.hits = 0

    def remember(self, ids: torch.Tensor, rows: torch.Tensor) -> None:
        """Replace the memo with ``rows[i]`` for token ``ids[i]``."""
        self._rows = {int(i): rows[n] for n, i in enumerate(ids.tolist()) if i >= 0}

    def rows_for(self, flat: torch.Tensor) -> list[torch.Tensor | None]:
        """Each id's row, or None where the memo lacks it."""
        if not self._rows or flat.numel() > self.MAX_ROWS:
            return [None] * flat.numel()
        return [self._rows.get(i) for i in flat.tolist()]


class _Best:
    """Running best logit per projected row across shards, with its matrix row."""

    def __init__(self, n: int, device: torch.device) -> None:
        self.value = torch.full((n,), -math.inf, dtype=torch.float32, device=device)
        self.ids = torch.full((n,), -1, dtype=torch.long, device=device)
        self.rows: torch.Tensor | None = None

    def update(self, logits: torch.Tensor, a: int, weight: torch.Tensor | PackedWeight) -> None:
        """Take shard ``[a, b)``'s logits ``[n, b - a]`` into account (``weight``: its rows)."""
        value, index = logits.float().max(-1)
        pick = torch.nonzero(value > self.value).squeeze(1)
        if not pick.numel():
            return
        rows = embedding(index[pick], weight)
        if self.rows is None:
            self.rows = rows.new_empty(self.value.numel(), rows.shape[-1])
        self.value[pick] = value[pick]
        self.ids[pick] = index[pick] + a
        self.rows[pick] = rows


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
        known = self.memo.rows_for(flat) if self.memo is not None else []
        missing = [n for n, row in enumerate(known) if row is None]
        if not known or len(missing) == len(known):
            return self._scaled(self._looked_up(flat)).view(*ids.shape, self.cols)
        assert self.memo is not None
        self.memo.hits += len(known) - len(missing)
        found = iter(self._looked_up(flat[missing]) if missing else ())
        rows = [row if row is not None else next(found) for row in known]
        return self._scaled(torch.stack(rows)).view(*ids.shape, self.cols)

    def shards_for(self, ids: torch.Tensor | None) -> list[ChunkInfo]:
        """The shards a lookup of ``ids`` reads: none for ids the memo holds."""
        if ids is None or self.memo is None:
            return super().shards_for(ids)
        flat = ids.reshape(-1)
        known = self.memo.rows_for(flat)
        return super().shards_for(flat[[n for n, row in enumerate(known) if row is None]])

    def _scaled(self, out: torch.Tensor) -> torch.Tensor:
        return out * self.scale.to(out.dtype) if self.scale is not None else out

    def _looked_up(self, flat: torch.Tensor) -> torch.Tensor:
        """Rows ``flat`` (ids in range) read from their shards: ``[len(flat), cols]``."""
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
            out = torch.empty(0, self.cols, dtype=self.dtype, device=flat.device)
        return out


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
        n = out[..., 0].numel()
        best = _Best(n, out.device) if self.memo is not None and 0 < n <= RowMemo.MAX_ROWS else None
        for shard in self.shards:
            a, b = shard.rows or (0, 0)
            weight = self.access.acquire(shard)[self.tensor]
            try:
                out[..., a:b] = linear(hidden, weight)
                if best is not None:
                    best.update(out[..., a:b].reshape(n, b - a), a, weight)
            finally:
                self.access.release(shard)
                del weight  # the shard's buffer can be reused as soon as it is released
        if best is not None and best.rows is not None:
            assert self.memo is not None
            self.memo.remember(best.ids, best.rows)
        return out
