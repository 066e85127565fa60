"""Batched generation with a KV cache: the whole batch advances one token per pass.

Decoder-only prompts are left-padded (positions counted from each row's first real token,
as transformers' ``generate`` does); T5 runs its encoder once and then decodes from the
decoder start token. Every step is one pass over the blocks for the whole batch, so each
block is materialized once per step however many requests share it. Each row stops on its
own: at an end-of-sequence token (finish reason ``eos``), once its text contains one of
its ``stop`` sequences (``stop``, see :mod:`sw_core.engine.tasks.stopping`) or at its
``max_new_tokens`` (``length``); finished rows are fed padding until every row is done. A
row's repetition penalty applies to its logits first (as transformers orders its
processors), then rows choose greedily (temperature 0) or sample with their own seeded
generator, so a request's output does not depend on what else is in its batch. The penalty
sees the row's own prompt without padding (for T5: the decoder start token, as transformers
penalizes the decoder's ids) and its generated tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypedDict

import torch

from sw_core.engine.tasks.passes import PassContext
from sw_core.engine.tasks.requests import GenerateRequest, pad
from sw_core.engine.tasks.sampling import choose, generator_for, penalize
from sw_core.engine.tasks.stopping import stop_in

Stepper = Callable[[torch.Tensor], torch.Tensor]


class _DecoderState(TypedDict):
    """What a decoder-only stepper carries from one step to the next."""

    mask: torch.Tensor
    positions: torch.Tensor
    first: bool


def eos_ids(generation_config: Any, config: Any) -> set[int]:
    """End-of-sequence token ids (generation config first, then the model config)."""
    for source in (generation_config, config):
        value = getattr(source, "eos_token_id", None)
        if value is None:
            continue
        return {int(v) for v in (value if isinstance(value, (list, tuple)) else [value])}
    return set()


def run_generate(
    ctx: PassContext,
    requests: list[GenerateRequest],
    *,
    eos: set[int],
    decode: Callable[[list[int]], str] | None = None,
) -> list[dict[str, Any]]:
    """Generate for every request; ``decode(ids) -> str`` turns tokens into text (required
    for requests with ``stop`` sequences; the parser refuses those without a tokenizer)."""
    batch = len(requests)
    device = ctx.device
    generators = [generator_for(r, device) for r in requests]
    limits = torch.tensor([r.max_new_tokens for r in requests], device=device)
    produced = torch.zeros(batch, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    reasons = ["length"] * batch
    cuts: list[int | None] = [None] * batch
    tokens: list[list[int]] = [[] for _ in requests]
    eos_tensor = torch.tensor(sorted(eos) or [-1], device=device)
    if ctx.family == "seq2seq":
        step, current = _seq2seq_stepper(ctx, requests)
        prefixes = [[int(current[0, 0])] for _ in requests]  # the decoder start token
    else:
        step, current = _decoder_stepper(ctx, requests)
        prefixes = [r.ids for r in requests]
    for _ in range(int(limits.max())):
        logits = step(current).float()
        penalize(logits, requests, prefixes, tokens)
        chosen = choose(logits, requests, generators)
        chosen = torch.where(finished, torch.full_like(chosen, ctx.pad_id), chosen)
        for i, (token, done) in enumerate(zip(chosen.tolist(), finished.tolist(), strict=True)):
            if not done:
                tokens[i].append(token)
        produced += (~finished).long()
        hit_eos = torch.isin(chosen, eos_tensor) & ~finished
        for i in torch.nonzero(hit_eos).flatten().tolist():
            reasons[i] = "eos"
        finished |= hit_eos
        for i in torch.nonzero(~finished).flatten().tolist():
            if requests[i].params.stop and decode is not None:
                cuts[i] = stop_in(decode, tokens[i], requests[i].params.stop)
                if cuts[i] is not None:
                    reasons[i] = "stop"
                    finished[i] = True
        finished |= produced >= limits
        if bool(finished.all()):
            break
        current = chosen.unsqueeze(-1)
    return [
        {
            "text": decode(new[:-1] if why == "eos" else new)[:cut] if decode is not None else None,
            "token_ids": new,
            "finish_reason": why,
            "prompt_tokens": len(req.ids),
        }
        for req, new, why, cut in zip(requests, tokens, reasons, cuts, strict=True)
    ]


def _seq2seq_stepper(
    ctx: PassContext, requests: list[GenerateRequest]
) -> tuple[Stepper, torch.Tensor]:
    """Encode once; each step runs the decoder on the last tokens (last-position logits)."""
    from transformers import DynamicCache, EncoderDecoderCache

    model, config, device = ctx.model, ctx.model.config, ctx.device
    ids, mask = pad([r.ids for r in requests], ctx.pad_id, left=False, device=device)
    ctx.begin_pass(("encoder",), ids)
    encoder_hidden = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    cache: Any = EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))
    start = int(getattr(config, "decoder_start_token_id", None) or 0)

    def step(current: torch.Tensor) -> torch.Tensor:
        ctx.begin_pass(("decoder", "lm_head"), current)
        out = model(
            encoder_outputs=(encoder_hidden,),
            attention_mask=mask,
            decoder_input_ids=current,
            cache=cache,
            use_cache=True,
        )
        return out.logits[:, -1, :]

    return step, torch.full((len(requests), 1), start, dtype=torch.long, device=device)


def _decoder_stepper(
    ctx: PassContext, requests: list[GenerateRequest]
) -> tuple[Stepper, torch.Tensor]:
    """Left-padded prompts first, then one token per step (positions counted per row)."""
    from transformers import DynamicCache

    model, device, batch = ctx.model, ctx.device, len(requests)
    step_ids, mask = pad([r.ids for r in requests], ctx.pad_id, left=True, device=device)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    cache = DynamicCache(config=model.config)
    state: _DecoderState = {"mask": mask, "positions": positions, "first": True}

    def step(current: torch.Tensor) -> torch.Tensor:
        if not state["first"]:
            ones = torch.ones((batch, 1), dtype=state["mask"].dtype, device=device)
            state["mask"] = torch.cat([state["mask"], ones], dim=-1)
            state["positions"] = state["positions"][:, -1:] + 1
        state["first"] = False
        ctx.begin_pass(None, current)
        out = model(
            input_ids=current,
            attention_mask=state["mask"],
            position_ids=state["positions"],
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :]

    return step, step_ids
