"""Results are size-capped, float arrays stored as float32, forward can
ask for the last position only."""

from __future__ import annotations

from array import array
from pathlib import Path
from typing import Any

import msgpack
import pytest

from producer import Producer
from sw_core.exceptions import ResultTooLargeError
from sw_core.pipeline.jobs import Job
from sw_core.pipeline.results import pack_result, unpack_result
from sw_core.settings import Settings
from tests.support.models import ChunkedModel
from tests.support.observe import KEYS, dead_letters
from tests.support.pipeline import consumers
from tests.support.processes import start_worker, worker_env
from tests.support.settings import fast_settings


def _f32(values: list[float]) -> list[float]:
    return array("f", values).tolist()


def test_float_arrays_round_trip_as_float32_and_take_half_the_bytes() -> None:
    vector = _f32([i / 7 for i in range(384)])
    matrix = [_f32([i * j / 3 for j in range(16)]) for i in range(5)]
    result = [{"text": "hi", "token_ids": [1, 2, 3], "scores": vector}, matrix, [1.5, 2], []]
    packed = pack_result(result, 1 << 20)
    assert unpack_result(packed) == result
    assert len(packed) < len(msgpack.packb(result)) * 0.6
    assert len(pack_result([vector], 1 << 20)) < 384 * 4 + 32


def test_result_over_the_cap_names_its_size() -> None:
    with pytest.raises(ResultTooLargeError, match=r"is 40,0\d\d bytes, over SW_MAX_RESULT_BYTES"):
        pack_result([_f32([0.5] * 10_000)], 4096)


class _BigFloats:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def run_batch(self, model: str, task: str, jobs: list[Job]) -> list[Any]:
        return [[[0.25] * int(job.inputs[0])] for job in jobs]


async def test_oversized_result_is_dead_lettered_and_small_one_stored_packed(
    redis_url, redis_client
) -> None:
    settings = fast_settings(redis_url, max_result_bytes=100_000)
    async with consumers(settings, [_BigFloats(settings)]), Producer(settings=settings) as p:
        small = await p.submit("m1", "embed", ["1000"])
        big = await p.submit("m1", "embed", ["50000"])
        assert await p.result(small, timeout_s=10) == [[0.25] * 1000]
        with pytest.raises(ResultTooLargeError, match=r"200,0\d\d bytes, over SW_MAX_RESULT_BYTES"):
            await p.result(big, timeout_s=10)
    stored = await redis_client.hget(KEYS.job(small), "result")
    assert len(stored) < 1000 * 4 + 32  # float32, not msgpack float64 (9 bytes each)
    [letter] = await dead_letters(redis_client)
    assert letter["error_type"] == "ResultTooLargeError" and letter["reason"] == "permanent"


async def test_forward_positions_last_through_a_real_worker(
    redis_url: str, minilm_chunked: ChunkedModel, tmp_path: Path
) -> None:
    settings = fast_settings(
        redis_url, models=f"minilm={minilm_chunked.folder}", max_result_bytes=100_000
    )
    proc = start_worker(worker_env(settings), tmp_path / "inference.log")
    ids = [[101, *range(2000, 2098), 102]] * 2  # 2 x 100 tokens
    try:
        async with Producer(settings=settings) as p:
            last = await p.submit("minilm", "forward", ids, output="hidden", positions="last")
            full = await p.submit("minilm", "forward", ids, output="hidden")
            vectors = await p.result(last, timeout_s=120)
            with pytest.raises(ResultTooLargeError, match=r"307,2\d\d bytes"):
                await p.result(full, timeout_s=60)
    finally:
        assert proc.stop() == 0, (tmp_path / "inference.log").read_text()[-3000:]
    assert len(vectors) == 2 and all(len(v) == 384 for v in vectors)
    assert all(isinstance(x, float) for x in vectors[0])
