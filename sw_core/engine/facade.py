"""The library facade: ``async with StreamingLlamaModel("s3://...") as model: ...``.

``StreamingBertModel``, ``StreamingGPTModel``, ``StreamingLlamaModel`` and
``StreamingT5Model`` are thin names over one :class:`StreamingModel`; each checks that the
chunk set is of its family. The model is loaded on ``__aenter__`` and its memory released
on ``__aexit__`` and after any failed call (``clear_cache``).

Example:
    >>> async with StreamingBertModel("chunks/minilm", memory_budget_mb=64) as model:
    ...     vectors = await model.embed_async(["a sentence", "another one"])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch

from sw_core.engine.engine import StreamingEngine
from sw_core.engine.setup import Where, make_source
from sw_core.exceptions import ModelError
from sw_core.settings import Settings

if TYPE_CHECKING:
    from sw_core.cache import ChunkCache

T = TypeVar("T")


class StreamingModel:
    """One chunked model behind the task API.

    Args:
        where: a chunk-set folder, an ``s3://BUCKET/PREFIX`` location, a storage backend
            or a :class:`~sw_core.engine.io.sources.ChunkSource`.
        cache: an optional :class:`~sw_core.cache.ChunkCache` in front of the storage.
        settings: base settings (``Settings.from_env()`` when omitted).
        **overrides: setting overrides, e.g. ``memory_budget_mb=64``, ``prefetch_count=2``,
            ``device="cuda"``, ``timeout_seconds=10``.
    """

    #: model_type values this name accepts (empty: any supported).
    model_types: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        where: Where,
        *,
        cache: ChunkCache | None = None,
        settings: Settings | None = None,
        **overrides: Any,
    ) -> None:
        base = settings if settings is not None else Settings.from_env()
        self.settings = base.replace(**{k: v for k, v in overrides.items() if v is not None})
        self._source = make_source(where, self.settings, cache)
        self.engine: StreamingEngine | None = None

    # ---------------------------------------------------------------- lifecycle
    async def load(self) -> StreamingModel:
        if self.engine is None:
            engine = StreamingEngine(self._source, self.settings)
            await engine.load()
            model_type = str(getattr(engine.skeleton.config, "model_type", ""))
            if self.model_types and model_type not in self.model_types:
                await engine.aclose()
                raise ModelError(
                    f"{type(self).__name__} runs {'/'.join(self.model_types)} models; "
                    f"{engine.name!r} is a {model_type!r} model"
                )
            self.engine = engine
        return self

    async def __aenter__(self) -> StreamingModel:
        return await self.load()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Release the model's memory and threads."""
        engine, self.engine = self.engine, None
        if engine is not None:
            await engine.aclose()

    def _engine(self) -> StreamingEngine:
        if self.engine is None:
            raise ModelError(f"{type(self).__name__} is not loaded: use 'async with' or load()")
        return self.engine

    async def _guarded(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except BaseException:
            if self.engine is not None:
                self.engine.clear_cache()
            raise

    async def _run(self, task: str, requests: list[dict[str, Any]]) -> list[Any]:
        engine = self._engine()
        results = await self._guarded(lambda: engine.run_async(task, requests, tensors=True))
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    # ---------------------------------------------------------------- tasks
    async def embed_async(
        self, texts: str | list[str], *, truncate: bool = True
    ) -> list[float] | list[list[float]]:
        """Sentence embeddings (one list per text), pooled as the model's sentence-transformers
        modules say (mean + L2 norm without them); ``truncate=False`` refuses texts longer
        than ``max_seq_length`` instead of cutting them."""
        single = isinstance(texts, str)
        batch = [texts] if single else texts
        if not isinstance(batch, list):
            raise ModelError(f"texts must be a string or a list of strings, got {type(texts)}")
        requests = [{"text": t, "truncate": truncate} for t in batch]
        results = [r.tolist() for r in await self._run("embed", requests)]
        return results[0] if single else results

    async def generate_async(
        self,
        prompts: str | list[str],
        *,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        chat: bool = True,
        stop: str | list[str] | None = None,
        repetition_penalty: float = 1.0,
    ) -> str | list[str]:
        """Generated text per prompt (chat template applied when the tokenizer has one); a
        text ends before the first of the ``stop`` sequences it reaches."""
        single = isinstance(prompts, str)
        batch = [prompts] if single else prompts
        if not isinstance(batch, list):
            raise ModelError(f"prompts must be a string or a list of strings, got {type(prompts)}")
        options: dict[str, Any] = {
            # 0 (the default) is greedy: the schema takes a temperature > 0 or none
            "temperature": temperature if temperature > 0 else None,
            "top_k": top_k,
            "top_p": top_p,
            "chat": chat,
            "repetition_penalty": repetition_penalty,
        }
        if stop is not None:
            options["stop"] = stop
        if max_new_tokens is not None:
            options["max_new_tokens"] = max_new_tokens
        if seed is not None:
            options["seed"] = seed
        results = await self._run("generate", [{"text": p, **options} for p in batch])
        texts = [str(r["text"]) for r in results]
        return texts[0] if single else texts

    async def forward_async(
        self,
        input_ids: list[int] | list[list[int]] | torch.Tensor,
        *,
        output: str | None = None,
        decoder_input_ids: list[int] | list[list[int]] | torch.Tensor | None = None,
    ) -> list[torch.Tensor] | torch.Tensor:
        """Last hidden states or logits for token ids: one (T, D) tensor per sequence.

        ``input_ids`` may be one sequence (a tensor of shape (T,) or a list of ints) or
        several (a (B, T) tensor or a list of lists; a (B, T) tensor runs whole, without
        padding of its own).
        """
        rows, single = _rows(input_ids, "input_ids")
        requests: list[dict[str, Any]] = [{"input_ids": r} for r in rows]
        if output is not None:
            for req in requests:
                req["output"] = output
        if decoder_input_ids is not None:
            dec_rows, _ = _rows(decoder_input_ids, "decoder_input_ids")
            if len(dec_rows) != len(rows):
                raise ModelError("decoder_input_ids must have one row per input_ids row")
            for req, dec in zip(requests, dec_rows, strict=True):
                req["decoder_input_ids"] = dec
        results = await self._run("forward", requests)
        return results[0] if single else results

    async def run_async(self, task: str, requests: list[dict[str, Any]]) -> list[Any]:
        """The engine's batch API (per-request results or errors, msgpack-friendly)."""
        engine = self._engine()
        return await self._guarded(lambda: engine.run_async(task, requests))

    # ---------------------------------------------------------------- cache
    async def warmup(self, chunk_names: list[str] | None = None) -> dict[str, list[str]]:
        """Preload chunks (all by default); see :meth:`StreamingEngine.warmup`."""
        engine = self._engine()
        return await self._guarded(lambda: engine.warmup(chunk_names))

    def clear_cache(self) -> None:
        """Release every materialized chunk."""
        if self.engine is not None:
            self.engine.clear_cache()

    def get_cache_info(self) -> dict[str, Any]:
        """Hits, misses, hit rate, memory in MB, resident chunks (and the engine's timings)."""
        return self._engine().cache_info()


def _rows(value: Any, field: str) -> tuple[list[list[int]], bool]:
    if isinstance(value, torch.Tensor):
        if value.dim() == 1:
            return [value.tolist()], True
        if value.dim() == 2:
            return value.tolist(), False
        raise ModelError(f"{field} must be 1-D or 2-D, got shape {list(value.shape)}")
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        return value, False
    if isinstance(value, list):
        return [value], True
    raise ModelError(f"{field} must be a list of ints, a list of lists or a tensor")


class StreamingBertModel(StreamingModel):
    """BERT-family encoders (all-MiniLM-L6-v2...): ``embed_async``, ``forward_async``."""

    model_types = ("bert",)


class StreamingGPTModel(StreamingModel):
    """GPT-2 family decoders."""

    model_types = ("gpt2",)


class StreamingLlamaModel(StreamingModel):
    """LLaMA-family decoders (SmolLM2...)."""

    model_types = ("llama",)


class StreamingT5Model(StreamingModel):
    """T5 encoder-decoders."""

    model_types = ("t5",)
