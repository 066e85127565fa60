"""The inference handler: runs batches of jobs through the streaming engine.

``build_handler`` is the default ``SW_HANDLER``. It keeps one
:class:`~sw_core.engine.StreamingEngine` per model, each reading its chunks through the
shared Redis chunk cache with the chunk loaders behind it (:class:`RemoteChunkSource`).
Every input of every job in a batch runs in one engine pass, so each block is loaded once
for the whole batch. The engine computes on its own thread; this event loop keeps serving
heartbeats, claims and chunk loads meanwhile.

``memory_budget_mb`` is per worker: when several models are in use, the least recently used
engines release their materialized weights until the total fits again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any

from sw_core.cache import ChunkCache
from sw_core.counters import SWEEPS, Counters, sweep_counter
from sw_core.engine import StreamingEngine
from sw_core.engine.tasks.continuous import DecodeSession
from sw_core.engine.tasks.requests import request_of
from sw_core.keys import Keys
from sw_core.pipeline.jobs import Job
from sw_core.pipeline.registry import ModelRegistry
from sw_core.queue_redis import queue_redis
from sw_core.schema import Task
from sw_core.settings import Settings
from sw_core.utils import is_finite_number
from workers.chunks.chunk_source import RemoteChunkSource

log = logging.getLogger(__name__)


def generation_defaults(generation_config: Any, max_new_tokens_limit: int) -> dict[str, Any]:
    """Generate params from the model's ``generation_config.json`` (what a job leaves out):
    its sampling settings when it samples by default, its ``repetition_penalty`` (which
    transformers' ``generate`` applies, greedy or not), and its ``max_new_tokens``."""
    if generation_config is None:
        return {}
    out: dict[str, Any] = {}
    if getattr(generation_config, "do_sample", False):
        out["do_sample"] = True
        for name in ("temperature", "top_p", "top_k"):
            value = getattr(generation_config, name, None)
            if value is not None:
                out[name] = value
    penalty = getattr(generation_config, "repetition_penalty", None)
    if is_finite_number(penalty) and penalty > 0 and penalty != 1.0:
        out["repetition_penalty"] = float(penalty)
    max_new = getattr(generation_config, "max_new_tokens", None)
    if isinstance(max_new, int) and max_new > 0:
        out["max_new_tokens"] = min(max_new, max_new_tokens_limit)
    return out


def job_requests(
    task: Task, job: Job, defaults: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The engine requests of one job: one per input, with the job's params (``defaults``
    fill the params the job leaves out)."""
    params = {**(defaults or {}), **job.params}
    return [request_of(task, item, params) for item in job.inputs]


class InferenceHandler:
    """A :class:`~workers.jobs.handlers.BatchHandler` backed by one engine per model."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.counters = Counters()
        #: Per-model sweep counters (``Keys.stats_sweeps``): sweeps, reads, hits, bytes.
        self.sweep_counters = Counters()
        self.cache = ChunkCache.from_settings(settings, counters=self.counters)
        self._redis = queue_redis(settings)
        keys = Keys(settings.key_prefix)
        self._stats_key, self._sweeps_key = keys.stats, keys.stats_sweeps
        self._sweeps_seen: dict[str, int] = {}
        self.registry = ModelRegistry(self._redis, settings)
        self._engines: OrderedDict[str, StreamingEngine] = OrderedDict()
        self._sources: dict[str, RemoteChunkSource] = {}
        self._opening: dict[str, asyncio.Lock] = {}
        self._sessions: dict[str, DecodeSession] = {}

    async def engine(self, model: str) -> StreamingEngine:
        """The loaded engine of ``model`` (opened on first use)."""
        if model in self._engines:
            self._engines.move_to_end(model)
            return self._engines[model]
        lock = self._opening.setdefault(model, asyncio.Lock())
        async with lock:
            if model not in self._engines:
                await self.registry.resolve(model)  # ModelError for an unknown model
                source = RemoteChunkSource(
                    model,
                    self.settings,
                    cache=self.cache,
                    counters=self.counters,
                    sweep_counters=self.sweep_counters,
                )
                engine = StreamingEngine(source, self.settings)
                try:
                    await engine.load()
                except BaseException:
                    await source.close()
                    await engine.aclose()
                    raise
                self._sources[model] = source
                self._engines[model] = engine
                log.info("model %s ready: %s", model, engine.plan.mode)
            return self._engines[model]

    async def preload(self, models: list[str]) -> None:
        """Open each model and fetch its chunks once (SW_PRELOAD_MODELS), so the first job
        is warm; a model that fails is logged and skipped (its jobs fail as usual)."""
        for model in models:
            started_s = asyncio.get_running_loop().time()
            try:
                engine = await self.engine(model)
                await engine.warmup()
            except Exception as exc:
                log.warning("preloading model %s failed: %s: %s", model, type(exc).__name__, exc)
                continue
            took_s = asyncio.get_running_loop().time() - started_s
            log.info("model %s preloaded in %.1f s", model, took_s)

    async def run_batch(self, model: str, task: Task, jobs: list[Job]) -> list[Any | BaseException]:
        """One result per job: the list of the engine's outputs for the job's inputs (a
        generate job's: each input's ``n`` completions, input-major)."""
        engine = await self.engine(model)
        defaults = self._defaults(engine) if task == "generate" else {}
        requests: list[dict[str, Any]] = []
        spans: list[tuple[int, int]] = []
        for job in jobs:
            mine = job_requests(task, job, defaults)
            spans.append((len(requests), len(requests) + len(mine)))
            requests.extend(mine)
        try:
            outputs = await engine.run_async(task, requests)
        finally:
            await self._flush(model)
        self._fit_budget(model)
        results: list[Any | BaseException] = []
        for start, end in spans:
            mine = outputs[start:end]
            errors = [o for o in mine if isinstance(o, BaseException)]
            if task == "generate":  # an input's n completions, input-major
                mine = [out for o in mine for out in (o if isinstance(o, list) else [o])]
            results.append(errors[0] if errors else mine)
        return results

    async def decode_session(self, model: str) -> DecodeSession | None:
        """The continuous decode batch of ``model`` (None for encoder-decoder models, which
        run as static batches); see :mod:`workers.jobs.decode_loop`."""
        if model not in self._sessions:
            engine = await self.engine(model)
            if engine.family == "seq2seq":
                return None
            self._sessions[model] = DecodeSession(engine, self.settings.kv_cache_bytes)
        return self._sessions[model]

    async def sequence_requests(self, model: str, job: Job) -> list[dict[str, Any]]:
        """The engine requests of a generate job joining ``model``'s decode batch (the
        model's generation config fills the params the job leaves out)."""
        return job_requests("generate", job, self._defaults(await self.engine(model)))

    def _defaults(self, engine: StreamingEngine) -> dict[str, Any]:
        limit = self.settings.max_new_tokens_limit
        return generation_defaults(engine.generation_config, limit)

    async def after_step(self, model: str) -> None:
        """After each decode step: flush the counters, keep the worker within its budget."""
        await self._flush(model)
        self._fit_budget(model)

    def resident_chunks(self) -> dict[str, list[str]]:
        """Names of the chunks each open model holds in memory now."""
        return {name: e.residency.resident_chunks() for name, e in self._engines.items()}

    async def _flush(self, model: str) -> None:
        """Count the engine's new sweeps of ``model`` and flush every counter."""
        engine = self._engines.get(model)
        if engine is not None:
            new = engine.sweeps - self._sweeps_seen.get(model, 0)
            self._sweeps_seen[model] = engine.sweeps
            self.sweep_counters.incr(sweep_counter(SWEEPS, model), new)
        await self.counters.flush(self._redis, self._stats_key)
        await self.sweep_counters.flush(self._redis, self._sweeps_key)

    def _fit_budget(self, active: str) -> None:
        """Release the least recently used other engines while the worker is over budget."""
        budget = self.settings.memory_budget_bytes
        for name, engine in list(self._engines.items()):
            total = sum(e.materialized_bytes for e in self._engines.values())
            if total <= budget:
                return
            if name != active:
                engine.clear_cache()

    async def close(self) -> None:
        """Stop every engine and close the clients."""
        for engine in self._engines.values():
            await engine.aclose()
        for source in self._sources.values():
            await source.close()
        self._engines.clear()
        self.cache.close()
        await self._redis.aclose()


def build_handler(settings: Settings) -> InferenceHandler:
    """Factory named by the default ``SW_HANDLER`` (``workers.jobs.inference:build_handler``)."""
    return InferenceHandler(settings)
