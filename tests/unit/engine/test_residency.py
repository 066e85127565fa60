"""The residency manager: byte budget, keep/drop, prefetch along a schedule, named errors."""

from __future__ import annotations

import threading

import pytest
import torch

from sw_core.chunks.manifest import ChunkInfo
from sw_core.engine.io.loop import LoopThread
from sw_core.engine.memory.residency import Residency
from sw_core.engine.memory.slots import Unverified
from sw_core.exceptions import (
    ChunkNotFoundError,
    ModelError,
    SecurityError,
    WeightServerError,
    is_transient,
)
from tests.support.fakes import KIB, FakeStore, block_chunk


def _residency(
    store: FakeStore,
    loop: LoopThread,
    *,
    budget_kib: int = 1000,
    keep: tuple[str, ...] = (),
    prefetch: int = 2,
    timeout_s: float = 5.0,
) -> tuple[Residency, list[str]]:
    events: list[str] = []
    res = Residency(
        model_name="tiny",
        budget_bytes=budget_kib * KIB,
        keep=keep,
        prefetch_count=prefetch,
        loader=store.load,
        bind=lambda c, t: events.append(f"bind {c.name}"),
        unbind=lambda c: events.append(f"unbind {c.name}"),
        timeout_s=timeout_s,
    )
    res.begin(loop.submit)
    return res, events


def test_streamed_chunks_are_dropped_at_release_and_kept_ones_stay(loop: LoopThread) -> None:
    store = FakeStore()
    res, events = _residency(store, loop, keep=("a",), prefetch=0)
    a, b = block_chunk("a"), block_chunk("b")
    assert "a.w" in res.acquire(a)
    res.acquire(b)
    assert res.materialized_bytes == 200 * KIB
    res.release(a)
    res.release(b)
    assert res.materialized_bytes == 100 * KIB
    assert res.resident_chunks() == ["a"]
    assert events == ["bind a", "bind b", "unbind b"]
    res.acquire(a)  # served from memory
    res.release(a)
    assert store.loaded == ["a", "b"]
    assert (res.stats.hits, res.stats.misses) == (1, 2)


def test_prefetch_follows_the_schedule_and_never_exceeds_the_budget(loop: LoopThread) -> None:
    store = FakeStore(delay_s=0.01)
    chunks = [block_chunk(f"c{i}") for i in range(8)]
    res, _ = _residency(store, loop, budget_kib=300, prefetch=5)
    res.set_schedule(chunks)
    for chunk in chunks:
        res.acquire(chunk)
        assert res.materialized_bytes <= 300 * KIB
        res.release(chunk)
    res.settle()
    assert store.loaded == [c.name for c in chunks]
    assert res.peak_bytes == 300 * KIB  # the running chunk plus two ahead: all the budget allows
    assert res.stats.prefetched == 8  # every chunk was started before it was asked for
    assert res.materialized_bytes == 0


def test_prefetch_depth_is_respected(loop: LoopThread) -> None:
    store = FakeStore(delay_s=0.05)
    chunks = [block_chunk(f"c{i}") for i in range(6)]
    res, _ = _residency(store, loop, budget_kib=10_000, prefetch=1)
    res.set_schedule(chunks)
    for chunk in chunks:
        res.acquire(chunk)
        res.release(chunk)
    res.settle()
    assert store.peak_concurrent <= 2  # the one waited for plus one ahead
    assert res.peak_bytes <= 2 * 100 * KIB


def test_acquire_beyond_the_budget_is_a_model_error(loop: LoopThread) -> None:
    res, _ = _residency(FakeStore(), loop, budget_kib=150, prefetch=0)
    res.acquire(block_chunk("a"))
    with pytest.raises(ModelError, match=r"chunk 'b' needs .*\(in use: a\)"):
        res.acquire(block_chunk("b"))


def test_unused_prefetched_chunks_are_evicted_for_a_needed_one(loop: LoopThread) -> None:
    store = FakeStore()
    res, _ = _residency(store, loop, budget_kib=300, prefetch=2)
    res.set_schedule(
        [block_chunk("x"), block_chunk("y"), block_chunk("z")]
    )  # x and y start loading
    res.acquire(block_chunk("other"))  # not in the schedule: needs room
    assert res.materialized_bytes <= 300 * KIB
    res.release(block_chunk("other"))
    res.settle()
    assert res.materialized_bytes == 0


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ChunkNotFoundError("'b.safetensors' not found"), ChunkNotFoundError),
        (SecurityError("sha256 mismatch"), SecurityError),
        (ConnectionError("connection refused"), WeightServerError),
        (ValueError("bug"), ModelError),
    ],
)
def test_load_errors_name_model_and_chunk_and_keep_their_kind(
    loop: LoopThread, error: BaseException, kind: type[BaseException]
) -> None:
    store = FakeStore()
    store.errors["b"] = error
    res, events = _residency(store, loop, prefetch=0)
    with pytest.raises(kind) as err:
        res.acquire(block_chunk("b"))
    assert "'tiny'" in str(err.value) and "'b'" in str(err.value)
    assert is_transient(err.value) == is_transient(error)
    assert res.materialized_bytes == 0 and events == []


