"""Mixture of experts: bytes fetched per generated token, routed experts vs whole layers.

Builds three random-init mixture-of-experts decoders shaped like the families' real routing
(Mixtral: 8 experts, 2 per token; Qwen1.5/Qwen2-MoE: 60 experts, 4 per token, plus a shared
expert; Qwen3-MoE: 128 experts, 8 per token), small otherwise (hidden 128, expert
intermediate 128, 2 layers), chunks each one (one chunk per expert) and runs greedy
generation through the streaming engine under a memory budget that keeps no expert, so every
step fetches the experts its router picks. For batch 1, 8 and 32 it reports, per decode
step and per generated token, the expert bytes fetched against what streaming whole layers
(every expert, as AirLLM streams Mixtral) would fetch. Decode steps are isolated by running
the same batch twice, with 1 and with ``1 + steps`` new tokens, and taking the difference.

Random routers spread tokens more evenly than trained ones (which favour some experts), so
the batch-8/32 figures are close to the worst case: ``1 - (1 - k/E)^B`` of the experts.

Usage: ``.venv/bin/python bench/moe.py [--steps 8]`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers

from sw_core.chunks.chunker import chunk_model
from sw_core.chunks.manifest import ChunkInfo, Manifest
from sw_core.engine import StoreChunkSource, StreamingEngine
from sw_core.storage import FilesystemBackend

BATCHES = (1, 8, 32)
_SHAPE: dict[str, Any] = dict(
    vocab_size=4096,
    hidden_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=256,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
)


def models() -> dict[str, torch.nn.Module]:
    """The three random-init models (fixed seed)."""
    configs = {
        "mixtral (8 experts, top-2)": transformers.MixtralForCausalLM(
            transformers.MixtralConfig(**_SHAPE, num_local_experts=8, num_experts_per_tok=2)
        ),
        "qwen2_moe (60 experts, top-4)": transformers.Qwen2MoeForCausalLM(
            transformers.Qwen2MoeConfig(
                **_SHAPE,
                num_experts=60,
                num_experts_per_tok=4,
                moe_intermediate_size=128,
                shared_expert_intermediate_size=256,
            )
        ),
        "qwen3_moe (128 experts, top-8)": transformers.Qwen3MoeForCausalLM(
            transformers.Qwen3MoeConfig(
                **_SHAPE,
                head_dim=32,
                num_experts=128,
                num_experts_per_tok=8,
                moe_intermediate_size=128,
            )
        ),
    }
    return {name: model.eval() for name, model in configs.items()}


class Counting(StoreChunkSource):
    """A folder source that adds up the bytes of the expert chunks it serves."""

    def __init__(self, folder: Path) -> None:
        super().__init__(FilesystemBackend(folder))
        self.expert_bytes = 0
        self.other_bytes = 0

    async def fetch(self, chunk: ChunkInfo) -> bytearray | memoryview:
        data = await super().fetch(chunk)
        if chunk.role == "expert":
            self.expert_bytes += len(data)
        else:
            self.other_bytes += len(data)
        return data


async def generated_bytes(folder: Path, budget_mb: int, batch: int, new: int) -> tuple[int, int]:
    """(expert bytes, other bytes) fetched generating ``new`` tokens for ``batch`` prompts."""
    source = Counting(folder)
    # a deep prefetch makes the window take the whole budget: nothing but the embeddings and
    # head stays resident, so every expert a step needs is fetched in that step
    engine = await StreamingEngine.open(
        source, memory_budget_mb=budget_mb, prefetch_count=64, max_batch_size=max(BATCHES)
    )
    try:
        experts = [c for c in engine.manifest.chunks if c.role == "expert"]
        assert not any(c.name in engine.plan.keep for c in experts), "budget keeps experts"
        generator = torch.Generator().manual_seed(batch)
        prompts = [torch.randint(2, 4096, (8,), generator=generator).tolist() for _ in range(batch)]
        requests = [{"input_ids": p, "max_new_tokens": new} for p in prompts]
        results = await engine.run_async("generate", requests)
        assert all(len(r["token_ids"]) == new for r in results)  # no early EOS skews steps
        return source.expert_bytes, source.other_bytes
    finally:
        engine.close()


def budget_for(manifest: Manifest) -> int:
    """A budget in MiB above the smallest that runs the model: the embeddings and head plus
    room for two blocks with an expert each."""
    small = sum(c.size_bytes for c in manifest.chunks if c.role in ("embeddings", "head"))
    blocks = [c.size_bytes for c in manifest.chunks if c.role == "block"]
    experts = [c.size_bytes for c in manifest.chunks if c.role == "expert"]
    need = small + 2 * (max(blocks) + max(experts))
    return need // (1 << 20) + 1


async def main(steps: int) -> None:
    torch.manual_seed(0)
    print(f"decode steps measured: {steps} (generate 1+{steps} minus generate 1)\n")
    print("| model | batch | expert MB / step | whole layers MB / step | fetched | MB / token |")
    print("|---|---|---|---|---|---|")
    for name, model in models().items():
        with tempfile.TemporaryDirectory(prefix="sw-moe-") as tmp:
            folder = Path(tmp)
            manifest = chunk_model(model, folder, max_chunk_mb=0)
            all_experts = sum(c.size_bytes for c in manifest.chunks if c.role == "expert")
            budget_mb = budget_for(manifest)
            for batch in BATCHES:
                one, _ = await generated_bytes(folder, budget_mb, batch, 1)
                many, _ = await generated_bytes(folder, budget_mb, batch, 1 + steps)
                per_step = (many - one) / steps
                print(
                    f"| {name} | {batch} | {per_step / 1e6:.2f} | {all_experts / 1e6:.2f} | "
                    f"{per_step / all_experts:.0%} | {per_step / batch / 1e6:.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="decode steps measured")
    asyncio.run(main(parser.parse_args().steps))
