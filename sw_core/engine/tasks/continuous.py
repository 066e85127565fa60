"""Continuous batching: sequences join and leave a running decode batch between two steps.

A :class:`DecodeSession` holds the KV cache of every active sequence of one decoder-only
engine. Each :meth:`DecodeSession.step` is *one* model call, so one sweep over the blocks:
the running sequences feed their last token and the sequences joining now feed their whole
prompt in the same call. Inputs are left-padded to the longest new prompt; a running row's
padding sits between its cache and its token and is masked out, positions are counted per
row, so each row computes what it would compute alone. Rows that finish leave the batch at
once (the cache keeps only the others, compacted to the left): at EOS, at a stop sequence
in their text (see :mod:`sw_core.engine.tasks.stopping`) or at ``max_new_tokens``. Each row's
penalties apply to its own logits first, then its ``json_schema`` mask; then greedy rows
choose the argmax and sampling rows draw from their own seeded generator, so output never
depends on batch mates. A request's ``n`` completions join as ``n`` rows whose shared prompt
runs once (:meth:`DecodeSession.parse_all`).

Encoder-decoder models (T5) are not supported here: they run as static batches.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch

from sw_core.context import kv_bytes_per_token
from sw_core.engine.model.skeleton import Skeleton
from sw_core.engine.tasks.generation import eos_ids, shared_prompts, take_cache_rows
from sw_core.engine.tasks.grammar import Grammars, advance, constrain
from sw_core.engine.tasks.logprobs import StepLogprobs, TokenLogprob, TokenText
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
    token_text: TokenText
    grammars: Grammars

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
    #: With ``logprobs``: one entry per token of ``tokens``.
    logprobs: list[TokenLogprob] = field(default_factory=list)
    #: With ``json_schema``: the llguidance matcher of this sequence's output.
    matcher: Any = None

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
        itemsize = next((p.dtype.itemsize for p in engine.skeleton.model.parameters()), 4)
        self.token_bytes = kv_bytes_per_token(config, itemsize)
        tokenizer = engine.tokenizer
        #: The text of a sequence's tokens, as its result has it ("" without a tokenizer).
        self.decode: Callable[[list[int]], str] = (
            (lambda ids: str(tokenizer.decode(ids, skip_special_tokens=True)))
            if tokenizer is not None
            else (lambda ids: "")
        )
        self.token_text: TokenText = engine.token_text
        self.rows: list[Sequence] = []
        self.steps = 0
        self._cache: Any = None  # a transformers DynamicCache: see _grow
        self._mask: torch.Tensor | None = None

    # ---------------------------------------------------------------- admission
    def parse(self, key: Any, request: dict[str, Any]) -> Sequence:
        """Validate one generate request of one completion (``n`` = 1) as a sequence keyed
        ``key`` (``ModelError`` when it is bad or needs more KV cache than the budget)."""
        seqs = self.parse_all(request, lambda j: key)
        if len(seqs) != 1:
            raise ModelError("a request with n > 1 makes several sequences: use parse_all")
        return seqs[0]

    def parse_all(self, request: dict[str, Any], key_of: Callable[[int], Any]) -> list[Sequence]:
        """Validate one generate request: its ``n`` sequences, completion ``j`` keyed
        ``key_of(j)`` (``ModelError`` when it is bad or needs more KV cache than the budget)."""
        reqs: list[GenerateRequest] = self.engine.parser.generate_all(request)
        seqs = [
            Sequence(
                key_of(j),
                req,
                generator_for(req, self.engine.device),
                matcher=self.engine.grammars.matcher(req),
            )
            for j, req in enumerate(reqs)
        ]
        need = self._need_bytes(seqs, seqs, width=0)
        if need > self.kv_cache_bytes:
            first = reqs[0]
            many = f"{len(reqs)} completions of " if len(reqs) > 1 else ""
            raise ModelError(
                f"{many}a prompt of {len(first.ids)} tokens with max_new_tokens="
                f"{first.max_new_tokens} need {_mib(need)} of KV cache; this worker's "
                f"SW_MAX_KV_CACHE_MB allows {_mib(self.kv_cache_bytes)} "
                f"({self.kv_cache_bytes // max(self.token_bytes, 1)} tokens in all); "
                "shorten the prompt or ask for fewer tokens"
            )
        return seqs

    def fits(self, joining: list[Sequence]) -> bool:
        """Whether the active rows plus ``joining`` stay within the KV-cache budget."""
        width = int(self._mask.shape[-1]) if self._mask is not None and self.rows else 0
        need = self._need_bytes([*self.rows, *joining], joining, width)
        return need <= self.kv_cache_bytes

    def _need_bytes(self, rows: list[Sequence], joining: list[Sequence], width: int) -> int:
        """KV-cache bytes of ``rows`` at their longest: every row is as wide as the longest
        one (prompt plus max_new_tokens), and a join step briefly holds the cache's current
        ``width`` plus the widest joining prompt."""
        if not rows:
            return 0
        longest = max(len(s.request.ids) + s.request.max_new_tokens for s in rows)
        joined = width + max((len(s.request.ids) for s in joining), default=0)
        return len(rows) * max(longest, joined) * self.token_bytes

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
        # joining rows with the same prompt (n completions) run it once, then are repeated
        first, expand = shared_prompts([s.request.ids for s in joining])
        fed = [*self.rows, *(joining[j] for j in first)]
        width = max([len(s.request.ids) for s in joining] or [1])
        ids = torch.full((len(fed), width), engine.pad_id, dtype=torch.long)
        mask = torch.zeros((len(fed), width), dtype=torch.long)
        positions = torch.zeros((len(fed), width), dtype=torch.long)
        for i, seq in enumerate(fed):
            feed = [seq.tokens[-1]] if i < old else seq.request.ids
            n = len(feed)
            ids[i, width - n :] = torch.tensor(feed)
            mask[i, width - n :] = 1
            positions[i, width - n :] = torch.arange(seq.position, seq.position + n)
        ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
        cache, past_mask = self._grow(len(first), device)
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
        logits = out.logits[:, -1, :].float()
        if len(fed) < len(rows):
            index = torch.tensor([*range(old), *(old + e for e in expand)], device=device)
            take_cache_rows(cache, index)
            full_mask, logits = full_mask[index], logits[index]
        requests = [s.request for s in rows]
        raw = StepLogprobs(logits, requests)  # the model's own distribution, unpenalized
        penalize(logits, requests, [r.ids for r in requests], [s.tokens for s in rows])
        matchers = [s.matcher for s in rows]
        constrain(logits, matchers)
        chosen = choose(logits, requests, [s.generator for s in rows]).tolist()
        advance(matchers, chosen)
        for i, record in raw.take(chosen).items():
            rows[i].logprobs.append(record)
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

    def logprob_entries(self, seq: Sequence, start: int = 0, end: int | None = None) -> list:
        """OpenAI-shaped ``logprobs`` entries of ``seq``'s tokens ``start:end`` (never past its
        :attr:`Sequence.text_ids`: a final EOS token has none)."""
        stop = len(seq.text_ids) if end is None else min(end, len(seq.text_ids))
        return self.token_text.entries(seq.logprobs[start:stop])

    def result(self, seq: Sequence) -> dict[str, Any]:
        """The result of a finished sequence (what a static batch returns for it)."""
        out: dict[str, Any] = {
            "text": self.text(seq),
            "token_ids": seq.tokens,
            "finish_reason": seq.finish_reason,
            "prompt_tokens": len(seq.request.ids),
        }
        if seq.request.params.logprobs:
            out["logprobs"] = self.logprob_entries(seq)
        return out

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


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / (1 << 20):.1f} MiB"