def test_a_chunk_that_never_arrives_times_out_naming_it(loop: LoopThread) -> None:
    store = FakeStore()
    store.gates["slow"] = threading.Event()
    res, _ = _residency(store, loop, prefetch=0, timeout_s=0.3)
    with pytest.raises(WeightServerError, match=r"timed out after 0.3 s .* chunk 'slow'"):
        res.acquire(block_chunk("slow"))
    store.gates["slow"].set()
    assert res.materialized_bytes == 0


def test_cancel_unblocks_a_waiting_acquire(loop: LoopThread) -> None:
    store = FakeStore()
    store.gates["slow"] = threading.Event()
    res, _ = _residency(store, loop, prefetch=0, timeout_s=30)
    threading.Timer(0.2, res.cancel).start()
    with pytest.raises(Exception, match="cancelled"):
        res.acquire(block_chunk("slow"))
    store.gates["slow"].set()


def test_cancel_stops_a_run_at_its_next_resident_chunk(loop: LoopThread) -> None:
    res, _ = _residency(FakeStore(), loop, keep=("a",))
    res.acquire(block_chunk("a"))
    res.release(block_chunk("a"))
    assert res.is_resident("a")
    res.cancel()
    with pytest.raises(Exception, match="cancelled"):
        res.acquire(block_chunk("a"))
    assert res.is_resident("a")  # kept: the next run finds it
    res.begin(loop.submit)  # a new run starts uncancelled
    res.acquire(block_chunk("a"))


def test_clear_drops_resident_chunks_and_reservations(loop: LoopThread) -> None:
    res, events = _residency(FakeStore(), loop, keep=("a",))
    res.acquire(block_chunk("a"))
    res.release(block_chunk("a"))
    res.reserve("merged:x", 50 * KIB, what="x")
    assert res.materialized_bytes == 150 * KIB
    res.clear()
    assert res.materialized_bytes == 0 and res.resident_chunks() == []
    assert events == ["bind a", "unbind a"]


class _UncheckedLoader:
    """Loads whose digest check is left to the residency (``passes`` says how it ends)."""

    def __init__(self, *, passes: bool, can_reload: bool = True) -> None:
        self.passes = passes
        self.checks: list[str] = []
        self.reloads: list[str] = []
        if can_reload:
            self.load_verified = self._reload

    async def __call__(self, chunk: ChunkInfo) -> Unverified:
        def check() -> bool:
            self.checks.append(threading.current_thread().name)
            return self.passes

        return Unverified({f"{chunk.name}.w": torch.zeros(4)}, check)

    def _reload(self, chunk: ChunkInfo, submit: object = None) -> dict[str, torch.Tensor]:
        self.reloads.append(chunk.name)
        return {f"{chunk.name}.w": torch.ones(4)}


def _unchecked(loader: _UncheckedLoader, loop: LoopThread) -> Residency:
    res = Residency(
        model_name="tiny",
        budget_bytes=1000 * KIB,
        keep=(),
        prefetch_count=2,
        loader=loader,  # type: ignore[arg-type]
        bind=lambda c, t: None,
        unbind=lambda c: None,
        timeout_s=5.0,
    )
    res.begin(loop.submit, [block_chunk("a"), block_chunk("b")])
    return res


def test_a_deferred_check_runs_once_on_the_acquiring_thread(loop: LoopThread) -> None:
    loader = _UncheckedLoader(passes=True)
    res = _unchecked(loader, loop)
    a = block_chunk("a")
    assert torch.equal(res.acquire(a)["a.w"], torch.zeros(4))
    assert torch.equal(res.acquire(a)["a.w"], torch.zeros(4))  # a hit: not checked again
    assert loader.checks == [threading.current_thread().name]
    assert (loader.reloads, res.stats.refetched) == ([], 0)


def test_a_chunk_that_fails_its_deferred_check_is_read_again(loop: LoopThread) -> None:
    loader = _UncheckedLoader(passes=False)
    res = _unchecked(loader, loop)
    assert torch.equal(res.acquire(block_chunk("a"))["a.w"], torch.ones(4))
    assert (loader.reloads, res.stats.refetched) == (["a"], 1)


def test_a_failed_deferred_check_without_a_verified_read_is_refused(loop: LoopThread) -> None:
    res = _unchecked(_UncheckedLoader(passes=False, can_reload=False), loop)
    with pytest.raises(SecurityError, match="chunk 'a' failed its digest check"):
        res.acquire(block_chunk("a"))
