"""Reused chunk buffers: the engine's :class:`BufferPool` hands a buffer out again only when
nothing references the bytes of its last lease, so no live tensor ever sees new bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from sw_core.cache import ChunkCache
from sw_core.engine import StreamingEngine
from sw_core.engine.compute import WIDE_PASS_ROWS, intra_op_threads
from sw_core.engine.memory import buffers as buffers_module
from sw_core.engine.memory.buffers import BufferPool
from sw_core.exceptions import SecurityError
from tests.support.engine import cached_source, chunk_cache, id_rows, reference_generate
from tests.support.models import chunk_small

MIB = 1 << 20
#: Tensors of streamed chunks the test keeps alive while the engine streams on.
HOLD = 2


# ------------------------------------------------------------------------- the pool alone
def test_a_buffer_is_reused_only_after_every_tensor_over_it_is_gone() -> None:
    pool = BufferPool(64 * MIB)
    view = pool.take(3 * MIB)
    tensor = torch.frombuffer(view[4096 : 8 * 4096], dtype=torch.float32).view(-1, 8)
    tensor.fill_(1.5)
    row = tensor[3]  # a view of the tensor: shares its storage
    del view, tensor
    other = pool.take(3 * MIB)  # the first buffer is still referenced through ``row``
    memoryview(other)[:] = b"\xff" * other.nbytes
    assert pool.stats.mapped == 2 and pool.stats.reused == 0
    assert torch.equal(row, torch.full((8,), 1.5))
    del other
    again = pool.take(3 * MIB)  # the second buffer is free
    assert pool.stats.reused == 1 and pool.stats.mapped == 2
    memoryview(again)[:] = b"\x00" * again.nbytes
    assert torch.equal(row, torch.full((8,), 1.5))
    del row, again
    pool.take(3 * MIB)
    pool.take(3 * MIB)
    assert pool.stats.reused == 3 and pool.stats.mapped == 2


def test_the_pool_stays_within_its_capacity() -> None:
    pool = BufferPool(8 * MIB)
    held = [pool.take(3 * MIB), pool.take(3 * MIB)]  # 4 MiB each, rounded to huge pages
    assert pool.pooled_bytes == 8 * MIB
    extra = pool.take(3 * MIB)  # every buffer in use, no room: a plain buffer
    assert pool.stats.unpooled == 1 and pool.pooled_bytes == 8 * MIB
    del held, extra
    big = pool.take(7 * MIB)  # free buffers are unmapped to make room
    assert pool.stats.unmapped == 2 and pool.pooled_bytes == 8 * MIB and big.nbytes == 7 * MIB
    assert pool.take(100 * MIB).nbytes == 100 * MIB  # larger than the capacity: unpooled
    assert pool.pooled_bytes <= pool.capacity_bytes


def test_a_cache_read_into_a_lease_keeps_it_alive(redis_url: str) -> None:
    cache = chunk_cache(redis_url)
    try:
        import hashlib

        data = bytes(range(256)) * 8192
        chunk_id = hashlib.sha256(data).hexdigest()
        cache.put(chunk_id, data)
        pool = BufferPool(16 * MIB)
        got = cache.get(chunk_id, out=pool.take(len(data)))
        assert got is not None and bytes(got) == data
        pool.take(len(data))
        assert pool.stats.reused == 0  # ``got`` still refers to the first buffer
        del got
        pool.take(len(data))
        assert pool.stats.reused == 1
    finally:
        cache.close()


# ------------------------------------------------------------------------- in the engine
async def _stream_holding_tensors(
    tmp_path: Path, cache: ChunkCache
) -> tuple[list[list[int]], list[list[int]], list[tuple[torch.Tensor, torch.Tensor]], Any]:
    """Greedy generation with a streaming budget while a caller keeps references to the
    tensors of every other streamed chunk of the first pass (with a snapshot of each)."""
    model, manifest = chunk_small("llama", tmp_path)
    engine = await StreamingEngine.open(
        cached_source(tmp_path, manifest, cache), memory_budget_mb=2, prefetch_count=2
    )
    held: list[tuple[torch.Tensor, torch.Tensor]] = []
    bind = engine.residency._bind
    loads = 0

    def spying(chunk: Any, tensors: dict[str, torch.Tensor]) -> None:
        """Keeps tensors the engine binds into the model (what its loads handed out)."""
        nonlocal loads
        bind(chunk, tensors)
        loads += 1
        if loads % 2 == 0 and len(held) < HOLD and chunk.name not in engine.plan.keep:
            held.extend((t, t.clone()) for t in tensors.values())

    engine.residency._bind = spying
    try:
        assert engine.plan.mode == "streaming"
        rows = id_rows([6, 4])
        out = await engine.run_async(
            "generate", [{"input_ids": r, "max_new_tokens": 6} for r in rows]
        )
        expected = reference_generate(model, rows, 6, engine.pad_id)
        return [o["token_ids"] for o in out], expected, held, engine
    finally:
        engine.close()


async def test_no_live_tensor_sees_a_reused_buffers_new_bytes(
    tmp_path: Path, redis_url: str
) -> None:
    cache = chunk_cache(redis_url)
    try:
        tokens, expected, held, engine = await _stream_holding_tensors(tmp_path, cache)
    finally:
        cache.close()
    assert tokens == expected
    assert engine.buffers.stats.reused > 10  # buffers really were reused ...
    assert held
    for tensor, snapshot in held:  # ... but never one a held tensor still lives on
        assert torch.equal(tensor, snapshot)


async def test_the_check_above_fails_when_liveness_is_ignored(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reusing buffers regardless of their lease corrupts the held tensors, or the bytes of
    a chunk still being read (which the engine then refuses): the test above can tell."""
    monkeypatch.setattr(buffers_module._Buffer, "free", lambda self: True)
    cache = chunk_cache(redis_url)
    try:
        _, _, held, _ = await _stream_holding_tensors(tmp_path, cache)
    except SecurityError as exc:
        assert "cannot be loaded" in str(exc)  # torn bytes: wrong tensors, sizes or layout
        return
    finally:
        cache.close()
    assert any(not torch.equal(tensor, snapshot) for tensor, snapshot in held)


