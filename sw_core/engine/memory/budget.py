"""Which chunks stay resident under a memory budget: a pure, load-time decision.

Rules, in order:

1. If every chunk fits -- blocks, small embeddings/head chunks, and each row-sharded tensor
   concatenated whole, plus one shard of room to concatenate through -- the model is
   *resident*: each chunk is kept after its first use.
2. Otherwise the model is *streamed*. The small embeddings/head chunks (norms, position
   embeddings, biases) are always kept. Room is set aside for the streaming window: the
   largest streamed chunk once for the one running, once more for each chunk prefetched
   ahead (``prefetch_count``), and once for the one just released, whose buffer its last
   users still hold for a moment (so the budget bounds every chunk byte the process maps,
   not only the chunks in use). What is left over keeps whole sharded tensors
   that each pass reads whole (an output head, tied or not), then blocks, as many as fit --
   a partly-resident model reads fewer bytes per pass than one streamed from scratch --
   spread evenly over the execution order from the first block on (the loader keeps
   streaming the next chunks while a kept block computes; kept blocks side by side left it
   idle for as long as they ran), and only then lookup-only embedding matrices: a lookup reads
   just the shards holding the pass's ids (Llama-3-70B: one 16 MiB shard per new token of a
   2.1 GB matrix, where a block kept instead saves 1.7 GB every pass).

A sharded tensor that is only ever looked up (``lookup_only``: an embedding matrix not tied
to an output head) is never concatenated: where the rules above would keep it whole, its
shards are kept instead and lookups gather rows from them. That costs the same memory, no
copy, and no shard of room to concatenate through.
Mixture-of-experts blocks store each expert as its own ``expert`` chunk, fetched on demand
when the router sends a token to it (only while its block is held): the window and the
smallest budget count a block plus one of its experts; experts are kept only with room
left once every block is kept.

3. A budget smaller than the kept small chunks plus the largest streamed chunk cannot run
   the model at all: :class:`~sw_core.exceptions.ModelError` naming that chunk, its size
   and the budget.

Sizes are chunk file sizes (tensor bytes plus a small header): exactly what a chunk holds
in memory while it is materialized.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from sw_core.chunks.manifest import ChunkInfo, Manifest
from sw_core.exceptions import ModelError
from sw_core.utils import mib

Mode = Literal["resident", "streaming"]


@dataclass(frozen=True)
class ResidencyPlan:
    """The outcome of :func:`plan_residency`."""

    mode: Mode
    budget_bytes: int
    #: Chunks kept after their first use (never released until ``clear_cache``).
    keep: frozenset[str]
    #: Row-sharded tensors (canonical names) concatenated once and kept whole.
    merged: frozenset[str]
    #: The smallest budget that runs this model at all.
    min_bytes: int
    #: Room set aside for streamed chunks (the running one plus prefetched ones).
    window_bytes: int

    def describe(self) -> str:
        return (
            f"{self.mode}: {len(self.keep)} chunks and {len(self.merged)} merged tensors kept, "
            f"window {mib(self.window_bytes):.1f} MiB of a {mib(self.budget_bytes):.1f} MiB budget"
        )


def sharded_tensors(manifest: Manifest) -> dict[str, list[ChunkInfo]]:
    """Canonical tensor name -> its row-shard chunks, ordered by first row."""
    groups: dict[str, list[ChunkInfo]] = defaultdict(list)
    for chunk in manifest.chunks:
        if chunk.rows is not None and chunk.role != "expert":
            if len(chunk.tensors) != 1:
                raise ModelError(
                    f"model {manifest.name!r}: row-shard chunk {chunk.name!r} must hold exactly "
                    f"one tensor, it lists {len(chunk.tensors)}"
                )
            groups[chunk.tensors[0]].append(chunk)
    for shards in groups.values():
        shards.sort(key=lambda c: (c.rows or [0])[0])
    return dict(groups)


def merged_bytes(shards: list[ChunkInfo]) -> int:
    """Bytes of a sharded tensor concatenated whole (its shards' tensor bytes)."""
    return sum(c.param_bytes or c.size_bytes for c in shards)


def plan_residency(
    manifest: Manifest,
    budget_bytes: int,
    prefetch_count: int,
    *,
    lookup_only: Iterable[str] = (),
    expand: float = 1.0,
    sizes: Mapping[str, int] | None = None,
) -> ResidencyPlan:
    """Decide what stays resident for ``manifest`` under ``budget_bytes`` (see module doc).

    ``lookup_only`` names sharded tensors used only by embedding lookups: kept as shards
    rather than concatenated. ``expand``: a chunk holds its stored bytes times this once
    materialized (chunks stored narrower than the compute dtype). ``sizes``: the bytes each
    chunk holds once materialized, when known per chunk (packed chunk sets,
    :mod:`~sw_core.engine.model.footprint`); it replaces ``expand``.
    """
    if budget_bytes <= 0:
        raise ModelError(f"memory budget must be > 0 bytes, got {budget_bytes}")
    if sizes is not None:
        manifest = _materialized(manifest, sizes)
    elif expand != 1.0:
        manifest = _widened(manifest, expand)
    shards = sharded_tensors(manifest)
    lookups = frozenset(lookup_only) & frozenset(shards)
    blocks = [c for c in manifest.chunks if c.role == "block"]
    experts = [c for c in manifest.chunks if c.role == "expert"]
    small = [c for c in manifest.chunks if c.role not in ("block", "expert") and c.rows is None]
    pinned = sum(c.size_bytes for c in small)
    to_merge = [group for name, group in shards.items() if name not in lookups]
    merge_room = max((c.size_bytes for group in to_merge for c in group), default=0)
    whole = sum(_whole_bytes(name, group, lookups) for name, group in shards.items())

    resident_bytes = pinned + sum(c.size_bytes for c in blocks + experts) + whole + merge_room
    if resident_bytes <= budget_bytes:
        kept_shards = [c for name in lookups for c in shards[name]]
        return ResidencyPlan(
            mode="resident",
            budget_bytes=budget_bytes,
            keep=frozenset(c.name for c in small + blocks + experts + kept_shards),
            merged=frozenset(shards) - lookups,
            min_bytes=_min_bytes(pinned, blocks, shards, experts),
            window_bytes=merge_room,
        )

    streamed = blocks + experts + [c for group in shards.values() for c in group]
    largest = max(streamed, key=lambda c: c.size_bytes, default=None)
    min_bytes = _min_bytes(pinned, blocks, shards, experts)
    if budget_bytes < min_bytes:
        what = (
            f"chunk {largest.name!r} is {mib(largest.size_bytes):.1f} MiB"
            if largest is not None
            else "no streamable chunk"
        )
        raise ModelError(
            f"memory_budget_mb={mib(budget_bytes):g} is too small for model {manifest.name!r}: "
            f"{what} and {mib(pinned):.1f} MiB of embeddings/head chunks stay resident; "
            f"it needs at least {mib(min_bytes):.1f} MiB (raise SW_MEMORY_BUDGET_MB, or re-chunk "
            "with a smaller max_chunk_mb)"
        )
    step = min_bytes - pinned  # the largest streamed chunk (a block with one expert)
    window = min(step * (2 + max(prefetch_count, 0)), budget_bytes - pinned)
    leftover = budget_bytes - pinned - window
    merged: set[str] = set()
    keep = {c.name for c in small}
    by_size = sorted(shards.items(), key=lambda item: merged_bytes(item[1]))
    for name, group in by_size:  # read whole every pass (an output head): as a block
        cost = _whole_bytes(name, group, lookups)
        if name not in lookups and cost <= leftover:
            merged.add(name)
            leftover -= cost
    leftover = _keep_spread(blocks, keep, leftover)
    for name, group in by_size:  # a lookup reads only the shards holding its ids: after
        cost = _whole_bytes(name, group, lookups)
        if name in lookups and cost <= leftover:
            keep.update(c.name for c in group)
            leftover -= cost
    if all(c.name in keep for c in blocks):  # experts are fetched on demand: kept last
        _keep_in_order(experts, keep, leftover)
    return ResidencyPlan(
        mode="streaming",
        budget_bytes=budget_bytes,
        keep=frozenset(keep),
        merged=frozenset(merged),
        min_bytes=min_bytes,
        window_bytes=window,
    )


def _keep_spread(blocks: list[ChunkInfo], keep: set[str], leftover: int) -> int:
    """Add as many blocks to ``keep`` as fit in ``leftover``, evenly spaced in execution
    order from the first one on; returns what is left."""
    for count in range(len(blocks), 0, -1):
        chosen = [blocks[i * len(blocks) // count] for i in range(count)]
        cost = sum(c.size_bytes for c in chosen)
        if cost <= leftover:
            keep.update(c.name for c in chosen)
            return leftover - cost
    return leftover


def _keep_in_order(chunks: list[ChunkInfo], keep: set[str], leftover: int) -> int:
    """Add chunks to ``keep`` in order while they fit in ``leftover``; returns what is left."""
    for chunk in chunks:
        if chunk.size_bytes > leftover:
            break
        keep.add(chunk.name)
        leftover -= chunk.size_bytes
    return leftover


def _widened(manifest: Manifest, expand: float) -> Manifest:
    """``manifest`` with each chunk's sizes as materialized (for planning only)."""
    chunks = [
        dataclasses.replace(
            c,
            size_bytes=int(c.size_bytes * expand),
            param_bytes=int(c.param_bytes * expand),
        )
        for c in manifest.chunks
    ]
    return dataclasses.replace(manifest, chunks=chunks)


def _materialized(manifest: Manifest, sizes: Mapping[str, int]) -> Manifest:
    """``manifest`` with each chunk's sizes as materialized, from ``sizes`` (for planning)."""
    chunks = []
    for c in manifest.chunks:
        size = sizes.get(c.name, c.size_bytes)
        overhead = max(c.size_bytes - (c.param_bytes or c.size_bytes), 0)
        chunks.append(dataclasses.replace(c, size_bytes=size, param_bytes=size - overhead))
    return dataclasses.replace(manifest, chunks=chunks)


def _whole_bytes(name: str, group: list[ChunkInfo], lookups: frozenset[str]) -> int:
    """Bytes a sharded tensor holds kept whole: its shards as they are, or concatenated."""
    return sum(c.size_bytes for c in group) if name in lookups else merged_bytes(group)


def _min_bytes(
    pinned: int,
    blocks: list[ChunkInfo],
    shards: dict[str, list[ChunkInfo]],
    experts: list[ChunkInfo],
) -> int:
    """Kept chunks plus the largest streamed step: a row shard, or a block together with
    one of its experts (an expert runs while its block is held)."""
    largest_expert: dict[tuple[str | None, int | None], int] = {}
    for c in experts:
        key = (c.stack, c.index)
        largest_expert[key] = max(largest_expert.get(key, 0), c.size_bytes)
    streamed = [c.size_bytes + largest_expert.get((c.stack, c.index), 0) for c in blocks]
    streamed += [c.size_bytes for g in shards.values() for c in g]
    return pinned + max(streamed, default=0)
