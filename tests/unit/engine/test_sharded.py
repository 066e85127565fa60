"""Row-sharded lookup and projection, and the memo a tied matrix's projection leaves for the
next lookup."""

from __future__ import annotations

from typing import Any

import torch

from sw_core.chunks.manifest import ChunkInfo
from sw_core.engine.model.sharded import RowMemo, ShardedEmbedding, ShardedLinear

ROWS, COLS, SHARD_ROWS = 40, 8, 10


class Shards:
    """Serves rows ``[a, b)`` of one matrix per shard and counts what was acquired."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight
        self.acquired: list[str] = []
        self.held = 0

    def acquire(self, chunk: ChunkInfo) -> dict[str, Any]:
        self.acquired.append(chunk.name)
        self.held += 1
        a, b = chunk.rows or (0, 0)
        return {"w": self.weight[a:b]}

    def release(self, chunk: ChunkInfo) -> None:
        self.held -= 1


def _tied(memo: RowMemo | None) -> tuple[Shards, ShardedEmbedding, ShardedLinear]:
    torch.manual_seed(0)
    access = Shards(torch.randn(ROWS, COLS))
    chunks = [
        ChunkInfo(
            f"e.{i}", f"e.{i}.safetensors", 1, "0" * 64, ["w"], "embeddings", rows=[a, a + 10]
        )
        for i, a in enumerate(range(0, ROWS, SHARD_ROWS))
    ]
    lookup = ShardedEmbedding(access, "w", chunks, (ROWS, COLS), torch.float32)
    head = ShardedLinear(access, "w", chunks, (ROWS, COLS), torch.float32)
    lookup.memo = head.memo = memo
    return access, lookup, head


def test_the_projection_remembers_each_rows_top_token_and_the_lookup_reads_no_shard() -> None:
    access, lookup, head = _tied(RowMemo())
    hidden = torch.randn(3, 1, COLS)
    logits = head(hidden)
    assert torch.allclose(logits, hidden @ access.weight.T, atol=1e-5)
    top = logits.reshape(3, ROWS).argmax(-1)
    access.acquired.clear()
    rows = lookup(top.view(3, 1))
    assert access.acquired == []  # every id came from the memo
    assert torch.equal(rows, access.weight[top].view(3, 1, COLS))
    assert lookup.shards_for(top) == []
    assert lookup.memo is not None and lookup.memo.hits == 3


def test_ids_the_memo_lacks_are_read_from_their_shards_in_place() -> None:
    access, lookup, head = _tied(RowMemo())
    hidden = torch.randn(1, COLS)
    top = int(head(hidden).argmax())
    other = (top + SHARD_ROWS) % ROWS  # in another shard
    access.acquired.clear()
    ids = torch.tensor([[other, top, other]])
    rows = lookup(ids)
    assert torch.equal(rows, access.weight[ids])
    assert access.acquired == [f"e.{other // SHARD_ROWS}"]
    assert [c.name for c in lookup.shards_for(ids)] == [f"e.{other // SHARD_ROWS}"]
    assert access.held == 0


def test_without_a_memo_every_lookup_reads_its_shards() -> None:
    access, lookup, head = _tied(None)
    top = head(torch.randn(1, COLS)).argmax().view(1, 1)
    access.acquired.clear()
    assert torch.equal(lookup(top), access.weight[top])
    assert access.acquired == [f"e.{int(top) // SHARD_ROWS}"]


def test_a_projection_of_many_rows_leaves_the_memo_alone() -> None:
    memo = RowMemo()
    access, lookup, head = _tied(memo)
    top = int(head(torch.randn(1, COLS)).argmax())
    head(torch.randn(RowMemo.MAX_ROWS + 1, COLS))  # a scored sequence: not remembered
    access.acquired.clear()
    assert torch.equal(lookup(torch.tensor([top])), access.weight[[top]])
    assert access.acquired == []
