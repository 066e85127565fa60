"""Which tensors go into which chunk: block lists, tied weights, row shards.

Pure planning over state-dict key names and shapes (nothing is read or written here):
one chunk per transformer block, ``embeddings`` for what runs before the blocks, ``head``
for what follows them, and big 2-D tensors of those two split into row shards of at most
``max_chunk_bytes``. :mod:`sw_core.chunks.chunker` writes the plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from sw_core.chunks.manifest import Role
from sw_core.exceptions import ModelError
from sw_core.quant.formats import PackedFormat


@dataclass
class ChunkPlan:
    """One chunk to write: its name, role, the state-dict keys it holds (or the row range
    of the one tensor it shards)."""

    name: str
    role: Role
    tensors: list[str] = field(default_factory=list)
    stack: str | None = None
    index: int | None = None
    rows: list[int] | None = None

    @property
    def file(self) -> str:
        return f"{self.name}.safetensors"


def block_stacks(model: torch.nn.Module) -> list[str]:
    """Module paths of the transformer block lists (``encoder.layer``, ``model.layers``...).

    A block list is a ``ModuleList`` whose children are all of one class and hold
    parameters, and which is not itself inside another block list.
    """
    stacks: list[str] = []
    for path, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) == 0:
            continue
        if any(path.startswith(stack + ".") for stack in stacks):
            continue
        classes = {type(child) for child in module}
        if len(classes) == 1 and all(any(True for _ in c.parameters()) for c in module):
            stacks.append(path)
    if not stacks:
        raise ModelError(f"{type(model).__name__}: found no list of transformer blocks to chunk")
    return stacks


def tied_parameters(model: torch.nn.Module) -> dict[str, str]:
    """``{alias: canonical}`` for parameters that share one tensor (canonical = first seen)."""
    first: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        canonical = first.setdefault(id(param), name)
        if canonical != name:
            tied[name] = canonical
    return tied


def plan_chunks(
    ordered_keys: list[str],
    shapes: dict[str, tuple[list[int], torch.dtype]],
    stacks: list[str],
    max_chunk_bytes: int,
    packed: Mapping[str, PackedFormat] | None = None,
) -> list[ChunkPlan]:
    """Group state-dict keys (already in module order, tied aliases removed) into chunks.

    ``packed``: the formats of tensors stored packed; their row shards are sized by their
    stored bytes and cut on the packed layout's blocks of rows."""
    formats = packed or {}
    blocks: dict[str, ChunkPlan] = {}
    embeddings = ChunkPlan("embeddings", "embeddings")
    head = ChunkPlan("head", "head")
    seen_block = False
    experts: dict[str, list[str]] = {}  # block name -> its fused expert tensors
    for key in ordered_keys:
        owner = _block_of(key, stacks)
        if owner is not None:
            stack, index = owner
            name = f"{stack}.{index}"
            plan = blocks.setdefault(name, ChunkPlan(name, "block", stack=stack, index=index))
            if is_fused_expert(key, shapes[key][0]):
                experts.setdefault(name, []).append(key)
            else:
                plan.tensors.append(key)
            seen_block = True
        else:
            (head if seen_block else embeddings).tensors.append(key)
    out: list[ChunkPlan] = []
    out += _shard_role(embeddings, shapes, max_chunk_bytes, formats)
    for name, plan in blocks.items():
        out.append(plan)
        out += _expert_plans(plan, experts.get(name, []), shapes)
    out += _shard_role(head, shapes, max_chunk_bytes, formats)
    return out


def is_fused_expert(key: str, shape: list[int]) -> bool:
    """A parameter of a fused experts module (``...mlp.experts.gate_up_proj`` of shape
    ``[num_experts, ...]``, as transformers 5 stores mixture-of-experts weights)."""
    module, _, _ = key.rpartition(".")
    return module.rsplit(".", 1)[-1] == "experts" and len(shape) >= 2


def _expert_plans(
    block: ChunkPlan, keys: list[str], shapes: dict[str, tuple[list[int], torch.dtype]]
) -> list[ChunkPlan]:
    """One ``expert`` chunk per expert of each experts module of ``block``: rows ``[e, e+1)``
    of every fused tensor of that module."""
    modules: dict[str, list[str]] = {}
    for key in keys:
        modules.setdefault(key.rpartition(".")[0], []).append(key)
    plans: list[ChunkPlan] = []
    for module, tensors in modules.items():
        counts = {shapes[k][0][0] for k in tensors}
        if len(counts) != 1:
            raise ModelError(f"{module}: fused expert tensors disagree on the expert count")
        for e in range(counts.pop()):
            plan = ChunkPlan(f"{module}.{e}", "expert", list(tensors), rows=[e, e + 1])
            plan.stack, plan.index = block.stack, block.index
            plans.append(plan)
    return plans


def _block_of(key: str, stacks: list[str]) -> tuple[str, int] | None:
    for stack in stacks:
        prefix = stack + "."
        if key.startswith(prefix):
            index, _, _ = key[len(prefix) :].partition(".")
            if index.isdigit():
                return stack, int(index)
    return None


def _shard_role(
    plan: ChunkPlan,
    shapes: dict[str, tuple[list[int], torch.dtype]],
    max_chunk_bytes: int,
    formats: Mapping[str, PackedFormat],
) -> list[ChunkPlan]:
    """Split the role's big 2-D tensors into row shards; small tensors stay in ``plan``."""
    shards: list[ChunkPlan] = []
    keep: list[str] = []
    for key in plan.tensors:
        shape, dtype = shapes[key]
        fmt = formats.get(key)
        n_bytes = fmt.stored_bytes() if fmt else numel(shape) * dtype.itemsize
        shardable = fmt is None or not fmt.transposed
        if (
            max_chunk_bytes
            and shardable
            and len(shape) == 2
            and n_bytes > max_chunk_bytes
            and shape[0] > 1
        ):
            row_bytes = fmt.row_bytes() if fmt else shape[1] * dtype.itemsize
            align = fmt.row_align if fmt else 1
            rows_per_shard = max(align, max_chunk_bytes // row_bytes // align * align)
            for start in range(0, shape[0], rows_per_shard):
                end = min(shape[0], start + rows_per_shard)
                name = f"{plan.role}.{len(shards)}"
                shards.append(ChunkPlan(name, plan.role, [key], rows=[start, end]))
        else:
            keep.append(key)
    plan.tensors = keep
    return ([plan] if keep else []) + shards


def numel(shape: list[int]) -> int:
    """Number of elements of a tensor of ``shape``."""
    n = 1
    for d in shape:
        n *= d
    return n