# ------------------------------------------------------------------------- threads
async def test_a_streaming_engine_sizes_its_compute_threads_and_leaves_the_callers(
    tmp_path: Path,
) -> None:
    chunk_small("llama", tmp_path)
    caller_threads = torch.get_num_threads()
    engine = await StreamingEngine.open(str(tmp_path), memory_budget_mb=2, prefetch_count=1)
    try:
        assert engine.plan.mode == "streaming"
        await engine.run_async("generate", [{"input_ids": [1, 2, 3], "max_new_tokens": 2}])
        seen = await engine.run_on_compute(torch.get_num_threads)
        assert seen == intra_op_threads(0, caller_threads, streaming=True)
        engine.settings = engine.settings.replace(compute_threads=caller_threads + 1)
        await engine.run_async("generate", [{"input_ids": [1, 2, 3], "max_new_tokens": 2}])
        assert await engine.run_on_compute(torch.get_num_threads) == caller_threads + 1
        assert torch.get_num_threads() == caller_threads  # the caller's thread is untouched
    finally:
        engine.close()


@pytest.mark.parametrize("quantize", [None, "int4"])
async def test_a_packed_prompt_gets_the_cores_of_a_wide_call_and_decode_steps_do_not(
    tmp_path: Path, quantize: str | None
) -> None:
    chunk_small("llama", tmp_path, quantize=quantize)
    caller_threads = torch.get_num_threads()
    engine = await StreamingEngine.open(
        str(tmp_path), memory_budget_mb=2, prefetch_count=1, compute_dtype="bfloat16"
    )
    calls: list[tuple[int, int]] = []
    begin_pass = engine.begin_pass

    def spy(prefixes: tuple[str, ...] | None, ids: torch.Tensor | None) -> None:
        begin_pass(prefixes, ids)
        assert ids is not None
        calls.append((ids.numel(), torch.get_num_threads()))

    engine.begin_pass = spy  # type: ignore[method-assign]
    try:
        assert engine.plan.mode == "streaming"
        assert bool(engine.skeleton.kept_packed) == (quantize is not None)
        prompt = list(range(1, WIDE_PASS_ROWS + 2))
        await engine.run_async("generate", [{"input_ids": prompt, "max_new_tokens": 3}])
    finally:
        engine.close()
    wide = intra_op_threads(0, caller_threads, streaming=True, rows=len(prompt))
    narrow = intra_op_threads(0, caller_threads, streaming=True, rows=1)
    # unpacked weights stream more bytes than a prompt computes: the batch's count stays
    assert calls[0] == (len(prompt), wide if quantize else narrow)
    assert calls[1:] == [(1, narrow), (1, narrow)]
