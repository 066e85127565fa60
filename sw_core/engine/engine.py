"""The streaming engine: one chunked model, run layer by layer under a memory budget.

Threads and loops (the design in one place):

- Fetches are coroutines (:class:`~sw_core.engine.io.sources.ChunkSource`). With the async
  API (:meth:`StreamingEngine.run_async`) they run on the *caller's* event loop, where the
  source's clients live; the sync API (:meth:`StreamingEngine.run`, for a worker thread)
  runs them on a private loop thread.
- Compute is synchronous torch on one dedicated thread per engine (``sw-compute``); the
  async API awaits it, so the caller's loop stays free to run the fetches the compute
  thread waits for. One batch runs at a time; others queue.
- Deserialization (zero-copy, tens of microseconds) happens in the fetch coroutine, and the
  copy to a GPU in a worker thread, so the compute thread only binds ready tensors.

Example:
    >>> engine = await StreamingEngine.open("chunks/minilm", memory_budget_mb=64)  # doctest: +SKIP
    >>> [vector] = await engine.run_async("embed", [{"text": "hello"}])  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from sw_core.chunks.manifest import ChunkInfo, Manifest
from sw_core.context import kv_bytes_per_token
from sw_core.engine.compute import ComputeThread, intra_op_threads, use_threads
from sw_core.engine.io.sources import ChunkSource
from sw_core.engine.memory.budget import ResidencyPlan
from sw_core.engine.memory.heap import limit_heap_retention
from sw_core.engine.memory.residency import Residency
from sw_core.engine.model.dtypes import DTYPES, compute_dtype, packed_dtype
from sw_core.engine.model.runtime import Runtime
from sw_core.engine.model.skeleton import Family, Skeleton, load_config
from sw_core.engine.report import cache_report
from sw_core.engine.setup import (
    Where,
    build_memory,
    load_generation_config,
    make_source,
    pad_token_id,
    read_chunk_set,
    resolve_device,
)
from sw_core.engine.tasks.generation import eos_ids, run_generate
from sw_core.engine.tasks.intake import batches, request_intake
from sw_core.engine.tasks.passes import run_embed, run_forward
from sw_core.engine.tasks.pooling import SentencePipeline, read_pipeline
from sw_core.engine.tasks.requests import (
    GenerateRequest,
    load_tokenizer,
)
from sw_core.exceptions import JobError, ModelError
from sw_core.schema import check_task
from sw_core.settings import Settings

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from sw_core.cache import ChunkCache

T = TypeVar("T")
log = logging.getLogger(__name__)


class StreamingEngine:
    """Runs ``embed`` / ``forward`` / ``generate`` batches for one chunked model.

    Args:
        source: where chunks and files come from.
        settings: engine settings (``memory_budget_mb``, ``prefetch_count``, ``device``,
            ``timeout_seconds``, ``max_batch_size``, ``max_input_tokens``,
            ``max_new_tokens_limit``).

    Call :meth:`load` (or use :meth:`open`) before running anything.
    """

    def __init__(self, source: ChunkSource, settings: Settings | None = None) -> None:
        self.source = source
        self.settings = settings if settings is not None else Settings.from_env()
        self.device = resolve_device(self.settings.device)
        limit_heap_retention()
        #: Intra-op threads torch had when the engine was made (``OMP_NUM_THREADS``, cores).
        self._cores = torch.get_num_threads()
        self._compute = ComputeThread(
            lambda: self.residency, self._clear_locked, self._compute_threads
        )
        self._loaded = False
        #: Model calls that read chunks from the source (not all weights were in memory).
        self.sweeps = 0
        #: Whether the source reads chunks past the page cache (``SW_DIRECT_IO``).
        self.direct_io = False
        self.manifest: Manifest
        self.plan: ResidencyPlan
        self.residency: Residency
        self.runtime: Runtime
        self.skeleton: Skeleton
        self.tokenizer: Any = None
        self.generation_config: Any = None
        #: What ``embed`` runs after the model (sentence-transformers modules or defaults).
        self.sentence = SentencePipeline()

    def _compute_threads(self, rows: int = 1) -> int:
        plan = getattr(self, "plan", None)
        streaming = self.device.type == "cpu" and plan is not None and plan.mode == "streaming"
        return intra_op_threads(
            self.settings.compute_threads, self._cores, streaming=streaming, rows=rows
        )

    # ---------------------------------------------------------------- construction
    @classmethod
    async def open(
        cls,
        where: Where,
        settings: Settings | None = None,
        *,
        cache: ChunkCache | None = None,
        **overrides: Any,
    ) -> StreamingEngine:
        """Load the model at ``where`` (folder, ``s3://``, backend or source)."""
        base = settings if settings is not None else Settings.from_env()
        settings = base.replace(**{k: v for k, v in overrides.items() if v is not None})
        engine = cls(make_source(where, settings, cache), settings)
        await engine.load()
        return engine

    async def load(self) -> StreamingEngine:
        """Read the manifest and files, build the skeleton and the residency plan."""
        manifest, files = await read_chunk_set(self.source)
        if manifest.synthetic:
            log.warning(
                "model %s is %s: it computes at the real model's cost and answers nonsense",
                manifest.name,
                manifest.describe_synthetic(),
            )
        configure = getattr(self.source, "configure_reads", None)
        if configure is not None:
            self.direct_io = bool(configure(manifest.total_bytes, self.settings.direct_io))
        config = load_config(files["config.json"])
        tokenizer_files = {k: v for k, v in files.items() if k != "config.json"}
        tokenizer = await asyncio.to_thread(load_tokenizer, tokenizer_files)
        generation_config = load_generation_config(files.get("generation_config.json"), config)
        self.sentence = read_pipeline(files, tokenizer)
        await asyncio.to_thread(self._build, manifest, config, tokenizer, generation_config)
        return self

    def _build(self, manifest: Manifest, config: Any, tokenizer: Any, gen_config: Any) -> None:
        settings = self.settings
        self.manifest = manifest
        dtype = compute_dtype(settings.compute_dtype, self.device, manifest)
        #: The compute dtype (None: as stored).
        self.compute_dtype = dtype
        self.skeleton = Skeleton(
            manifest,
            config,
            self.device,
            packed_dtype(dtype),
            kernel_views=bool(getattr(self.source, "reads_prefixes", False)),
        )
        manifest = self.manifest = self.skeleton.manifest  # kernel views where read
        self.plan, self.buffers, self.residency = build_memory(
            manifest, self.skeleton, self.source, self.device, settings, dtype
        )
        self.runtime = Runtime(self.skeleton, self.residency, self.plan)
        self.tokenizer = tokenizer
        self.generation_config = gen_config
        self.pad_id = pad_token_id(tokenizer, gen_config, config)
        has_head = self.family != "encoder" and self.skeleton.structure.head is not None
        # the KV cache is in the compute dtype (None: the stored one)
        self._kv_itemsize = (dtype or DTYPES.get(manifest.dtype) or torch.float32).itemsize
        intake = request_intake(
            manifest.name,
            config,
            tokenizer,
            settings,
            eos=eos_ids(gen_config, config),
            has_head=has_head,
            seq2seq=self.family == "seq2seq",
            kv_itemsize=self._kv_itemsize,
            embed_max_tokens=self.sentence.max_seq_length,
        )
        #: The text and bytes of a token id, for ``logprobs``.
        self.token_text = intake.token_text
        #: Compiles ``json_schema`` params into llguidance matchers.
        self.grammars = intake.grammars
        self.limits = intake.limits
        self.parser = intake.parser
        self._loaded = True

    # ---------------------------------------------------------------- properties
    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def family(self) -> Family:
        return self.skeleton.family

    @property
    def model(self) -> PreTrainedModel:
        return self.skeleton.model

    @property
    def materialized_bytes(self) -> int:
        """Weight bytes materialized in this process right now (in flight included)."""
        return self.residency.materialized_bytes

    @property
    def peak_materialized_bytes(self) -> int:
        """Highest :attr:`materialized_bytes` since load or :meth:`reset_peak`."""
        return self.residency.peak_bytes

    def reset_peak(self) -> None:
        self.residency.reset_peak()

    # ---------------------------------------------------------------- running
    async def run_async(
        self, task: str, requests: list[Any], *, tensors: bool = False
    ) -> list[Any]:
        """Run a batch; fetches run on the current event loop, compute on its own thread.

        Returns one result per request, msgpack-friendly: ``embed`` -> list of floats,
        ``forward`` -> nested lists (or CPU tensors with ``tensors=True``), ``generate`` ->
        ``{"text", "token_ids", "finish_reason", "prompt_tokens"}`` (plus ``"logprobs"`` when
        asked; a request with ``n`` > 1 gets a list of its n results). A request that fails
        validation gets its :class:`~sw_core.exceptions.ModelError` in its slot instead;
        errors of the batch itself (a chunk that cannot be loaded) are raised, after the
        engine's memory is cleared.
        """
        results = await self.run_on_compute(lambda: self._run(task, requests))
        return results if tensors else _plain(results)

    def run(self, task: str, requests: list[Any], *, tensors: bool = False) -> list[Any]:
        """Synchronous :meth:`run_async` (call it from a worker thread, not an event loop);
        fetches run on the engine's private loop thread."""
        self._check_loaded()
        results = self._compute.run_sync(lambda: self._run(task, requests))
        return results if tensors else _plain(results)

    async def run_on_compute(
        self, fn: Callable[[], T], *, on_error: Callable[[], None] | None = None
    ) -> T:
        """Run ``fn`` (which calls the model) on the engine's compute thread.

        ``fn`` runs holding the engine's lock, in ``torch.inference_mode``, with the chunk
        residency begun on the current event loop (where the fetches run) and settled after.
        When ``fn`` raises, the engine's memory is cleared and ``on_error`` called before the
        error propagates. Cancelling the await cancels ``fn`` (or the fetch it waits for).
        """
        self._check_loaded()
        return await self._compute.run(fn, on_error=on_error)

    def _run(self, task: str, requests: list[Any]) -> list[Any]:
        try:
            task = check_task(task)
        except JobError as exc:
            raise ModelError(str(exc)) from None
        if not isinstance(requests, list):
            raise ModelError(f"requests must be a list, got {type(requests).__name__}")
        # generate: a request's n completions are n rows (run next to each other, so their
        # shared prompt runs once when they land in one batch)
        parse = self.parser.generate_all if task == "generate" else getattr(self.parser, task)
        results: list[Any] = [None] * len(requests)
        counts = [1] * len(requests)
        valid: list[tuple[int, Any]] = []
        for i, req in enumerate(requests):
            try:
                parsed = parse(req)
            except ModelError as exc:
                results[i] = exc
                continue
            rows = parsed if isinstance(parsed, list) else [parsed]
            counts[i] = len(rows)
            valid.extend((i, row) for row in rows)
        outputs: dict[int, list[Any]] = {}
        per_token = kv_bytes_per_token(self.skeleton.config, self._kv_itemsize)
        for part in batches(task, valid, self.settings, kv_bytes_per_token=per_token):
            computed = self._compute_batch(task, [p for _, p in part])
            for (i, _), out in zip(part, computed, strict=True):
                outputs.setdefault(i, []).append(out)
        for i, outs in outputs.items():
            results[i] = outs if counts[i] > 1 else outs[0]
        return results

    def _compute_batch(self, task: str, batch: list[Any]) -> list[Any]:
        use_threads(self._compute_threads(len(batch)))
        if task == "embed":
            return run_embed(self, batch)
        if task == "forward":
            return run_forward(self, batch)
        return self._generate(batch)

    def _generate(self, batch: list[GenerateRequest]) -> list[Any]:
        tok = self.tokenizer

        def decode(ids: list[int]) -> str:
            return str(tok.decode(ids, skip_special_tokens=True))

        eos = eos_ids(self.generation_config, self.skeleton.config)
        return run_generate(
            self,
            batch,
            eos=eos,
            decode=decode if tok is not None else None,
            token_text=self.token_text,
            grammars=self.grammars,
        )

    def begin_pass(self, prefixes: tuple[str, ...] | None, ids: torch.Tensor | None) -> None:
        """Tell the prefetcher which units the next model call runs (tasks call this); a
        call that reads chunks from outside the engine's memory counts one :attr:`sweeps`.
        With packed weights a call of many token rows (a prompt) gets the cores a wide batch
        gets: it computes far more than it streams (wider weights keep the batch's count)."""
        if ids is not None and self.skeleton.kept_packed:
            use_threads(self._compute_threads(ids.numel()))
        schedule = self.runtime.schedule(prefixes, ids)
        if schedule:
            self.sweeps += 1
        self.residency.set_schedule(schedule)

    # ---------------------------------------------------------------- cache control
    async def warmup(self, chunk_names: list[str] | None = None) -> dict[str, list[str]]:
        """Preload chunks: kept ones are materialized and stay; streamed ones are fetched
        once through the source (which fills a shared chunk cache) and not kept.

        Returns ``{"resident": [...], "fetched": [...]}``.
        """
        self._check_loaded()
        names = chunk_names if chunk_names is not None else self.runtime.chunk_names()
        chunks = [self.manifest.chunk(n) for n in names]
        kept = [c for c in chunks if self._kept(c)]
        streamed = [c for c in chunks if not self._kept(c)]
        await self.run_on_compute(lambda: self._warm(kept))
        for chunk in streamed:
            await self.source.fetch(chunk)
        return {"resident": [c.name for c in kept], "fetched": [c.name for c in streamed]}

    def _kept(self, chunk: ChunkInfo) -> bool:
        if chunk.rows is not None and chunk.tensors[0] in self.plan.merged:
            return True
        return chunk.name in self.plan.keep

    def _warm(self, chunks: list[ChunkInfo]) -> None:
        for chunk in chunks:
            if chunk.rows is not None and chunk.tensors[0] in self.plan.merged:
                self.runtime.ensure_merged(chunk.tensors[0])
            else:
                self.residency.acquire(chunk)
                self.residency.release(chunk)

    def clear_cache(self) -> None:
        """Release every materialized chunk and merged tensor (the model stays loadable).

        While a batch is running, the clear is queued to run right after it instead (so an
        event loop that calls this never blocks on a run that needs the loop's fetches).
        """
        if self._loaded:
            self._compute.clear_soon()

    def _clear_locked(self) -> None:
        """Release every materialized chunk (the caller holds the compute lock)."""
        self.runtime.drop_merged()
        self.residency.clear()
        self.buffers.clear()

    def cache_info(self) -> dict[str, Any]:
        """Hits, misses, hit rate, materialized memory, resident chunks and timings."""
        self._check_loaded()
        return cache_report(self)

    def close(self) -> None:
        """Release memory and stop the engine's threads (waits for a running batch: from an
        event loop, use :meth:`aclose`)."""
        self._compute.close(clear=self._loaded)

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop (a running batch may need it)."""
        await asyncio.to_thread(self.close)

    def _check_loaded(self) -> None:
        if not self._loaded:
            raise ModelError("the engine is not loaded yet: await engine.load() first")


def _plain(results: list[Any]) -> list[Any]:
    """Tensors as nested lists (msgpack-friendly); other results as they are."""
    return [r.tolist() if isinstance(r, torch.Tensor) else r for r in results]
