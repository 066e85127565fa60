"""Fakes for the engine's unit tests: chunk entries and manifests of given sizes (no files),
and a chunk store that records what it loaded."""

from __future__ import annotations

import asyncio
import threading

import torch

from sw_core.chunks.manifest import ChunkInfo, Manifest

KIB = 1024
MIB = 1 << 20


def planned_chunk(name: str, size_mb: float, role: str, rows: list[int] | None = None) -> ChunkInfo:
    """A chunk entry of ``size_mb`` (a row shard of ``emb.weight`` if ``rows`` is given)."""
    size = int(size_mb * MIB)
    tensors = ["emb.weight"] if rows is not None else [f"{name}.w"]
    stack, index = (None, None)
    if role == "block":
        stack, _, idx = name.rpartition(".")
        index = int(idx)
    return ChunkInfo(
        name=name,
        file=f"{name}.safetensors",
        size_bytes=size,
        sha256="0" * 64,
        tensors=tensors,
        role=role,  # type: ignore[arg-type]
        stack=stack,
        index=index,
        param_bytes=size - 100,
        rows=rows,
    )


def planned_manifest(block_mb: float = 10, n_blocks: int = 4, shard_mb: float = 8) -> Manifest:
    """A LLaMA-like manifest: 1 MiB embeddings, two row shards, ``n_blocks`` blocks, a head."""
    chunks = [
        planned_chunk("embeddings", 1, "embeddings"),
        planned_chunk("embeddings.0", shard_mb, "embeddings", rows=[0, 100]),
        planned_chunk("embeddings.1", shard_mb, "embeddings", rows=[100, 200]),
    ]
    chunks += [planned_chunk(f"layers.{i}", block_mb, "block") for i in range(n_blocks)]
    chunks.append(planned_chunk("head", 0.5, "head"))
    return Manifest("m", "llama", "LlamaForCausalLM", "float32", chunks)


def block_chunk(name: str, size_kib: int = 100) -> ChunkInfo:
    """A block chunk entry of ``size_kib``."""
    return ChunkInfo(name, f"{name}.safetensors", size_kib * KIB, "0" * 64, [f"{name}.w"], "block")


class FakeStore:
    """A loader that records what was loaded, optionally slowly or with errors."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.loaded: list[str] = []
        self.errors: dict[str, BaseException] = {}
        self.gates: dict[str, threading.Event] = {}
        self.peak_concurrent = 0
        self._running = 0

    async def load(self, chunk: ChunkInfo) -> dict[str, torch.Tensor]:
        self._running += 1
        self.peak_concurrent = max(self.peak_concurrent, self._running)
        try:
            if chunk.name in self.gates:
                await asyncio.to_thread(self.gates[chunk.name].wait)
            await asyncio.sleep(self.delay_s)
            if chunk.name in self.errors:
                raise self.errors[chunk.name]
            self.loaded.append(chunk.name)
            return {f"{chunk.name}.w": torch.zeros(4)}
        finally:
            self._running -= 1
