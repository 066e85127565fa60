"""Continuous batching: sequences join and leave a running decode batch between two steps.

A :class:`DecodeSession` holds the KV cache of every active sequence of one decoder-only
engine. Each :meth:`DecodeSession.step` is *one* model call, so one sweep over the blocks:
the running sequences feed their last token and the sequences joining now feed their whole
prompt in the same call. Inputs are left-padded to the longest new prompt; a running row's
padding sits between its cache and its token and is masked out, positions are counted per
row, so each row computes what it would compute alone. Rows that finish leave the batch at
once (the cache keeps only the others, compacted to the left): at EOS, at a stop sequence
in their text (see :mod:`sw_core.engine.tasks.stopping`) or at ``max_new_tokens``. Each row's
repetition penalty applies to its own logits first; then greedy rows choose the argmax and
sampling rows draw from their own seeded generator, so output never depends on batch mates.

Encoder-decoder models (T5) are not supported here: they run as static batches.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch

from sw_core.engine.model.skeleton import Skeleton
from sw_core.engine.tasks.generation import eos_ids
from sw_core.engine.tasks.passes import PassContext
from sw_core.engine.tasks.requests import GenerateRequest, RequestParser
from sw_core.engine.tasks.sampling import choose, generator_for, penalize
from sw_core.engine.tasks.stopping import stop_in
from sw_core.exceptions import ModelError

T = TypeVar("T")


class DecodeEngine(PassContext, Protocol):
    """What a :class:`DecodeSession` needs of its engine (a loaded
    :class:`~sw_core.engine.StreamingEngine`, which this room may not import)."""

    skeleton: Skeleton
    parser: RequestParser
    tokenizer: Any  # a transformers tokenizer, or None
    generation_config: Any  # a transformers GenerationConfig, or None

    @property
    def name(self) -> str: ...

    async def run_on_compute(
        self, fn: Callable[[], T], *, on_error: Callable[[], None] | None = None
    ) -> T: ...


@dataclass
class Sequence:
    """One generating input: its request, its tokens so far and why it stopped."""

    key: Hashable
    request: GenerateRequest
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    #: Position id of the next token fed (prompt length once the prompt ran).
    position: int = 0
    finish_reason: str | None = None
    #: Step of this session in which the sequence joined.
    joined_step: int = 0
    #: Finish reason ``stop``: where the stop sequence begins in the text of ``text_ids``
    #: (the text ends there; the tokens keep the one that completed the stop sequence).
    stop_at: int | None = None

    @property
    def text_ids(self) -> list[int]:
        """Generated tokens without a final end-of-sequence token."""
        return self.tokens[:-1] if self.finish_reason == "eos" else self.tokens


@dataclass
class StepReport:
    """What one step did: its number, one new token per active sequence, who finished."""

    step: int
    tokens: dict[Hashable, int]
    finished: list[Sequence]


class DecodeSession:
    """The continuous decode batch of one engine (decoder-only models).

    Args:
        engine: a loaded :class:`~sw_core.engine.StreamingEngine`.
        kv_cache_bytes: most KV-cache bytes the batch may hold (estimated ahead, from each
            sequence's prompt plus ``max_new_tokens``).
    """

    def __init__(self, engine: DecodeEngine, kv_cache_bytes: int) -> None:
        if engine.family == "seq2seq":
            raise ModelError(
                f"model {engine.name!r}: continuous batching needs a decoder-only model"
            )
        self.engine = engine
        self.kv_cache_bytes = kv_cache_bytes
        config = engine.skeleton.config
        self.eos = eos_ids(engine.generation_config, config)
        self.token_bytes = _kv_bytes_per_token(config, engine.skeleton.model)
        tokenizer = engine.tokenizer
        #: The text of a sequence's tokens, as its result has it ("" without a tokenizer).
        self.decode: Callable[[list[int]], str] = (
            (lambda ids: str(tokenizer.decode(ids, skip_special_tokens=True)))
            if tokenizer is not None
            else (lambda ids: "")
        )
        self.rows: list[Sequence] = []
        self.steps = 0
        self._cache: Any = None  # a transformers DynamicCache: see _grow
        self._mask: torch.Tensor | None = None

    # ---------------------------------------------------------------- admission
    def parse(self, key: Hashable, request: dict[str, Any]) -> Sequence:
        """Validate one generate request (``ModelError`` when it is bad or too long)."""
        req: GenerateRequest = self.engine.parser.generate(request)
        seq = Sequence(key, req, generator_for(req, self.engine.device))
        if self._need_bytes([seq]) > self.kv_cache_bytes:
            raise ModelError(
                f"a prompt of {len(req.ids)} tokens with max_new_tokens={req.max_new_tokens} "
                f"needs more KV cache than SW_MAX_KV_CACHE_MB allows "
                f"({self.kv_cache_bytes >> 20} MiB); ask for fewer tokens"
            )
        return seq

    def fits(self, joining: list[Sequence]) -> bool:
        """Whether the active rows plus ``joining`` stay within the KV-cache budget."""
        return self._need_bytes([*self.rows, *joining]) <= self.kv_cache_bytes

    def _need_bytes(self, rows: list[Sequence]) -> int:
        if not rows:
            return 0
        longest = max(len(s.request.ids) + s.request.max_new_tokens for s in rows)
        # a join step briefly holds the old width plus the new prompts' width
        widest_prompt = max(len(s.request.ids) for s in rows)
        return len(rows) * (longest + widest_prompt) * self.token_bytes

    @property
    def active(self) -> int:
        return len(self.rows)

    def drop(self, keys: set[Hashable]) -> None:
        """Remove sequences (cancelled, expired) before the next step."""
        keep = [i for i, s in enumerate(self.rows) if s.key not in keys]
        if len(keep) != len(self.rows):
            self._select(keep)

    def reset(self) -> None:
        """Forget every sequence and the cache (after a failed step)."""
        self.rows = []
        self._cache = None
        self._mask = None

    # ---------------------------------------------------------------- stepping
    async def step_async(self, joining: list[Sequence]) -> StepReport:
        """:meth:`step` on the engine's compute thread; fetches run on this event loop.
        A failed step forgets every sequence (:meth:`reset`)."""
        return await self.engine.run_on_compute(lambda: self.step(joining), on_error=self.reset)

    def step(self, joining: list[Sequence]) -> StepReport:
        """One model call: running rows decode a token, ``joining`` rows run their prompt."""
        engine = self.engine
        device = engine.device
        self.steps += 1
        for seq in joining:
            seq.joined_step = self.steps
        old = len(self.rows)
        rows = [*self.rows, *joining]
        width = max([len(s.request.ids) for s in joining] or [1])
        ids = torch.full((len(rows), width), engine.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for i, seq in enumerate(rows):
            feed = [seq.tokens[-1]] if i < old else seq.request.ids
            n = len(feed)
            ids[i, width - n :] = torch.tensor(feed)
            mask[i, width - n :] = 1
            positions[i, width - n :] = torch.arange(seq.position, seq.position + n)
        ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
        cache, past_mask = self._grow(len(joining), device)
        full_mask = torch.cat([past_mask, mask], dim=-1)
        engine.begin_pass(None, ids)
        out = engine.model(
            input_ids=ids,
            attention_mask=full_mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        requests = [s.request for s in rows]
        logits = out.logits[:, -1, :].float()
        penalize(logits, requests, [r.ids for r in requests], [s.tokens for s in rows])
        chosen = choose(logits, requests, [s.generator for s in rows]).tolist()
        self.rows, self._cache, self._mask = rows, cache, full_mask
        tokens: dict[Hashable, int] = {}
        finished: list[Sequence] = []
        for i, (seq, token) in enumerate(zip(rows, chosen, strict=True)):
            seq.position = seq.position + 1 if i < old else len(seq.request.ids)
            seq.tokens.append(int(token))
            tokens[seq.key] = int(token)
            self._finish(seq)
            if seq.finish_reason is not None:
                finished.append(seq)
        keep = [i for i, s in enumerate(rows) if s.finish_reason is None]
        if len(keep) != len(rows) or (joining and width > 1):
            self._select(keep)
        return StepReport(self.steps, tokens, finished)

    def _finish(self, seq: Sequence) -> None:
        """Set why ``seq`` ends after its new token, if it does: EOS, a stop sequence in its
        text, or ``max_new_tokens``."""
        if seq.tokens[-1] in self.eos:
            seq.finish_reason = "eos"
            return
        seq.stop_at = stop_in(self.decode, seq.tokens, seq.request.params.stop)
        if seq.stop_at is not None:
            seq.finish_reason = "stop"
        elif len(seq.tokens) >= seq.request.max_new_tokens:
            seq.finish_reason = "length"

    def text(self, seq: Sequence) -> str:
        """The result text of a sequence: its tokens' text, cut before a stop sequence."""
        return self.decode(seq.text_ids)[: seq.stop_at]

    # ---------------------------------------------------------------- cache surgery
    def _grow(self, joining: int, device: torch.device) -> tuple[Any, torch.Tensor]:
        """The cache with ``joining`` empty rows added, and its padding mask. (transformers types
        a cache's layers as a union that includes layers without keys: Any here.)"""
        from transformers import DynamicCache

        if self._cache is None or self._mask is None or not self.rows:
            cache = DynamicCache(config=self.engine.skeleton.config)
            return cache, torch.zeros((joining, 0), dtype=torch.long, device=device)
        if joining:
            for layer in self._cache.layers:
                if getattr(layer, "is_initialized", False):
                    layer.keys = _pad_rows(layer.keys, joining)
                    layer.values = _pad_rows(layer.values, joining)
            self._mask = _pad_rows(self._mask, joining)
        return self._cache, self._mask

    def _select(self, keep: list[int]) -> None:
        """Keep the rows ``keep`` and left-compact the cache to their real tokens."""
        self.rows = [self.rows[i] for i in keep]
        if not keep or self._cache is None or self._mask is None:
            self.reset()
            return
        mask = self._mask[keep]
        counts = mask.sum(-1)
        width = int(counts.max())
        # per row, where its real columns land: right-aligned, in their order
        src = [torch.nonzero(row).flatten() for row in mask]
        for layer in self._cache.layers:
            if not getattr(layer, "is_initialized", False):
                continue
            layer.keys = _compact(layer.keys[keep], src, width)
            layer.values = _compact(layer.values[keep], src, width)
        new_mask = torch.zeros((len(keep), width), dtype=mask.dtype, device=mask.device)
        for i, n in enumerate(counts.tolist()):
            new_mask[i, width - n :] = 1
        self._mask = new_mask


def _pad_rows(tensor: torch.Tensor, extra: int) -> torch.Tensor:
    shape = (extra, *tensor.shape[1:])
    return torch.cat([tensor, tensor.new_zeros(shape)], dim=0)


def _compact(kv: torch.Tensor, src: list[torch.Tensor], width: int) -> torch.Tensor:
    out = kv.new_zeros((kv.shape[0], kv.shape[1], width, kv.shape[3]))
    for i, cols in enumerate(src):
        out[i, :, width - len(cols) :] = kv[i, :, cols]
    return out


def _kv_bytes_per_token(config: Any, model: torch.nn.Module) -> int:
    """Bytes one token adds to the KV cache of every layer (keys and values)."""
    layers = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 1))
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 1))
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 1))
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    itemsize = next((p.dtype.itemsize for p in model.parameters()), 4)
    return 2 * layers * kv_heads * head_dim * itemsize
